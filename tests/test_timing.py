"""Pure timing maths: token bucket bound, netem jitter draws, order, phases."""

from __future__ import annotations

import math
import random
from statistics import NormalDist
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simstream.profile import NetworkConditions, NetworkOverride, Timeline
from simstream.timing import (
    JitterModel,
    TokenBucket,
    effective_network,
    message_times,
    netem_standard_value,
    pareto_cdf,
    pareto_mean,
    paretonormal_quantile,
    phase_at,
    phase_windows,
    preserve_order,
)

# --------------------------------------------------------------------------
# token bucket


@st.composite
def bucket_runs(draw: st.DrawFn) -> tuple[float, float, list[tuple[float, float]]]:
    rate = draw(st.floats(1e3, 1e9))
    burst = draw(st.floats(1.0, 1e7))
    reqs = draw(st.lists(
        st.tuples(st.floats(0, 2.0), st.floats(0.0, 1.0).map(lambda f, b=burst: f * b)),
        min_size=1, max_size=40))
    return rate, burst, reqs


@given(bucket_runs())
def test_bytes_released_in_any_window_never_exceed_rate_times_window_plus_burst(
        run: tuple[float, float, list[tuple[float, float]]]) -> None:
    rate, burst, reqs = run
    bucket = TokenBucket(rate, burst)
    now = 0.0
    released: list[tuple[float, float]] = []
    for gap, n in reqs:
        now += gap
        t = bucket.reserve(now, n)
        assert t >= now
        released.append((t, n))
    times = [t for t, _ in released]
    assert times == sorted(times)
    # the worst window starts and ends at release instants
    for i in range(len(released)):
        total = 0.0
        for j in range(i, len(released)):
            total += released[j][1]
            window = released[j][0] - released[i][0]
            assert total <= rate * window + burst + 1e-6 * (total + burst)


@given(bucket_runs())
def test_next_release_is_pure(run: tuple[float, float, list[tuple[float, float]]]) -> None:
    rate, burst, reqs = run
    bucket = TokenBucket(rate, burst)
    now = 0.0
    for gap, n in reqs:
        now += gap
        a = bucket.next_release(now, n)
        b = bucket.next_release(now, n)
        assert a == b
        assert bucket.reserve(now, n) == a


def test_long_run_rate_and_a_request_larger_than_the_burst() -> None:
    bucket = TokenBucket(1e6, 4096)
    t = 0.0
    for _ in range(1000):
        t = bucket.reserve(0.0, 4096)
    # the first burst is free, every later byte costs 1 microsecond
    assert t == pytest.approx(999 * 4096 / 1e6)
    with pytest.raises(ValueError, match="exceed the bucket's burst"):
        bucket.next_release(0.0, 4097)
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def test_set_rate_keeps_earned_tokens_and_changes_the_pace() -> None:
    bucket = TokenBucket(1000.0, 100.0)
    assert bucket.reserve(0.0, 100) == 0.0
    bucket.set_rate(0.0, 10.0)
    assert bucket.next_release(0.0, 100) == pytest.approx(10.0)
    # a bigger burst: the idle time before the change fills it at the old rate
    bucket.set_rate(50.0, 1000.0, burst_bytes=400.0)
    assert bucket.tokens_at(50.0) == pytest.approx(400.0)
    # a smaller one clips what is there
    bucket.set_rate(50.0, 1000.0, burst_bytes=50.0)
    assert bucket.tokens_at(60.0) == 50.0
    with pytest.raises(ValueError):
        bucket.set_rate(60.0, 1000.0, burst_bytes=0)


# --------------------------------------------------------------------------
# jitter: goodness of fit against the analytic distributions (fixed seeds)

N_DRAWS = 20_000
KS_95 = 1.358 / math.sqrt(N_DRAWS)  # Kolmogorov-Smirnov critical value, alpha = 0.05


def ks_statistic(sample: list[float], cdf: Any, cdf_left: Any = None) -> float:
    """sup |F_n - F|, with F's left limits where it has atoms (netem's table cap)."""
    xs = sorted(sample)
    n = len(xs)
    d = 0.0
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        x = xs[i]
        f_left = (cdf_left or cdf)(x)
        d = max(d, abs(j / n - cdf(x)), abs(i / n - f_left))
        i = j
    return d


def draws_ms(model: JitterModel, seed: int = 1234) -> list[float]:
    rng = random.Random(seed)
    return [model.draw_s(rng) * 1000 for _ in range(N_DRAWS)]


def test_uniform_jitter_is_uniform_on_latency_plus_minus_jitter() -> None:
    xs = draws_ms(JitterModel(20.0, 5.0, "uniform"))
    assert min(xs) >= 15.0 and max(xs) < 25.0
    assert ks_statistic(xs, lambda x: min(1.0, max(0.0, (x - 15.0) / 10.0))) < KS_95


def test_normal_jitter_is_normal_with_mean_latency_and_sd_jitter() -> None:
    xs = draws_ms(JitterModel(50.0, 10.0, "normal"))
    assert ks_statistic(xs, NormalDist(50.0, 10.0).cdf) < KS_95
    # and it is not merely "some" distribution: a shifted normal is rejected
    assert ks_statistic(xs, NormalDist(52.0, 10.0).cdf) > KS_95


def quantile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def test_pareto_jitter_matches_netem_pareto_quantiles_and_mean() -> None:
    mu, sigma = 100.0, 10.0
    xs = draws_ms(JitterModel(mu, sigma, "pareto"))
    zs = [(x - mu) / sigma for x in xs]
    assert min(zs) >= -2 / 3 - 1e-9  # netem's table starts at (1 - 1.5) * 4/3
    assert max(zs) <= 32767 / 8192
    cap = 32767 / 8192
    assert ks_statistic(zs, pareto_cdf, lambda z: pareto_cdf(min(z, cap - 1e-12))) < KS_95
    for p in (0.1, 0.5, 0.9, 0.98):  # above ~0.989 netem caps at ~4
        z_p = netem_standard_value("pareto", p)
        assert pareto_cdf(z_p) == pytest.approx(p, abs=1e-9)
        assert quantile(zs, p) == pytest.approx(z_p, abs=0.03 + 0.1 * (p > 0.95))
    assert sum(zs) / len(zs) == pytest.approx(pareto_mean(), abs=0.02)
    assert -0.05 < pareto_mean() < 0  # centred, a little below 0 because of the cap


def test_paretonormal_jitter_matches_its_quantile_function() -> None:
    mu, sigma = 100.0, 10.0
    xs = draws_ms(JitterModel(mu, sigma, "paretonormal"))
    zs = [(x - mu) / sigma for x in xs]
    for p in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert quantile(zs, p) == pytest.approx(paretonormal_quantile(p), abs=0.03)
    # a quarter normal, three quarters pareto: its median lies between theirs
    assert netem_standard_value("pareto", 0.5) < paretonormal_quantile(0.5) < 0.0


@given(st.floats(0.0, 1.0, exclude_max=True), st.floats(0.0, 1.0, exclude_max=True))
def test_table_distributions_are_monotone_quantile_functions(p: float, q: float) -> None:
    lo, hi = min(p, q), max(p, q)
    for dist in ("uniform", "normal", "pareto", "paretonormal"):
        assert netem_standard_value(dist, lo) <= netem_standard_value(dist, hi)


@given(st.floats(0, 500), st.floats(0, 500),
       st.sampled_from(["uniform", "normal", "pareto", "paretonormal"]), st.integers(0, 2**32))
def test_delay_is_never_negative(latency: float, jitter: float, dist: str, seed: int) -> None:
    rng = random.Random(seed)
    model = JitterModel(latency, jitter, dist)
    assert all(model.draw_s(rng) >= 0.0 for _ in range(50))


@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=100))
def test_order_is_preserved(ready: list[float]) -> None:
    prev = None
    out = []
    for t in ready:
        prev = preserve_order(t, prev)
        out.append(prev)
    assert out == sorted(out)
    assert all(o >= r for o, r in zip(out, ready, strict=True))


def test_unknown_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown jitter distribution"):
        netem_standard_value("laplace", 0.5)


# --------------------------------------------------------------------------
# phases


def test_phase_overrides_inherit_unset_keys() -> None:
    base = NetworkConditions(latency_ms=5, jitter_ms=2, bandwidth_mbps=100)
    eff = effective_network(base, NetworkOverride(bandwidth_mbps=10))
    assert (eff.latency_ms, eff.jitter_ms, eff.bandwidth_mbps) == (5, 2, 10)
    assert effective_network(base, None) is base


def test_phase_windows_repeat_and_phase_at() -> None:
    tl = Timeline(repeat=True, phases=[{"name": "a", "duration_s": 2.0, "rate_hz": 10},
                                       {"name": "b", "duration_s": 0.5, "rate_hz": 0}])
    ws = [w for _, w in zip(range(5), phase_windows(tl), strict=False)]
    assert [(w.phase.name, w.start_s, w.end_s, w.cycle) for w in ws] == [
        ("a", 0.0, 2.0, 0), ("b", 2.0, 2.5, 0), ("a", 2.5, 4.5, 1), ("b", 4.5, 5.0, 1),
        ("a", 5.0, 7.0, 2)]
    assert phase_at(tl, 2.2).phase.name == "b"  # type: ignore[union-attr]
    assert phase_at(tl, 4.6).cycle == 1  # type: ignore[union-attr]
    once = Timeline(repeat=False, phases=[{"duration_s": 1.0, "rate_hz": 5}])
    assert phase_at(once, 1.5) is None
    assert list(message_times(ws[0])) == pytest.approx([k / 10 for k in range(20)])
    assert list(message_times(ws[1])) == []
