"""The pure schedule: determinism, order, stop conditions, fault triggers, jitter fit."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simstream.profile import load_profile, parse_profile
from simstream.schedule import Schedule, format_planned, iter_schedule, planned_record
from simstream.timing import netem_standard_value


def profile(**sections: Any) -> Any:
    data: dict[str, Any] = {"name": "t", "seed": 1,
                            "source": {"shape": [1, 8, 8], "total_events": None}}
    data.update(sections)
    return parse_profile(data)


def plan(prof: Any, rank: int = 0, limit: int = 100_000) -> list[Any]:
    return list(iter_schedule(prof, rank, limit=limit))


@st.composite
def profiles(draw: st.DrawFn, *, max_messages: int = 120) -> Any:
    n_phases = draw(st.integers(1, 3))
    phases = []
    for i in range(n_phases):
        phases.append({
            "name": f"p{i}",
            "duration_s": draw(st.floats(0.05, 2.0)),
            "rate_hz": draw(st.one_of(st.just(0.0), st.floats(1.0, 500.0))),
            "network": draw(st.one_of(st.none(), st.fixed_dictionaries(
                {"latency_ms": st.floats(0, 50), "jitter_ms": st.floats(0, 20)}))),
        })
    faults = draw(st.lists(st.sampled_from([
        {"kind": "reset", "every_messages": 7},
        {"kind": "stall", "every_s": 0.7, "duration_ms": 120},
        {"kind": "duplicate", "probability": 0.1},
        {"kind": "truncate", "at_s": 0.3, "fraction": 0.4},
        {"kind": "corrupt", "probability": 0.05, "nbytes": 2},
        {"kind": "slow_close", "at_message": 3, "probability": 0.5},
    ]), max_size=4))
    return profile(
        seed=draw(st.integers(0, 2**31)),
        network={"latency_ms": draw(st.floats(0, 30)), "jitter_ms": draw(st.floats(0, 10)),
                 "jitter_distribution": draw(st.sampled_from(
                     ["uniform", "normal", "pareto", "paretonormal"]))},
        timeline={"repeat": draw(st.booleans()), "phases": phases},
        faults=faults,
        stop={"messages": draw(st.integers(1, max_messages)),
              "duration_s": draw(st.one_of(st.none(), st.floats(0.5, 20)))},
    )


@given(profiles())
def test_same_profile_and_seed_give_the_same_schedule(prof: Any) -> None:
    a = [planned_record(p) for p in plan(prof)]
    b = [planned_record(p) for p in plan(prof)]
    assert a == b


@given(profiles())
def test_order_is_preserved_and_nothing_leaves_before_it_is_offered(prof: Any) -> None:
    ps = plan(prof)
    times = [p.t_sched for p in ps]
    assert times == sorted(times)
    assert all(p.t_sched >= p.t_offered - 1e-12 and p.delay_s >= 0 for p in ps)
    seqs = [p.seq for p in ps if not p.duplicate]
    assert seqs == list(range(len(seqs)))  # each seq once, in order; copies follow


@given(profiles(), st.integers(0, 2**31))
def test_the_seed_changes_the_draws(prof: Any, other: int) -> None:
    if other == prof.seed:
        return
    ps = plan(prof)
    if len({round(p.delay_s, 6) for p in ps}) < 3:
        return  # no real jitter in this profile
    qs = plan(prof.with_overrides({"seed": other}))
    assert [p.delay_s for p in ps] != [q.delay_s for q in qs]


def test_bundled_bursty_profile_bursts_and_stalls() -> None:
    prof = load_profile("profiles/bursty.yaml")
    ps = plan(prof)
    assert len(ps) == 500  # total_events 4000 / batch 8
    gaps = [b.t_sched - a.t_sched for a, b in zip(ps, ps[1:], strict=False)]
    assert max(gaps) == pytest.approx(0.51)  # 2 s of 100 Hz, then 0.5 s of silence
    assert ps[200].t_sched == pytest.approx(2.5)
    assert {p.phase for p in ps} == {"burst"}


def test_stop_conditions() -> None:
    paced = {"phases": [{"rate_hz": 10}]}
    assert len(plan(profile(timeline=paced, stop={"messages": 7}))) == 7
    s = Schedule(profile(timeline=paced, stop={"duration_s": 1.05}), 0)
    got = list(iter(lambda: s.next(), None))
    assert len(got) == 11 and s.end_reason == "duration"
    prof = profile(source={"shape": [1, 8, 8], "batch_size": 8, "total_events": 30},
                   timeline=paced)
    assert [p.events for p in plan(prof)] == [8, 8, 8, 6]
    once = profile(timeline={"repeat": False, "phases": [{"duration_s": 0.5, "rate_hz": 10}]})
    s = Schedule(once, 0)
    assert len(list(iter(lambda: s.next(), None))) == 5 and s.end_reason == "timeline"
    silent = profile(timeline={"phases": [{"rate_hz": 0}]}, stop={"duration_s": 3})
    s = Schedule(silent, 0)
    assert s.next() is None and s.end_reason == "silent"


def test_as_fast_as_possible_phases_end_by_the_clock_given() -> None:
    prof = profile(timeline={"repeat": False, "phases": [
        {"name": "asap", "duration_s": 1.0, "rate_hz": None},
        {"name": "paced", "duration_s": 1.0, "rate_hz": 2}]})
    s = Schedule(prof, 0)
    first = [s.next(now=0.1 * k) for k in range(10)]
    assert all(p is not None and p.phase == "asap" and p.t_sched == 0.0 for p in first)
    nxt = s.next(now=1.0)
    assert nxt is not None and (nxt.phase, nxt.t_sched) == ("paced", 1.0)


def test_dry_run_estimates_as_fast_as_possible_with_the_cap() -> None:
    # 8 events x 256 B = 2048 B per message on a 0.016384 Mbit/s link = 1 s each
    prof = profile(network={"bandwidth_mbps": 0.016384},
                   timeline={"repeat": False, "phases": [{"duration_s": 5.0, "rate_hz": None}]})
    assert len(plan(prof)) == 5


def test_message_and_time_triggers_and_ranks() -> None:
    prof = profile(
        transport={"ranks": 2},
        timeline={"phases": [{"rate_hz": 10}]},
        faults=[{"kind": "reset", "at_message": 3},
                {"kind": "truncate", "every_messages": 5, "fraction": 0.5},
                {"kind": "corrupt", "at_s": 1.25, "rank": 1},
                {"kind": "stall", "every_s": 2.0, "duration_ms": 500}],
        stop={"messages": 40})
    for rank in (0, 1):
        ps = plan(prof, rank)
        faults = {p.seq: p.fault_names for p in ps if p.faults}
        assert faults[3] == ["reset"]
        assert [s for s, f in faults.items() if "truncate" in f] == [5, 10, 15, 20, 25, 30, 35]
        corrupt = [s for s, f in faults.items() if "corrupt" in f]
        assert corrupt == ([13] if rank == 1 else [])  # first message at/after 1.25 s
        stalls = [p for p in ps if "stall" in p.fault_names]
        # stalls at 2 s, 4 s, ... of the shifted clock; each moves the rest by 0.5 s
        assert [p.seq for p in stalls][:2] == [20, 35]
        assert stalls[0].t_sched == pytest.approx(2.5)
        assert stalls[1].t_sched == pytest.approx(4.5)  # reached 4.0, moved by 0.5


def test_probability_strikes_at_about_that_rate_and_duplicates_repeat_the_seq() -> None:
    prof = profile(timeline={"phases": [{"rate_hz": 1000}]},
                   faults=[{"kind": "duplicate", "probability": 0.1}], stop={"messages": 5000})
    ps = plan(prof)
    copies = [p for p in ps if p.duplicate]
    assert 400 < len(copies) < 600
    by_seq: dict[int, list[Any]] = {}
    for p in ps:
        by_seq.setdefault(p.seq, []).append(p)
    for c in copies:
        orig, copy = by_seq[c.seq]
        assert not orig.duplicate and copy.duplicate and copy.fault_names == ["duplicate"]
        assert orig.t_sched == copy.t_sched


def test_faults_with_probability_and_a_trigger_strike_each_occurrence_with_that_chance() -> None:
    prof = profile(timeline={"phases": [{"rate_hz": 1000}]},
                   faults=[{"kind": "reset", "every_messages": 2, "probability": 0.5}],
                   stop={"messages": 4000})
    hits = [p.seq for p in plan(prof) if p.faults]
    assert all(s % 2 == 0 for s in hits)
    assert 850 < len(hits) < 1150


# --------------------------------------------------------------------------
# goodness of fit of the schedule's own jitter draws (fixed seeds: deterministic)


def delays(dist: str, mu: float = 100.0, sigma: float = 10.0, n: int = 10_000) -> list[float]:
    prof = profile(seed=42, network={"latency_ms": mu, "jitter_ms": sigma,
                                     "jitter_distribution": dist},
                   timeline={"phases": [{"rate_hz": 1000}]}, stop={"messages": n})
    return [(p.delay_s * 1000 - mu) / sigma for p in plan(prof)]


def ks(sample: list[float], cdf: Any) -> float:
    xs = sorted(sample)
    n = len(xs)
    return max(max((i + 1) / n - cdf(x), cdf(x) - i / n) for i, x in enumerate(xs))


def test_schedule_jitter_fits_uniform_and_normal() -> None:
    crit = 1.358 / math.sqrt(10_000)
    assert ks(delays("uniform"), lambda z: min(1.0, max(0.0, (z + 1) / 2))) < crit
    assert ks(delays("normal"), NormalDist().cdf) < crit


def test_schedule_jitter_fits_pareto_and_paretonormal_quantiles() -> None:
    for dist in ("pareto", "paretonormal"):
        zs = sorted(delays(dist))
        for p in (0.1, 0.25, 0.5, 0.75, 0.9):
            assert zs[int(p * len(zs))] == pytest.approx(netem_standard_value(dist, p), abs=0.05)
    zs = delays("pareto")
    assert abs(sum(zs) / len(zs)) < 0.05  # netem's pareto is centred on the latency


def test_format_planned_lines() -> None:
    prof = profile(timeline={"phases": [{"rate_hz": 10}]},
                   faults=[{"kind": "duplicate", "at_message": 0}], stop={"messages": 2})
    ps = plan(prof)
    text = format_planned(ps[1])
    assert "seq       0" in text and "duplicate (copy)" in text
    assert '"duplicate": true' in format_planned(ps[1], as_json=True)
