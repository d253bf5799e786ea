"""The user-space link emulator's maths, in virtual time (no clock, no devices)."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simstream.testbed.link import (
    DeliveryTrace,
    GilbertElliott,
    Link,
    LinkParams,
    RateTrace,
    parse_mahimahi,
    parse_rate_csv,
    simulate,
)


def _link(**kw: object) -> Link:
    return Link(LinkParams(**kw), random.Random(7))  # type: ignore[arg-type]


def test_unshaped_link_hands_packets_on_at_once_in_order() -> None:
    out = simulate(_link(), [(0.001 * i, 100) for i in range(10)])
    assert out == [(i, pytest.approx(0.001 * i)) for i in range(10)]


def test_fixed_delay_adds_exactly_the_latency() -> None:
    out = simulate(_link(delay_ms=20), [(0.5 * i, 1500) for i in range(5)])
    assert [t for _, t in out] == pytest.approx([0.5 * i + 0.020 for i in range(5)])


def test_jitter_keeps_order_and_has_the_profiles_spread() -> None:
    arrivals = [(0.010 * i, 200) for i in range(5000)]
    out = simulate(_link(delay_ms=20, jitter_ms=2, distribution="normal"), arrivals)
    assert [i for i, _ in out] == list(range(5000))
    delays = [t - arrivals[i][0] for i, t in out]
    assert statistics.median(delays) == pytest.approx(0.020, abs=0.0003)
    # 10 ms apart, a 2 ms jitter almost never has to wait for the previous packet
    assert statistics.pstdev(delays) == pytest.approx(0.002, rel=0.1)


def test_jitter_reorders_only_when_asked() -> None:
    arrivals = [(0.0005 * i, 200) for i in range(2000)]
    kept = simulate(_link(delay_ms=20, jitter_ms=5), arrivals)
    assert [i for i, _ in kept] == list(range(2000))
    # packets 0.5 ms apart with 5 ms jitter: held in order, some wait behind others
    assert statistics.mean(t - arrivals[i][0] for i, t in kept) > 0.020
    mixed = simulate(_link(delay_ms=20, jitter_ms=5, reorder=True), arrivals)
    order = [i for i, _ in mixed]
    assert sorted(order) == list(range(2000)) and order != list(range(2000))
    assert [t for _, t in mixed] == sorted(t for _, t in mixed)


def test_bernoulli_loss_rate() -> None:
    link = _link(loss_pct=5)
    out = simulate(link, [(0.0001 * i, 100) for i in range(20000)])
    assert link.stats.lost == 20000 - len(out)
    assert link.stats.lost / 20000 == pytest.approx(0.05, abs=0.006)


def test_gilbert_elliott_loss_comes_in_bursts_at_the_stationary_rate() -> None:
    ge = GilbertElliott(p_pct=1, r_pct=25)
    assert ge.mean_loss_pct == pytest.approx(100 / 26)
    link = _link(loss_burst=ge)
    n = 40000
    delivered = {i for i, _ in simulate(link, [(0.0001 * i, 100) for i in range(n)])}
    lost = [i not in delivered for i in range(n)]
    assert sum(lost) / n * 100 == pytest.approx(ge.mean_loss_pct, rel=0.2)
    bursts = [len(r) for r in "".join("x" if x else "." for x in lost).split(".") if r]
    assert statistics.mean(bursts) == pytest.approx(100 / 25, rel=0.2)  # Bernoulli would be ~1


def test_token_bucket_is_byte_accurate() -> None:
    link = _link(rate_mbps=10, queue_packets=10_000)
    sizes = [random.Random(i).choice([60, 1500, 9000, 64000]) for i in range(2000)]
    out = simulate(link, [(0.0, s) for s in sizes])
    total = sum(sizes)
    rate = 10e6 / 8
    # the last packet leaves when the bucket has paid for every byte but its own
    # (a packet leaves once the tokens cover the bucket's depth of it)
    assert out[-1][1] == pytest.approx((total - sizes[-1] - 1514 + min(sizes[-1], 1514)) / rate)
    # any window: bytes out <= rate * window + depth + one packet
    times = [t for _, t in out]
    for a in range(0, len(out), 97):
        for b in range(a, len(out), 131):
            sent = sum(sizes[i] for i, _ in out[a:b + 1])
            assert sent <= rate * (times[b] - times[a]) + 1514 + 64000 + 1e-6


def test_rate_then_delay_and_a_phase_change_takes_effect_from_then_on() -> None:
    link = _link(rate_mbps=8, delay_ms=10)  # 1 MB/s: a 1000-byte packet takes 1 ms
    out = simulate(link, [(0.0, 1000)] * 3)
    assert [t for _, t in out] == pytest.approx([0.010, 0.010 + 0.000486, 0.011486])
    link.set_params(1.0, LinkParams(rate_mbps=8, delay_ms=50))
    link.offer(2.0, 1000, "late")
    assert link.next_due() == pytest.approx(2.050)


@pytest.mark.parametrize(("limit", "accepted"), [({"queue_packets": 10}, 11),
                                                 ({"queue_bytes": 15_000}, 11),
                                                 ({"queue_bytes": 14_999}, 10)])
def test_drop_tail_queue_in_packets_or_bytes(limit: dict[str, int], accepted: int) -> None:
    link = _link(rate_mbps=1, **limit)
    drops = [link.offer(0.0, 1500, i) for i in range(100)]
    # the first leaves on the full bucket; the rest wait in the queue until it is full
    assert drops.count(None) == accepted
    assert set(drops) == {None, "queue"} and link.stats.queue_drops == 100 - accepted
    assert link.queue_at(0.0) == (accepted - 1, (accepted - 1) * 1500)
    assert link.queue_at(100.0) == (0, 0)
    assert drops[accepted:] == ["queue"] * (100 - accepted)  # tail drop: the newest go


def test_default_queue_is_netems_1000_full_size_frames_in_bytes_too() -> None:
    from simstream.testbed.link import DEFAULT_QUEUE_BYTES

    assert DEFAULT_QUEUE_BYTES == 1000 * 1514
    small = _link(rate_mbps=1)
    assert [small.offer(0.0, 1000, i) for i in range(1100)].count(None) == 1001
    # 64 KB packets (the TUN devices' MTU): the bytes fill first, not 1000 packets
    big = _link(rate_mbps=1)
    assert [big.offer(0.0, 64_000, i) for i in range(100)].count(None) == 1 + 23
    assert "1000 packets or 1514000 bytes" in big.params.describe()[-1]


def test_mahimahi_trace_delivers_1500_bytes_per_opportunity() -> None:
    trace = parse_mahimahi(["# one opportunity per ms", "1", "2", "3", "4"])
    assert trace.mean_mbps == pytest.approx(12.0)
    link = _link(trace=trace, queue_packets=1000)
    out = simulate(link, [(0.0, 1500)] * 6 + [(0.0, 3000)])
    # 4 ms period, repeating: 1,2,3,4 then 5,6,7,8 (the next cycle's opportunities)
    assert [t for _, t in out] == pytest.approx([0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008])
    # small packets share an opportunity; an idle link wastes the ones that pass
    link2 = _link(trace=DeliveryTrace((10, 20)))
    out2 = simulate(link2, [(0.0, 700), (0.0, 700), (0.0, 700), (0.5, 100)])
    assert [t for _, t in out2] == pytest.approx([0.010, 0.010, 0.020, 0.510])


def test_rate_csv_trace_serves_bytes_at_the_rate_of_each_step() -> None:
    trace = parse_rate_csv(["time_s,mbps", "0,8", "1,0", "2,16"])
    assert trace == RateTrace(((0, 8), (1, 0), (2, 16)), 3.0)
    assert trace.mean_mbps == pytest.approx(8.0)
    link = _link(trace=trace, queue_bytes=10**7)
    out = simulate(link, [(0.0, 500_000), (0.0, 1_000_000), (3.0, 1_000_000)])
    # 1 MB/s for 1 s, nothing for 1 s, 2 MB/s; then the trace repeats from 3 s
    assert [t for _, t in out] == pytest.approx([0.5, 2.25, 4.0])


@pytest.mark.parametrize(("parse", "lines", "match"), [
    (parse_mahimahi, ["1", "x"], "line 2"),
    (parse_mahimahi, ["5", "3"], "backwards"),
    (parse_mahimahi, [], "no opportunities"),
    (parse_rate_csv, ["0,1", "1"], "line 2.*two columns"),
    (parse_rate_csv, ["1,5"], "start at time 0"),
    (parse_rate_csv, ["0,0"], "never delivers"),
])
def test_bad_traces_are_named(parse: object, lines: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse(lines)  # type: ignore[operator]


def test_params_round_trip_through_json_and_refuse_bad_values() -> None:
    p = LinkParams(delay_ms=5, jitter_ms=1, distribution="pareto", loss_burst=GilbertElliott(1, 30),
                   trace=RateTrace(((0.0, 1.0), (1.0, 2.0)), 2.0), queue_bytes=100_000)
    assert LinkParams.from_json(p.to_json()) == p
    q = LinkParams(trace=DeliveryTrace((1, 2, 2)))
    assert LinkParams.from_json(q.to_json()) == q
    with pytest.raises(ValueError, match="loss_pct"):
        LinkParams(loss_pct=101)
    with pytest.raises(ValueError, match="distribution"):
        LinkParams(jitter_ms=1, distribution="cauchy")
    with pytest.raises(ValueError, match="never leaves"):
        GilbertElliott(p_pct=1, r_pct=0)


@settings(max_examples=60, deadline=None)
@given(
    delay=st.floats(0, 50), jitter=st.floats(0, 20), loss=st.floats(0, 30),
    rate=st.one_of(st.none(), st.floats(0.1, 1000)), qp=st.integers(1, 50),
    gaps=st.lists(st.tuples(st.floats(0, 0.01), st.integers(20, 65000)), max_size=200),
    seed=st.integers(0, 2**32 - 1),
)
def test_nothing_lost_unaccounted_and_order_kept(delay: float, jitter: float, loss: float,
                                                 rate: float | None, qp: int,
                                                 gaps: list[tuple[float, int]], seed: int) -> None:
    link = Link(LinkParams(delay_ms=delay, jitter_ms=jitter, loss_pct=loss, rate_mbps=rate,
                           queue_packets=qp), random.Random(seed))
    t = 0.0
    arrivals = []
    for gap, size in gaps:
        t += gap
        arrivals.append((t, size))
    out = simulate(link, arrivals)
    s = link.stats
    assert s.delivered == len(out) == s.offered - s.lost - s.queue_drops
    assert [i for i, _ in out] == sorted(i for i, _ in out)
    for i, dep in out:
        assert dep >= arrivals[i][0] + max(0.0, delay - 4.0 * jitter) / 1000 - 1e-9
    assert link.in_flight() == 0
