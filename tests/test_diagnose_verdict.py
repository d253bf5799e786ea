"""The verdict is recovered from the measurements of simulated runs whose
bottleneck is known by construction (never from the profile)."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simstream.diagnose.evidence import compute_evidence
from simstream.diagnose.figures import (
    Counts,
    DeviceFigures,
    EmitterFigures,
    EmitterSending,
    Figures,
    LoopFigures,
    LoopTime,
    Q1Figures,
    UpstreamFigures,
)
from simstream.diagnose.load import load_run
from simstream.diagnose.report import diagnose_run
from simstream.diagnose.simulate import SCENARIOS, Scenario, write_run_dir
from simstream.diagnose.verdict import decide, recommendations

REPO = Path(__file__).resolve().parent.parent


def verdict_of(sc: Scenario, d: Path) -> tuple[str, float, dict[str, Any]]:
    ev = compute_evidence(load_run(write_run_dir(sc, d)))
    v, c, _ = decide(ev.figures)
    return v, c, ev.to_json()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_clear_cut_scenarios(name: str, tmp_path: Path) -> None:
    sc = SCENARIOS[name]
    v, c, _ = verdict_of(sc, tmp_path / name)
    assert v == sc.expect
    assert 0.7 <= c <= 1.0


def test_all_four_verdicts_are_reachable() -> None:
    assert {sc.expect for sc in SCENARIOS.values()} == {"network", "parse", "queue", "consumer"}


def test_queue_put_side(tmp_path: Path) -> None:
    """A slow put (the receiver's side of Q1) starves the loop: still `queue`."""
    sc = Scenario(phases=[("s", 1.0, 300.0)], parse_ms=0.2, put_ms=8.0, compute_ms=1.0, h2d_ms=0.2,
                  d2h_ms=0.1, nbytes=16384, duration_s=2.0)
    v, _, ev = verdict_of(sc, tmp_path / "r")
    assert ev["loop_busy_share"] < 0.5 and ev["upstream_busy_share"] > 0.9
    assert v == "queue"
    # the way out names the setting that keeps Q1 in process, on Ray too
    rep = diagnose_run(tmp_path / "r", plots=False, trace=False)
    assert any("consumer.layout: fast" in r and "--layout fast" in r and "On Ray" in r
               for r in rep["recommendations"])


def test_polling_get_counts_in_full(tmp_path: Path) -> None:
    """A polling Q1 get (production's 10 ms sweeps) costs little most times and up
    to a sweep sometimes: the median hides it, the loop's total time does not.
    The consumer keeps up with 400/s, but only just, and the polling is why."""
    sc = Scenario(phases=[("s", 1.0, 400.0)], nbytes=16384, events=1, parse_ms=0.1, get_ms=0.05,
                  poll_ms=10.0, put_ms=0.05, compute_ms=0.6, h2d_ms=0.03, d2h_ms=0.02, q1_maxsize=64,
                  duration_s=3.0)
    v, _, ev = verdict_of(sc, tmp_path / "r")
    assert ev["per_batch_ms"]["q1_get_overhead"] < ev["per_batch_ms"]["compute"]  # the median hides it
    lt = ev["loop_time_s"]
    assert lt["q1_get_overhead"] > 2 * lt["inference"]
    assert v == "queue"


def test_cpu_device_serial_streams(tmp_path: Path) -> None:
    """Copies and kernels in turn on the host (no overlap): capacity is their sum."""
    sc = Scenario(phases=[("s", 1.0, 100.0)], compute_ms=12, h2d_ms=4, d2h_ms=2, gpu_async=False,
                  duration_s=3.0, jitter=0.0)
    v, _, ev = verdict_of(sc, tmp_path / "r")
    assert ev["gpu_streams_overlap"] is False
    assert ev["capacity_bps"] == pytest.approx(1000 / 18.05, rel=0.03)
    assert v == "consumer"


def test_no_emit_log_no_seq_uses_consumer_side_only(tmp_path: Path) -> None:
    base = SCENARIOS["bursty-network"]
    sc = Scenario(**{**base.__dict__, "emit_log": False, "seq": False})
    d = write_run_dir(sc, tmp_path / "r")
    assert not (d / "emit.jsonl").exists()
    rep = diagnose_run(d, plots=False, trace=False)
    assert rep["verdict"] == "network"
    assert rep["data_sources"]["emit_log"] is False
    assert rep["data_sources"]["sequence_numbers"] is False
    assert rep["evidence"]["consumer_side_only"] is True and rep["evidence"]["emitter"] is None
    assert "consumer's records alone" in rep["summary"] and "no sequence numbers" in rep["summary"]
    assert any("consumer-side data only" in line for line in rep["key_evidence"])


@pytest.mark.parametrize("profile", ["profiles/hypotheses/consumer-bound.yaml", None])
def test_profile_in_the_run_dir_is_ignored(tmp_path: Path, profile: str | None) -> None:
    """A profile that claims another bottleneck, or one that is not even YAML, changes nothing."""
    d = write_run_dir(SCENARIOS["network"], tmp_path / "r")
    if profile:
        shutil.copy(REPO / profile, d / "profile.yaml")
    else:
        (d / "profile.yaml").write_text(": this is not { yaml")
    rep = diagnose_run(d, plots=False, trace=False)
    assert rep["verdict"] == "network"
    assert rep["data_sources"]["profile_read"] is False


def test_no_processed_batches(tmp_path: Path) -> None:
    assert decide(Figures(counts=Counts(batches_processed=0, messages_received=0)))[0] == "network"
    assert decide(Figures(counts=Counts(batches_processed=0, messages_received=5, quarantined=5)))[0] == "parse"


def test_blocked_emitter_with_full_q1_lowers_network_confidence() -> None:
    ev = Figures(counts=Counts(batches_processed=10), loop=LoopFigures(busy_share=0.3),
                 upstream=UpstreamFigures(busy_share=0.2), q1=Q1Figures(share_under_30pct=1.0),
                 device=DeviceFigures(idle_share_waiting_on_empty_q1=1.0))
    blocked = EmitterFigures(sending=EmitterSending(blocked_share=0.6))
    v1, c1, _ = decide(ev)
    v2, c2, _ = decide(replace(ev, emitter=blocked))
    assert v1 == v2 == "network"
    assert c2 == c1  # blocked with Q1 empty: a full socket on a slow link
    v3, c3, reasons = decide(replace(ev, q1=Q1Figures(share_under_30pct=0.2, share_over_80pct=0.4),
                                     emitter=blocked))
    assert v3 == "network" and c3 < c1
    assert "blocked by backpressure" in reasons[-1]
    # Q1 full for most of the run: the backpressure came from the consumer, whose loop is the limit
    v4, _, _ = decide(replace(ev, q1=Q1Figures(share_under_30pct=0.2, share_over_80pct=0.6),
                              loop=LoopFigures(busy_share=0.3, time_s=LoopTime(inference=1.0)),
                              emitter=blocked))
    assert v4 == "consumer"


def test_recommendations_are_quantitative(tmp_path: Path) -> None:
    ev = compute_evidence(load_run(write_run_dir(SCENARIOS["bursty-network"], tmp_path / "b"))).figures
    recs = recommendations(ev, "network")
    need = math.ceil((ev.arrivals.long_gaps.longest_s or 0) * (ev.capacity.bps or 0))
    assert any(f"A Q1 of {need} batches" in r for r in recs)
    ev = compute_evidence(load_run(write_run_dir(SCENARIOS["parse-in-loop"], tmp_path / "p"))).figures
    recs = recommendations(ev, "parse")
    assert any(r.startswith("Move parsing out of the inference loop") for r in recs)
    # 40 ms of parsing against a ~3 ms GPU cycle: about 14 threads to feed the GPU
    threads = [r for r in recs if "parser thread" in r]
    assert threads and "needs 14 parser thread(s)" in threads[0]


# --------------------------------------------------------------------------
# property: generated scenarios whose bottleneck is known by construction

KINDS = ("network", "receive", "parse_loop", "parse_receiver", "queue_get", "queue_put", "consumer")


@st.composite
def scenarios(draw: st.DrawFn, kinds: tuple[str, ...] = KINDS) -> tuple[str, Scenario]:
    kind = draw(st.sampled_from(kinds))
    compute = draw(st.floats(2.0, 20.0))
    h2d = compute * draw(st.floats(0.05, 0.4))
    d2h = compute * draw(st.floats(0.05, 0.3))
    gpu_async = draw(st.booleans())
    gpu_cycle = max(compute, h2d, d2h) if gpu_async else compute + h2d + d2h
    common: dict[str, Any] = {
        "compute_ms": compute, "h2d_ms": h2d, "d2h_ms": d2h, "gpu_async": gpu_async,
        "buffers": draw(st.integers(2, 3)), "q1_maxsize": draw(st.integers(4, 16)),
        "jitter": draw(st.floats(0.0, 0.2)), "poisson": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)), "nbytes": draw(st.sampled_from([65536, 1 << 20])),
        "get_ms": 0.02 * gpu_cycle, "put_ms": 0.02 * gpu_cycle,
    }
    fast_parse = gpu_cycle * draw(st.floats(0.0, 0.2))
    if kind == "network":
        cap = 1000.0 / (gpu_cycle + 0.02 * gpu_cycle)
        pattern = draw(st.sampled_from(["steady", "bursty", "capped"]))
        rate = cap * draw(st.floats(0.1, 0.5))
        if pattern == "steady":
            phases = [("steady", 1.0, rate)]
        elif pattern == "bursty":
            phases = [("burst", draw(st.floats(0.3, 1.0)), rate), ("stall", draw(st.floats(0.2, 1.0)), 0.0)]
        else:
            send_s = draw(st.floats(2.0, 6.0)) * gpu_cycle / 1e3
            common["bandwidth_mbps"] = (common["nbytes"] + 64) * 8 / send_s / 1e6
            rate = 1.0 / send_s
            phases = [("capped", 1.0, None)]
        sc = Scenario(phases=phases, parse_ms=min(fast_parse, 0.3 * 1000 / rate), **common)
        expect = "network"
        kind = f"network-{pattern}"
    elif kind == "receive":
        # the receiver's reads and copies cost several loop cycles a message: it holds the
        # producer back while Q1 sits empty
        recv = gpu_cycle * draw(st.floats(3.0, 8.0))
        rate = 1000.0 / recv
        sc = Scenario(phases=[("unpaced", 1.0, None)], recv_ms=recv, parse_ms=min(fast_parse, 0.3 * recv),
                      **common)
        expect = "network"
    elif kind == "parse_loop":
        parse = gpu_cycle * draw(st.floats(3.0, 8.0))
        sc = Scenario(phases=[("unpaced", 1.0, None)], parse_in="actor", parse_ms=parse, **common)
        rate = 1000.0 / parse
        expect = "parse"
    elif kind == "parse_receiver":
        threads = draw(st.integers(1, 3))
        parse = threads * gpu_cycle * draw(st.floats(3.0, 8.0))
        rate = threads * 1000.0 / parse
        sc = Scenario(phases=[("steady", 1.0, rate * draw(st.floats(1.5, 3.0)))], parse_in="receiver",
                      parse_ms=parse, parser_threads=threads, **common)
        expect = "parse"
    elif kind == "queue_get":
        common["get_ms"] = gpu_cycle * draw(st.floats(3.0, 8.0))
        rate = 1000.0 / common["get_ms"]
        sc = Scenario(phases=[("steady", 1.0, rate * draw(st.floats(1.5, 3.0)))], parse_ms=fast_parse, **common)
        expect = "queue"
    elif kind == "queue_put":
        common["put_ms"] = gpu_cycle * draw(st.floats(3.0, 8.0))
        rate = 1000.0 / (common["put_ms"] + fast_parse)
        sc = Scenario(phases=[("steady", 1.0, rate * draw(st.floats(1.5, 3.0)))],
                      parse_ms=min(fast_parse, 0.1 * common["put_ms"]), **common)
        expect = "queue"
    else:
        rate = 1000.0 / gpu_cycle
        sc = Scenario(phases=[("steady", 1.0, rate * draw(st.floats(1.5, 3.0)))], parse_ms=fast_parse,
                      **common)
        expect = "consumer"
    # about 150-250 batches whatever the rates: bounded runtime
    sc.duration_s = min(30.0, max(0.5, draw(st.integers(150, 250)) / rate))
    sc.name = f"{kind}"
    return expect, sc


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=scenarios())
def test_property_verdict_matches_built_in_bottleneck(case: tuple[str, Scenario], tmp_path: Path) -> None:
    expect, sc = case
    d = tmp_path / "run"
    shutil.rmtree(d, ignore_errors=True)
    rep = diagnose_run(write_run_dir(sc, d), plots=False, trace=False)
    v, c, ev = rep["verdict"], rep["confidence"], rep["evidence"]
    assert v == expect, (sc, ev["loop_busy_share"], ev["upstream_busy_share"], ev["per_batch_ms"])
    assert 0.0 <= c <= 1.0
    # the network cause built in: a cap is the link, a slow receiver the receive path, an
    # emitter offering well under the capacity (steady or in bursts) the producer
    want_cause = {"network-capped": "link", "receive": "receive", "network-steady": "producer",
                  "network-bursty": "producer"}.get(sc.name)
    if want_cause:
        assert rep["cause"] == want_cause, (sc, rep["cause_evidence"])


@pytest.mark.parametrize(("name", "detail"), [("network", "link"), ("bursty-network", "producer")])
def test_network_detail_from_the_emit_log(name: str, detail: str, tmp_path: Path) -> None:
    rep = diagnose_run(write_run_dir(SCENARIOS[name], tmp_path / "r"), plots=False, trace=False)
    assert rep["verdict"] == "network"
    assert rep["network_detail"].startswith(detail + ":")


def test_network_detail_unknown_without_emit_log(tmp_path: Path) -> None:
    sc = Scenario(**{**SCENARIOS["network"].__dict__, "emit_log": False})
    rep = diagnose_run(write_run_dir(sc, tmp_path / "r"), plots=False, trace=False)
    assert rep["network_detail"].startswith("unknown:")


def test_receive_path_pushing_back_is_named_the_cause(tmp_path: Path) -> None:
    """A receiver that reads and copies 8 ms per 2 MiB message holds the emitter
    back while Q1 sits empty: verdict network, cause receive, in the first sentence."""
    sc = Scenario(phases=[("unpaced", 1.0, None)], recv_ms=8.0, parse_ms=1, compute_ms=2, h2d_ms=0.5,
                  d2h_ms=0.2, duration_s=1.5)
    rep = diagnose_run(write_run_dir(sc, tmp_path / "r"), plots=False, trace=False)
    assert (rep["verdict"], rep["cause"]) == ("network", "receive")
    ce = rep["cause_evidence"]
    assert ce["emitter_blocked_share"] >= 0.3 and ce["receiver_busy_share"] >= 0.7 and ce["q1_over_80pct_share"] < 0.3
    assert rep["summary"].split(". ")[0].startswith("Verdict network, cause receive")
    assert not any("nothing in the consumer was saturated" in r for r in rep["reasons"])
    assert rep["evidence"]["receiver"]["busy_share"] == ce["receiver_busy_share"]
    # the way out it points to is a setting of the consumer, named as it is written
    assert any("consumer.layout: fast" in r and "--layout fast" in r
               for r in rep["recommendations"])


def test_without_emit_log_the_cause_says_what_cannot_be_told_apart(tmp_path: Path) -> None:
    sc = Scenario(**{**SCENARIOS["network"].__dict__, "emit_log": False})
    rep = diagnose_run(write_run_dir(sc, tmp_path / "r"), plots=False, trace=False)
    assert rep["cause"] == "unknown"
    assert rep["cause_evidence"]["cannot_tell_apart"] == ["producer", "link"]
    assert "no emit log" in rep["cause_evidence"]["why"]
