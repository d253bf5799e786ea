"""Evidence from a run directory: exact figures on a hand-built run, the
interval maths, the loader's tolerance, and the emitter alignment on
simulated runs whose cause is known."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simstream.diagnose.evidence import (
    _coverage,
    compute_evidence,
    interval_union,
    ks_statistic,
    max_concurrency,
)
from simstream.diagnose.load import NotARunDir, load_run, read_numeric_csv
from simstream.diagnose.simulate import SCENARIOS, Scenario, write_run_dir
from simstream.diagnose.verdict import decide

BASE = 1_700_000_000.0
HEADER = ("index,rank,seq,events,nbytes,t_arrival,t_parse_start,t_parse_end,t_q1_put_start,"
          "t_q1_put_end,t_q1_get_start,t_q1_get_end,buffer,t_h2d_start,t_h2d_end,"
          "t_compute_start,t_compute_end,t_d2h_start,t_d2h_end")

# Three batches 100 ms apart: parse 10 ms before Q1, put 1 ms, the loop waits
# on an empty Q1 until each put, get overhead 1 ms, then H2D 2, compute 10, D2H 1 ms.
ROWS = [
    # arr, p0, p1, put0, put1, get0, get1, h0, h1, c0, c1, d0, d1
    (0.000, 0.000, 0.010, 0.010, 0.011, 0.000, 0.012, 0.012, 0.014, 0.014, 0.024, 0.024, 0.025),
    (0.100, 0.100, 0.110, 0.110, 0.111, 0.025, 0.112, 0.112, 0.114, 0.114, 0.124, 0.124, 0.125),
    (0.200, 0.200, 0.210, 0.210, 0.211, 0.125, 0.212, 0.212, 0.214, 0.214, 0.224, 0.224, 0.225),
]


def _t(x: float) -> str:
    return f"{BASE + x:.6f}"


def write_handmade(d: Path, *, q1: bool = True, gpu: bool = True, messages: bool = True,
                   seq: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for i, r in enumerate(ROWS):
        a, p0, p1, u0, u1, g0, g1, h0, h1, c0, c1, d0, d1 = r
        rank, sq = ("0", str(i)) if seq else ("", "")
        lines.append(",".join([str(i), rank, sq, "8", "1000", _t(a), _t(p0), _t(p1), _t(u0), _t(u1),
                               _t(g0), _t(g1), str(i % 2), _t(h0), _t(h1), _t(c0), _t(c1), _t(d0), _t(d1)]))
    (d / "batches.csv").write_text("\n".join(lines) + "\n")
    (d / "summary.json").write_text(json.dumps({"received": 3, "processed": 3, "quarantined": 0,
                                                "lost": 0, "duplicated": 0, "reordered": 0}))
    if messages:
        (d / "messages.csv").write_text("index,rank,seq,nbytes,t_arrival,status,reason\n" + "".join(
            f"{i},0,{i},1000,{_t(r[0])},processed,\n" for i, r in enumerate(ROWS)))
    if q1:
        (d / "q1.csv").write_text("t,depth,maxsize\n" + "".join(
            f"{_t(0.05 * k)},0,4\n" for k in range(5)))
    if gpu:
        rows = ["stream,buffer,batch_index,t_start,t_end"]
        for i, r in enumerate(ROWS):
            rows += [f"h2d,{i % 2},{i},{_t(r[7])},{_t(r[8])}", f"compute,{i % 2},{i},{_t(r[9])},{_t(r[10])}",
                     f"d2h,{i % 2},{i},{_t(r[11])},{_t(r[12])}"]
        (d / "gpu.csv").write_text("\n".join(rows) + "\n")
    return d


def test_handmade_run_exact_figures(tmp_path: Path) -> None:
    f = compute_evidence(load_run(write_handmade(tmp_path / "run"))).to_json()
    A = pytest.approx
    assert f["span_s"] == A(0.225, abs=1e-5)
    assert f["parse_location"] == "receiver"
    assert f["parser_threads_observed"] == 1
    assert f["loop_wait_on_empty_q1_s"] == A(0.011 + 0.086 + 0.086, abs=1e-5)
    assert f["loop_busy_share"] == A(1 - 0.183 / 0.225, abs=1e-4)
    assert f["upstream_busy_share"] == A(0.033 / 0.225, abs=1e-4)
    assert f["gpu_busy_compute_share"] == A(0.030 / 0.225, abs=1e-4)
    assert f["gpu_busy_any_stream_share"] == A(0.039 / 0.225, abs=1e-4)
    gaps = f["gpu_idle_gaps"]
    assert gaps["count"] == 2
    assert gaps["p50_ms"] == A(90.0, abs=0.01) and gaps["max_ms"] == A(90.0, abs=0.01)
    assert f["gpu_idle_s"] == A(0.195, abs=1e-5)
    assert f["gpu_idle_share_waiting_on_empty_q1"] == A(0.183 / 0.195, abs=1e-4)
    pb = f["per_batch_ms"]
    assert pb["parse"] == A(10.0, abs=0.01)
    assert pb["q1_get_overhead"] == A(1.0, abs=0.01)
    assert pb["q1_put_overhead"] == A(1.0, abs=0.01)
    assert (pb["h2d"], pb["compute"], pb["d2h"]) == (A(2.0, abs=0.01), A(10.0, abs=0.01), A(1.0, abs=0.01))
    # the next get never starts before this batch's D2H ends: copies and kernels run in turn
    assert f["gpu_streams_overlap"] is False
    assert f["capacity_bps"] == A(1 / 0.014, rel=1e-3)
    assert f["arrival_rate_bps"] == A(10.0, rel=1e-4)
    assert f["interarrival_cv"] == A(0.0, abs=1e-6)
    assert f["parse_vs_compute"] == A(1.0, abs=0.01)
    assert f["queue_op_vs_compute"] == A(0.2, abs=0.01)
    q = f["q1"]
    assert (q["maxsize"], q["share_empty"], q["share_under_30pct"], q["share_over_80pct"]) == (4, 1.0, 1.0, 0.0)
    assert f["starvation"] is True
    assert f["consumer_side_only"] is True and f["emitter"] is None


def test_missing_optional_files_rebuild_from_batches(tmp_path: Path) -> None:
    run = load_run(write_handmade(tmp_path / "run", q1=False, gpu=False, messages=False, seq=False))
    assert run.sources["q1"] is False and run.sources["gpu"] is False and run.sources["emit_log"] is False
    assert run.has_seq is False
    f = compute_evidence(run).to_json()
    assert f["q1"]["source"] == "batches.csv (rebuilt)"
    assert f["gpu_source"] == "batches.csv"
    assert f["gpu_busy_compute_share"] == pytest.approx(0.030 / 0.225, abs=1e-4)
    assert f["messages_received"] == 3
    assert f["sequence_numbers"] is False


@pytest.mark.parametrize("missing", [["batches.csv"], ["summary.json", "batches.csv"]])
def test_not_a_run_dir_names_what_is_missing(tmp_path: Path, missing: list[str]) -> None:
    d = write_handmade(tmp_path / "run")
    for m in missing:
        (d / m).unlink()
    with pytest.raises(NotARunDir) as e:
        load_run(d)
    for m in missing:
        assert m in str(e.value)


def test_a_run_cut_short_is_rebuilt_from_its_csv_files(tmp_path: Path) -> None:
    """A consumer killed before summary.json: the counts come from the rows it flushed."""
    from simstream.diagnose import diagnose_run

    d = write_handmade(tmp_path / "run")
    (d / "summary.json").unlink()
    run = load_run(d)
    assert run.cut_short and run.summary["cut_short"]
    assert run.summary["received"] == 3 and run.summary["processed"] == 3
    assert run.summary["batches"] == 3 and run.summary["samples"] == 24
    assert run.summary["accounting_ok"] is False
    assert "cut short" in run.sources["summary"]
    report = diagnose_run(d, plots=False, trace=False)
    assert report["cut_short"] and report["summary"].startswith("The run was cut short")
    assert "cut short" in (d / "report.md").read_text()


def test_bad_summary_is_a_usage_error(tmp_path: Path) -> None:
    d = write_handmade(tmp_path / "run")
    (d / "summary.json").write_text("{not json")
    with pytest.raises(NotARunDir, match="summary.json"):
        load_run(d)


def test_read_numeric_csv_empty_cells_and_column_order(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("b,a,c\n,1.5,\n2,,3\r\n,,\n")
    cols = read_numeric_csv(p)
    assert list(cols) == ["b", "a", "c"]
    np.testing.assert_array_equal(cols["a"], [1.5, np.nan, np.nan])
    np.testing.assert_array_equal(cols["b"], [np.nan, 2.0, np.nan])
    np.testing.assert_array_equal(cols["c"], [np.nan, 3.0, np.nan])


def test_interval_union_and_coverage() -> None:
    s, e = interval_union(np.array([5.0, 0.0, 1.0, 8.0, np.nan]), np.array([6.0, 2.0, 3.0, 9.0, 1.0]))
    np.testing.assert_array_equal(s, [0.0, 5.0, 8.0])
    np.testing.assert_array_equal(e, [3.0, 6.0, 9.0])
    cov = _coverage((s, e), np.array([0.0, 2.5, 6.0, -1.0]), np.array([10.0, 5.5, 8.0, 0.0]))
    np.testing.assert_allclose(cov, [5.0, 1.0, 0.0, 0.0])


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 10)), min_size=1, max_size=30))
def test_interval_union_preserves_measure_of_disjoint_cover(ivs: list[tuple[float, float]]) -> None:
    starts = np.array([a for a, _ in ivs])
    ends = starts + np.array([d for _, d in ivs])
    s, e = interval_union(starts, ends)
    assert np.all(s[1:] > e[:-1])  # disjoint and sorted
    # every point of the inputs is covered by the union and vice versa (on a grid)
    grid = np.linspace(0, 110, 2001)
    inside_in = ((grid[:, None] >= starts) & (grid[:, None] < ends)).any(axis=1)
    inside_un = ((grid[:, None] >= s) & (grid[:, None] < e)).any(axis=1)
    assert np.array_equal(inside_in, inside_un)


def test_ks_statistic_known_values() -> None:
    a = np.array([1.0, 2.0, 3.0])
    assert ks_statistic(a, a.copy()) == 0.0
    assert ks_statistic(a, a + 10) == 1.0
    assert ks_statistic(a, np.array([2.0, 3.0, 4.0])) == pytest.approx(1 / 3)
    assert ks_statistic(a, np.array([np.nan])) is None


@pytest.mark.parametrize(("put_s", "verdict"), [(0.85 * 0.225, "queue"), (0.85 * 0.225 - 0.001, "network")])
def test_one_thread_putting_is_saturated_by_its_own_clock(tmp_path: Path, put_s: float, verdict: str) -> None:
    """The consumer's Q1 counters (summary.json q1) time each whole put call on the
    putting thread's own clock: a Ray shard stamps the batch's entry mid-call, so the
    per-batch intervals (1 ms each here) miss the answer's way back. One feeder puts
    for all parsers: its share of the run is the put time over one thread, cut-off 0.85."""
    d = write_handmade(tmp_path / "run")
    s = json.loads((d / "summary.json").read_text())
    s["q1"] = {"puts": 3, "put_s": put_s + 0.02, "blocked_s": 0.02, "put_mean_ms": (put_s + 0.02) / 3 * 1e3}
    (d / "summary.json").write_text(json.dumps(s))
    f = compute_evidence(load_run(d))
    up = f.figures.upstream
    assert up.time_s.put_source.startswith("summary.json")
    assert up.time_s.put_threads == 1
    assert up.time_s.q1_put_overhead == pytest.approx(put_s, abs=1e-4)
    assert up.put_busy_share == pytest.approx(put_s / 0.225, abs=1e-3)
    # the parser thread's parse (30 ms) plus the puts, over one parser thread, is larger still
    assert up.busy_share == pytest.approx((0.030 + put_s) / 0.225, abs=1e-3)
    # the loop's get waits say it starved (busy 19 %); the putting alone decides
    assert decide(replace(f.figures, upstream=replace(up, busy_share=up.put_busy_share)))[0] == verdict


def test_without_q1_counters_the_put_cost_comes_from_the_batches(tmp_path: Path) -> None:
    f = compute_evidence(load_run(write_handmade(tmp_path / "run"))).figures.upstream
    assert f.time_s.put_source == "batches.csv"
    assert f.time_s.q1_put_overhead == pytest.approx(0.003, abs=1e-5)
    assert f.put_busy_share == pytest.approx(0.003 / 0.225, abs=1e-4)


def test_two_loops_waiting_at_once_count_their_waits_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two inference actors share Q1: the second loop starts its get at 30 ms, while the
    first is still waiting for batch 1. The loop busy share takes the waits as a union
    (contract BUSY_FIGURES), never below 0."""
    rows = list(ROWS)
    rows[2] = rows[2][:5] + (0.030,) + rows[2][6:]
    monkeypatch.setattr(__name__ + ".ROWS", rows)
    f = compute_evidence(load_run(write_handmade(tmp_path / "run"))).to_json()
    assert f["loop_wait_on_empty_q1_s"] == pytest.approx(0.011 + (0.211 - 0.025), abs=1e-5)
    assert f["loop_busy_share"] == pytest.approx(1 - 0.197 / 0.225, abs=1e-4)


def test_max_concurrency() -> None:
    assert max_concurrency(np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == 1  # touching
    assert max_concurrency(np.array([0.0, 0.5, 0.6, 5.0]), np.array([1.0, 1.5, 0.7, 6.0])) == 3


def test_parse_in_loop_is_located_in_the_loop(tmp_path: Path) -> None:
    f = compute_evidence(load_run(write_run_dir(SCENARIOS["parse-in-loop"], tmp_path / "r"))).to_json()
    assert f["parse_location"] == "inference_loop"
    assert f["per_batch_ms"]["parse_in_loop"] == pytest.approx(40.0, rel=0.05)
    assert f["parse_share_of_loop"] > 0.8
    assert f["loop_busy_share"] > 0.95


def test_parser_threads_are_counted(tmp_path: Path) -> None:
    sc = Scenario(name="threads", phases=[("s", 1.0, 200.0)], parse_ms=15, parser_threads=3,
                  compute_ms=2, duration_s=1.5, jitter=0.0)
    f = compute_evidence(load_run(write_run_dir(sc, tmp_path / "r"))).to_json()
    assert f["parser_threads_observed"] == 3
    assert f["upstream_busy_share"] > 0.9  # 3 threads x 15 ms = 200/s is what arrives: saturated


def test_bursty_long_gaps_coincide_with_emitter_silence(tmp_path: Path) -> None:
    f = compute_evidence(load_run(write_run_dir(SCENARIOS["bursty-network"], tmp_path / "r"))).to_json()
    lg = f["arrival_long_gaps"]
    assert lg["count"] == 2  # 6 s of 1 s bursts + 1.5 s stalls: two stalls inside the run
    assert lg["longest_s"] == pytest.approx(1.5, abs=0.05)
    assert f["interarrival_cv"] > 2
    em = f["emitter"]
    assert em["long_gaps"]["share_emitter_silent"] == 1.0
    assert em["long_gaps"]["share_bytes_in_flight"] == 0.0
    assert em["blocked_share"] == 0.0
    assert em["achieved_vs_emitted_bytes"] == pytest.approx(1.0, abs=0.05)
    assert em["last_byte_to_arrival"]["p50_ms"] == pytest.approx(0.2, abs=0.01)


def test_bandwidth_cap_shows_as_a_busy_link(tmp_path: Path) -> None:
    f = compute_evidence(load_run(write_run_dir(SCENARIOS["network"], tmp_path / "r"))).to_json()
    em = f["emitter"]
    assert em["sending_share"] > 0.95
    assert em["send_rate_while_sending_Bps"] * 8 == pytest.approx(80e6, rel=0.01)
    assert em["blocked_share"] < 0.01
    assert f["arrival_rate_bps"] == pytest.approx(80e6 / 8 / (2 * 1024 * 1024 + 64), rel=0.03)


def test_backpressure_shows_as_a_blocked_emitter(tmp_path: Path) -> None:
    f = compute_evidence(load_run(write_run_dir(SCENARIOS["consumer"], tmp_path / "r"))).to_json()
    assert f["emitter"]["blocked_share"] > 0.3
    assert f["q1"]["share_over_80pct"] > 0.8
    assert f["gpu_busy_compute_share"] > 0.9


def test_torn_emit_log_line_is_skipped(tmp_path: Path) -> None:
    d = write_run_dir(SCENARIOS["bursty-network"], tmp_path / "r")
    text = (d / "emit.jsonl").read_text()
    (d / "emit.jsonl").write_text(text + '{"rank": 0, "seq": 99')
    run = load_run(d)
    assert run.emit is not None and run.emit["t_sched"].size == text.count("\n")


def test_several_inference_devices_busy_share_is_each_ones_own(tmp_path: Path) -> None:
    """gpu.csv with a device column (Ray inference actors): the compute busy share is
    the mean of each device's own, not the share of time any device was busy."""
    d = write_handmade(tmp_path / "run")
    lines = (d / "gpu.csv").read_text().splitlines()
    # batch i ran on device i % 2
    rows = [lines[0] + ",device"] + [f"{ln},{int(ln.split(',')[2]) % 2}" for ln in lines[1:]]
    (d / "gpu.csv").write_text("\n".join(rows) + "\n")
    f = compute_evidence(load_run(d)).to_json()
    per = f["gpu_busy_compute_share_by_device"]
    assert len(per) == 2 and sum(per) == pytest.approx(0.030 / 0.225, abs=1e-3)
    assert f["gpu_busy_compute_share"] == pytest.approx(0.030 / 0.225 / 2, abs=1e-3)
    # one device only: the share as before, no per-device figure
    single = compute_evidence(load_run(write_handmade(tmp_path / "one"))).to_json()
    assert "gpu_busy_compute_share_by_device" not in single


def test_blocked_share_is_per_rank_and_never_over_one() -> None:
    """A rank's scheduler waits for SNDHWM room while its writer waits inside a send
    of an earlier message: the two overlap, so a rank's blocked time is the larger
    sum, and the share is averaged over ranks (never above 1)."""
    from simstream.diagnose.evidence import _blocked_share

    nan = float("nan")
    e = {
        "rank": np.array([0.0, 0.0, 1.0, 1.0]),
        "hwm_wait_s": np.array([0.4, 0.5, 0.1, 0.0]),
        "socket_wait_s": np.array([0.6, 0.6, 0.2, 0.1]),
        "blocked_s": np.array([1.0, 1.1, 0.3, 0.1]),
    }
    sent = np.ones(4, dtype=bool)
    # rank 0: max(0.9, 1.2) capped at the 1 s span = 1.0; rank 1: max(0.1, 0.3) = 0.3
    assert _blocked_share(e, sent, 1.0) == pytest.approx((1.0 + 0.3) / 2)
    # an emit log from before the split: blocked_s, still per rank and capped
    old = {**e, "hwm_wait_s": np.full(4, nan), "socket_wait_s": np.full(4, nan)}
    assert _blocked_share(old, sent, 2.0) == pytest.approx((2.0 / 2 + 0.4 / 2) / 2)
    # messages never sent do not count
    assert _blocked_share(e, np.array([False, True, False, True]), 1.0) == pytest.approx(
        (0.6 + 0.1) / 2)
