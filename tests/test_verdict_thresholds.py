"""Every cut-off of the verdict, its confidence, its recommendations and the
network cause, checked with typed evidence on both sides of it.

The numbers are written out here on purpose (not imported from the modules):
they are the documented rule, so a change of any cut-off in
diagnose/verdict.py or diagnose/cause.py fails one of these in well under a
second, instead of only the slow end-to-end hypothesis runs.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from simstream.diagnose.cause import network_cause
from simstream.diagnose.figures import (
    ArrivalFigures,
    CapacityFigures,
    CostFigures,
    Counts,
    DeviceFigures,
    EmitterFigures,
    EmitterGaps,
    EmitterSending,
    Figures,
    LongGaps,
    LoopFigures,
    LoopTime,
    ParseFigures,
    PerBatchMs,
    Q1Figures,
    ReceiverFigures,
    UpstreamFigures,
    UpstreamTime,
)
from simstream.diagnose.verdict import decide, recommendations

EPS = 0.001


def figures(loop: float = 0.3, up: float = 0.2, *, loop_time: LoopTime | None = None,
            up_time: UpstreamTime | None = None, full: float = 0.0, low: float = 1.0,
            idle_on_empty: float = 1.0, emitter: EmitterFigures | None = None,
            receiver: ReceiverFigures | None = None, **kw: object) -> Figures:
    return Figures(
        counts=Counts(batches_processed=100, messages_received=100),
        loop=LoopFigures(busy_share=loop, time_s=loop_time or LoopTime(inference=1.0)),
        upstream=UpstreamFigures(busy_share=up, time_s=up_time or UpstreamTime(parse=1.0)),
        q1=Q1Figures(maxsize=8, share_over_80pct=full, share_under_30pct=low),
        device=DeviceFigures(idle_share_waiting_on_empty_q1=idle_on_empty),
        emitter=emitter, receiver=receiver or ReceiverFigures(), **kw)  # type: ignore[arg-type]


# --- rule 1: the loop is saturated at a busy share of 0.85


@pytest.mark.parametrize(("busy", "verdict"), [(0.85, "consumer"), (0.85 - EPS, "network"), (1.0, "consumer")])
def test_loop_saturation_cut_off(busy: float, verdict: str) -> None:
    assert decide(figures(loop=busy))[0] == verdict


@pytest.mark.parametrize(("full", "verdict"), [(0.5, "consumer"), (0.5 - EPS, "network"), (1.0, "consumer")])
def test_a_mostly_full_q1_means_the_loop_is_the_limit(full: float, verdict: str) -> None:
    # get waits say the loop starved (busy 0.35), yet Q1 was over 80 % full this share of the run
    v, _, reasons = decide(figures(loop=0.35, full=full, low=0.0))
    assert v == verdict
    if verdict == "consumer":
        assert reasons[0].startswith("Q1 was over 80 % full")


@pytest.mark.parametrize(("costs", "verdict"), [
    ((1.01, 1.0, 0.99), "parse"), ((1.0, 1.01, 0.99), "queue"), ((0.99, 1.0, 1.01), "consumer")])
def test_the_largest_share_of_the_loop_decides(costs: tuple[float, float, float], verdict: str) -> None:
    lt = LoopTime(parse=costs[0], q1_get_overhead=costs[1], inference=costs[2])
    assert decide(figures(loop=0.9, loop_time=lt))[0] == verdict


def test_loop_confidence_formula() -> None:
    # 0.35 + 0.3 * (0.925 - 0.85) / 0.15 + 0.25 * dominance(3:1 -> 1) + 0.1 * full
    lt = LoopTime(q1_get_overhead=3.0, inference=1.0)
    assert decide(figures(loop=0.925, loop_time=lt, full=0.5))[1] == pytest.approx(0.8, abs=1e-3)
    # dominance 2:1 -> (1 - 0.5) / (2 / 3) = 0.75
    lt = LoopTime(q1_get_overhead=2.0, inference=1.0)
    assert decide(figures(loop=0.85, loop_time=lt, full=0.0))[1] == pytest.approx(0.35 + 0.25 * 0.75, abs=1e-3)


# --- rule 2: the parser threads are saturated at 0.85


@pytest.mark.parametrize(("busy", "verdict"), [(0.85, "parse"), (0.85 - EPS, "network")])
def test_upstream_saturation_cut_off(busy: float, verdict: str) -> None:
    assert decide(figures(loop=0.5, up=busy))[0] == verdict


def test_upstream_work_decides_parse_or_queue_and_its_confidence() -> None:
    put = UpstreamTime(parse=1.0, q1_put_overhead=1.01)
    assert decide(figures(loop=0.5, up=0.9, up_time=put))[0] == "queue"
    parse = UpstreamTime(parse=3.0, q1_put_overhead=1.0)
    v, c, _ = decide(figures(loop=0.5, up=0.925, up_time=parse, low=0.5))
    assert v == "parse" and c == pytest.approx(0.35 + 0.15 + 0.25 + 0.05, abs=1e-3)


def test_upstream_costs_compare_per_thread_that_carried_them() -> None:
    # two parser threads parsed 1.8 s in all (0.9 s each), one thread put for 1.0 s: the
    # putting is the busier part, though the parse total is larger
    ut = UpstreamTime(threads=2, parse=1.8, q1_put_overhead=1.0, put_threads=1)
    assert decide(figures(loop=0.5, up=0.9, up_time=ut))[0] == "queue"
    assert decide(figures(loop=0.5, up=0.9, up_time=replace(ut, parse=2.02)))[0] == "parse"


# --- rule 3: arrivals set the pace


def test_network_confidence_formula() -> None:
    # 0.4 + 0.35 * (0.85 - 0.35) / 0.5 + 0.25 * (0.5 * low + 0.5 * idle on empty Q1)
    v, c, _ = decide(figures(loop=0.35, up=0.1, low=0.6, idle_on_empty=0.2))
    assert v == "network" and c == pytest.approx(0.4 + 0.35 + 0.25 * 0.4, abs=1e-3)


@pytest.mark.parametrize(("blocked", "full", "lowered"), [
    (0.3 + EPS, 0.3 + EPS, True), (0.3, 0.9, False), (0.9, 0.3, False)])
def test_backpressure_with_a_full_q1_lowers_network_confidence(blocked: float, full: float,
                                                              lowered: bool) -> None:
    base = figures(loop=0.35, up=0.1, low=0.6, idle_on_empty=0.2, full=full)
    em = EmitterFigures(sending=EmitterSending(blocked_share=blocked))
    c0 = decide(base)[1]
    c1 = decide(replace(base, emitter=em))[1]
    assert c1 == pytest.approx(c0 - 0.2 if lowered else c0, abs=1e-3)


# --- the network cause


def emitter(blocked: float = 0.0, sending: float = 0.3, silent: float = 0.0) -> EmitterFigures:
    return EmitterFigures(attempts=10, completed=10,
                          sending=EmitterSending(blocked_share=blocked, sending_share=sending),
                          long_gaps=EmitterGaps(count=4, share_emitter_silent=silent))


def busy_receiver(busy: float) -> ReceiverFigures:
    return ReceiverFigures(busy_share=busy, span_s=1.0, wait_s=1 - busy, wakeups=10, bytes_per_wakeup=1e5)


@pytest.mark.parametrize(("blocked", "full", "rx", "cause"), [
    (0.3, 0.0, 0.7, "receive"), (0.3 - EPS, 0.0, 0.7, "producer"),
    (0.9, 0.3 - EPS, 0.7, "receive"), (0.9, 0.3, 0.7, "producer"),
    (0.9, 0.0, 0.7 - EPS, "unknown"), (0.9, 0.0, 0.5, "unknown"), (0.9, 0.0, 0.5 - EPS, "link"),
    (0.9, 0.0, None, "unknown")])
def test_cause_when_the_emitter_is_blocked(blocked: float, full: float, rx: float | None, cause: str) -> None:
    f = figures(full=full, emitter=emitter(blocked=blocked, sending=0.3),
                receiver=busy_receiver(rx) if rx is not None else None)
    c = network_cause(f)
    assert c.cause == cause, c.why
    if rx is None:
        assert c.cannot_tell_apart == ["link", "receive"]


def test_a_rate_cap_in_the_shaping_record_makes_a_blocked_emitter_the_link() -> None:
    f = figures(emitter=emitter(blocked=0.9), receiver=busy_receiver(0.95), shaping_cap="rate cap 80 Mbit/s")
    assert network_cause(f).cause == "link"


@pytest.mark.parametrize(("sending", "silent", "cause"), [
    (0.8, 0.0, "link"), (0.8 - EPS, 0.0, "unknown"), (0.6, 0.5, "producer"), (0.6, 0.5 - EPS, "unknown"),
    (0.5 - EPS, 0.0, "producer"), (0.5, 0.0, "unknown")])
def test_cause_from_the_emitters_own_pace(sending: float, silent: float, cause: str) -> None:
    assert network_cause(figures(emitter=emitter(sending=sending, silent=silent))).cause == cause


@pytest.mark.parametrize(("rx", "full", "cause"), [
    (0.7, 0.0, "receive"), (0.7 - EPS, 0.0, "unknown"), (0.9, 0.3, "unknown"), (None, 0.0, "unknown")])
def test_cause_without_an_emit_log(rx: float | None, full: float, cause: str) -> None:
    c = network_cause(figures(full=full, receiver=busy_receiver(rx) if rx is not None else None))
    assert c.cause == cause
    if cause == "unknown":
        assert c.cannot_tell_apart[:2] == ["producer", "link"]
        assert ("receive" in c.cannot_tell_apart) == (rx is None)
        assert "no emit log" in c.why


# --- recommendations


def rec_figures(**kw: object) -> Figures:
    base = dict(
        arrivals=ArrivalFigures(rate_bps=10.0, long_gaps=LongGaps(count=2, longest_s=0.5)),
        capacity=CapacityFigures(bps=100.0, without_loop_parse_bps=120.0),
        costs=CostFigures(per_batch_ms=PerBatchMs(parse=5.0, compute=10.0, h2d=1.0, gpu_cycle=10.0)))
    base.update(kw)
    return figures(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("sending", "shown"), [(0.8 + EPS, True), (0.8, False)])
def test_link_saturated_line_needs_the_emitter_sending_over_80pct(sending: float, shown: bool) -> None:
    em = EmitterFigures(sending=EmitterSending(sending_share=sending, send_rate_while_sending_Bps=1e7,
                                               blocked_share=0.0))
    f = rec_figures(emitter=em, shaping_cap="rate cap 80 Mbit/s")
    assert network_cause(f).cause == "link"
    recs = recommendations(f, "network")
    assert any("the link is saturated (a bandwidth cap: rate cap 80 Mbit/s)" in r for r in recs) == shown


def test_no_bandwidth_cap_claimed_without_a_shaping_record() -> None:
    em = EmitterFigures(sending=EmitterSending(sending_share=0.95, send_rate_while_sending_Bps=1e7))
    recs = recommendations(rec_figures(emitter=em), "network")
    assert not any("bandwidth cap" in r for r in recs)
    assert any("no rate cap was applied" in r for r in recs)


@pytest.mark.parametrize(("idle", "shown"), [(0.3 + EPS, True), (0.3, False)])
def test_stall_depth_advice_for_a_consumer_verdict(idle: float, shown: bool) -> None:
    recs = recommendations(rec_figures(idle_on_empty=idle), "consumer")
    assert any(r.startswith("A Q1 of 50 batches") for r in recs) == shown


@pytest.mark.parametrize(("rate", "depth_alone"), [(95.0 - EPS, True), (95.0, False)])
def test_stall_depth_advice_says_when_depth_alone_will_not_do(rate: float, depth_alone: bool) -> None:
    f = rec_figures(arrivals=ArrivalFigures(rate_bps=rate, long_gaps=LongGaps(count=1, longest_s=0.5)))
    recs = recommendations(f, "network")
    assert any("depth alone will not end the starvation" in r for r in recs) == depth_alone


@pytest.mark.parametrize(("blocked", "basis"), [(0.05 - EPS, "the producer's offered rate"),
                                                (0.05, "what the rest of the inference stage can take")])
def test_parser_threads_sized_on_the_offered_rate_only_when_the_emitter_was_free(blocked: float,
                                                                                  basis: str) -> None:
    em = EmitterFigures(sending=EmitterSending(blocked_share=blocked, offered_rate_bps=40.0))
    f = rec_figures(emitter=em, parse=ParseFigures(location="receiver", threads_observed=1))
    recs = [r for r in recommendations(f, "parse") if "parser thread" in r]
    assert recs and f"({basis})" in recs[0]


@pytest.mark.parametrize(("share", "shown"), [(0.2 + EPS, True), (0.2, False)])
def test_move_parsing_out_of_the_loop_over_20pct(share: float, shown: bool) -> None:
    costs = CostFigures(per_batch_ms=PerBatchMs(parse=5.0, compute=10.0), parse_share_of_loop=share)
    f = rec_figures(costs=costs, parse=ParseFigures(location="inference_loop", threads_observed=1))
    recs = recommendations(f, "consumer")
    assert any(r.startswith("Move parsing out of the inference loop") for r in recs) == shown


@pytest.mark.parametrize(("h2d", "shown"), [(5.0, True), (5.0 - EPS, False)])
def test_pinned_copy_advice_when_h2d_is_half_the_cycle(h2d: float, shown: bool) -> None:
    costs = CostFigures(per_batch_ms=PerBatchMs(compute=10.0, h2d=h2d, gpu_cycle=10.0))
    recs = recommendations(rec_figures(costs=costs), "consumer")
    assert any(r.startswith("H2D takes") for r in recs) == shown


def test_a_cap_in_another_phase_does_not_explain_the_backpressure() -> None:
    """The bursty demo: a 10 Mbit/s cap in the stall phase, backpressure in the burst
    phase while the receiver was busy: the receive path, not the link."""
    em = EmitterFigures(sending=EmitterSending(blocked_share=0.9, sending_share=0.9,
                                               blocked_s_by_phase={"burst": 9.0, "stall": 1.0}))
    f = figures(emitter=em, receiver=busy_receiver(0.95), shaping_cap="phase stall: rate cap 10 Mbit/s",
                capped_phases=["stall"])
    assert network_cause(f).cause == "receive"
    f = replace(f, emitter=replace(em, sending=replace(em.sending, blocked_s_by_phase={"burst": 1.0, "stall": 9.0})))
    assert network_cause(f).cause == "link"


@pytest.mark.parametrize(("backlog", "cause"), [(64 * 1024, "receive"), (64 * 1024 - 1, "link")])
def test_bytes_waiting_in_the_kernel_receive_queue_are_the_receive_path(backlog: int, cause: str) -> None:
    rx = replace(busy_receiver(0.2), rx_queue_bytes_mean=float(backlog), rx_queue_bytes_max=float(4 * backlog))
    assert network_cause(figures(emitter=emitter(blocked=0.5), receiver=rx)).cause == cause


@pytest.mark.parametrize(("in_capped", "cause"), [(5.0, "link"), (4.99, "receive")])
def test_half_the_backpressure_behind_the_cap_makes_it_the_link(in_capped: float, cause: str) -> None:
    em = EmitterFigures(sending=EmitterSending(blocked_share=0.9, sending_share=0.9,
                                               blocked_s_by_phase={"burst": 10.0 - in_capped, "stall": in_capped}))
    f = figures(emitter=em, receiver=busy_receiver(0.95), shaping_cap="phase stall: rate cap 10 Mbit/s",
                capped_phases=["stall"])
    assert network_cause(f).cause == cause
