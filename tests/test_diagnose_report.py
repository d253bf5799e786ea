"""report.json (contract keys), report.md, self-contained report.html, the
Perfetto trace and the random-vs-socket comparison."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from simstream.diagnose import compare_report, diagnose_run
from simstream.diagnose.simulate import SCENARIOS, Scenario, write_run_dir
from tests.test_diagnose_evidence import write_handmade

CONTRACT_KEYS = {"verdict", "confidence", "evidence", "recommendations", "data_sources", "summary"}
EVIDENCE_KEYS = {
    "q1", "arrival_rate_bps", "capacity_bps", "per_batch_ms", "parse_vs_compute", "queue_op_vs_compute",
    "gpu_busy_any_stream_share", "gpu_busy_compute_share", "gpu_idle_gaps",
    "gpu_idle_share_waiting_on_empty_q1", "interarrival_cv", "emitter", "consumer_side_only",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bursty_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    d = write_run_dir(SCENARIOS["bursty-network"], tmp_path_factory.mktemp("bursty") / "run")
    return d, diagnose_run(d)


def test_report_json_contract(bursty_report: tuple[Path, dict[str, Any]]) -> None:
    d, rep = bursty_report
    on_disk = json.loads((d / "report.json").read_text())
    assert set(on_disk) >= CONTRACT_KEYS
    assert on_disk["verdict"] in ("network", "parse", "queue", "consumer")
    assert 0.0 <= on_disk["confidence"] <= 1.0
    assert set(on_disk["evidence"]) >= EVIDENCE_KEYS
    q1 = on_disk["evidence"]["q1"]
    assert {"mean_occupancy", "share_empty", "share_under_30pct", "share_over_80pct"} <= set(q1)
    assert {"p50_ms", "p90_ms", "p99_ms", "max_ms", "count"} <= set(on_disk["evidence"]["gpu_idle_gaps"])
    assert on_disk["data_sources"]["emit_log"] is True
    assert isinstance(on_disk["recommendations"], list) and on_disk["recommendations"]
    assert all(isinstance(r, str) for r in on_disk["recommendations"])
    assert isinstance(on_disk["summary"], str) and on_disk["verdict"] in on_disk["summary"]
    assert on_disk["verdict"] == rep["verdict"]


def test_report_html_is_self_contained(bursty_report: tuple[Path, dict[str, Any]]) -> None:
    d, rep = bursty_report
    page = (d / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert f">{rep['verdict']}</span>" in page
    imgs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(imgs) == 5
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from a network


def test_report_md_and_plots(bursty_report: tuple[Path, dict[str, Any]]) -> None:
    d, rep = bursty_report
    md = (d / "report.md").read_text()
    assert md.startswith(f"# Diagnosis: **{rep['verdict']}**")
    for section in ("## Key evidence", "## Recommendations", "## Plots", "## All evidence"):
        assert section in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(x).name for x in links} == {"q1_occupancy.png", "rates.png", "gpu_timeline.png",
                                             "stages.png", "idle_gaps.png"}
    for x in links:
        assert (d / x).read_bytes()[:8] == PNG_MAGIC


def _names(trace: dict[str, Any]) -> tuple[set[str], set[str]]:
    procs = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    threads = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    return procs, threads


def test_trace_parses_and_has_the_tracks(bursty_report: tuple[Path, dict[str, Any]]) -> None:
    d, rep = bursty_report
    trace = json.loads((d / "trace.json").read_text())
    procs, threads = _names(trace)
    assert procs == {"consumer", "inference device", "emitter"}  # no device named in the run
    assert {"receiver", "parser 0", "Q1 put", "Q1 get", "rank 0", "receiver: long arrival gaps",
            "compute idle"} <= threads
    gaps = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"] == "arrival gap"]
    assert len(gaps) == rep["evidence"]["arrival_long_gaps"]["count"] == 2
    assert all(e["dur"] > 1.4e6 for e in gaps)  # the 1.5 s stalls
    assert {f"{s} buf {b}" for s in ("h2d", "compute", "d2h") for b in (0, 1)} <= threads
    evs = trace["traceEvents"]
    n = rep["evidence"]["batches_processed"]
    xs = [e for e in evs if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in xs)
    assert sum(e["name"] == "compute" for e in xs) == n
    assert sum(e["name"] == "send" for e in xs) == len((d / "emit.jsonl").read_text().splitlines())
    arrivals = [e for e in evs if e["ph"] == "i" and e["name"] == "arrival"]
    assert len(arrivals) == rep["evidence"]["messages_received"]
    assert all(e["args"]["nbytes"] > 0 for e in arrivals)
    counters = [e for e in evs if e["ph"] == "C" and e["name"] == "Q1 depth"]
    assert counters and all("depth" in e["args"] for e in counters)


def test_trace_parse_in_loop_and_no_emit_log(tmp_path: Path) -> None:
    base = SCENARIOS["parse-in-loop"]
    sc = Scenario(**{**base.__dict__, "emit_log": False, "seq": False, "duration_s": 1.0})
    d = write_run_dir(sc, tmp_path / "r")
    diagnose_run(d, plots=False)
    procs, threads = _names(json.loads((d / "trace.json").read_text()))
    assert "emitter" not in procs
    assert "inference loop: parse" in threads and "parser 0" not in threads


def test_big_run_trace_is_valid_json(tmp_path: Path) -> None:
    sc = Scenario(phases=[("s", 1.0, 400.0)], compute_ms=2, h2d_ms=0.3, d2h_ms=0.2, parse_ms=4.0,
                  parser_threads=2, duration_s=10.0)
    d = write_run_dir(sc, tmp_path / "r")
    rep = diagnose_run(d, plots=False)
    trace = json.loads((d / "trace.json").read_text())
    assert rep["evidence"]["batches_processed"] > 3000
    assert len(trace["traceEvents"]) > 8 * rep["evidence"]["batches_processed"]
    _, threads = _names(trace)
    assert {"parser 0", "parser 1"} <= threads


def test_tiny_run_still_reports(tmp_path: Path) -> None:
    d = write_handmade(tmp_path / "run")
    rep = diagnose_run(d)
    assert rep["verdict"] == "network"
    assert (d / "report.html").exists() and len(list((d / "plots").glob("*.png"))) == 5


def _random_twin(sc: Scenario) -> Scenario:
    return Scenario(**{**sc.__dict__, "mode": "random", "name": "random", "emit_log": False})


def test_compare_same_inference_stage_gap_before_it(tmp_path: Path) -> None:
    sock = SCENARIOS["bursty-network"]
    r = write_run_dir(_random_twin(sock), tmp_path / "random")
    s = write_run_dir(sock, tmp_path / "socket")
    cmp = compare_report(r, s, tmp_path)
    assert cmp["same_inference_stage"] is True
    assert cmp["answer"].startswith("Yes")
    assert cmp["gap"]["stage"] == "q1_wait_empty_ms" and cmp["gap"]["found"] is True
    assert "waiting on an empty Q1" in cmp["summary"]
    assert cmp["gap"]["throughput_ratio_socket_vs_random"] < 0.5
    assert cmp["random"]["verdict"] == "consumer" and cmp["socket"]["verdict"] == "network"
    for st in ("h2d", "compute", "d2h"):
        assert cmp["stages"][st]["ks"] is not None and cmp["stages"][st]["ks"] <= 0.2
    on_disk = json.loads((tmp_path / "compare.json").read_text())
    assert on_disk["answer"] == cmp["answer"]
    page = (tmp_path / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "Random vs socket" in (tmp_path / "compare.md").read_text()


def test_compare_detects_a_different_inference_stage(tmp_path: Path) -> None:
    sock = SCENARIOS["consumer"]
    slower = Scenario(**{**sock.__dict__, "compute_ms": sock.compute_ms * 1.6})
    r = write_run_dir(_random_twin(sock), tmp_path / "random")
    s = write_run_dir(slower, tmp_path / "socket")
    cmp = compare_report(r, s, tmp_path / "cmp")
    assert cmp["same_inference_stage"] is False
    assert cmp["answer"].startswith("No") and "compute" in cmp["answer"]
    assert cmp["stages"]["compute"]["ks"] > 0.9
    assert cmp["stages"]["h2d"]["same"] is True
    assert cmp["gap"]["stage"] == "compute_ms"


def test_compare_run_with_itself_finds_no_gap(tmp_path: Path) -> None:
    d = write_run_dir(SCENARIOS["consumer"], tmp_path / "run")
    cmp = compare_report(d, d, tmp_path / "cmp")
    assert cmp["same_inference_stage"] is True and cmp["gap"]["found"] is False
    assert "No stage costs the socket run measurably more" in cmp["summary"]


def test_empty_run_reports_without_warnings(tmp_path: Path) -> None:
    """A run where nothing arrived (headers only) still gets a report, a trace and plots."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"received": 0, "processed": 0, "quarantined": 0,
                                                "lost": None, "duplicated": None, "reordered": None}))
    (d / "batches.csv").write_text(
        "index,rank,seq,events,nbytes,t_arrival,t_parse_start,t_parse_end,t_q1_put_start,"
        "t_q1_put_end,t_q1_get_start,t_q1_get_end,buffer,t_h2d_start,t_h2d_end,t_compute_start,"
        "t_compute_end,t_d2h_start,t_d2h_end\n")
    (d / "messages.csv").write_text("index,rank,seq,nbytes,t_arrival,status,reason\n")
    (d / "gpu.csv").write_text("stream,buffer,batch_index,t_start,t_end\n")
    (d / "q1.csv").write_text("t,depth,maxsize\n1795911841.8688304,0,8\n1795911841.9689345,0,8\n")
    rep = diagnose_run(d)
    assert rep["verdict"] == "network" and rep["confidence"] <= 0.3
    assert rep["recommendations"][0].startswith("Nothing arrived")
    assert json.loads((d / "trace.json").read_text())["traceEvents"]
    assert len(list((d / "plots").glob("*.png"))) == 5


def test_trace_threads_hold_no_overlapping_slices(tmp_path: Path) -> None:
    """Perfetto drops overlapping slices on one thread: every thread's slices are disjoint
    (here parsers and puts overlap in time and must land on separate lanes)."""
    sc = Scenario(phases=[("s", 1.0, 300.0)], parse_ms=8.0, parser_threads=3, put_ms=2.0,
                  compute_ms=2.0, duration_s=1.0, q1_maxsize=2)
    d = write_run_dir(sc, tmp_path / "r")
    diagnose_run(d, plots=False)
    trace = json.loads((d / "trace.json").read_text())
    by_thread: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            by_thread.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    assert len(by_thread) >= 10
    for spans in by_thread.values():
        spans.sort()
        assert all(b0 >= a1 - 1e-3 for (_, a1), (b0, _) in zip(spans, spans[1:], strict=False))
    _, threads = _names(trace)
    assert {"parser 0", "parser 1", "parser 2", "Q1 put (2)"} <= threads


def test_without_matplotlib_the_reports_still_come(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "simstream.diagnose.plots", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    d = write_run_dir(SCENARIOS["consumer"], tmp_path / "r")
    rep = diagnose_run(d)
    assert rep["verdict"] == "consumer"
    assert "matplotlib is not installed" in rep["data_sources"]["plots"]
    assert (d / "report.html").exists() and "<img" not in (d / "report.html").read_text()
    assert json.loads((d / "trace.json").read_text())["traceEvents"]


def test_stage_equivalence_uses_practical_margins() -> None:
    """A 10 us shift of a 55 us D2H median is the same stage (under the 0.05 ms margin);
    a 60 % slower compute is not, whatever the KS distance says about either."""
    import numpy as np

    from simstream.diagnose.report import _stage_compare

    rng = np.random.default_rng(0)
    d2h = rng.normal(55.3e-6, 2e-6, 500)
    small = _stage_compare(d2h, d2h + 10.3e-6)
    assert small["ks"] > 0.9 and small["same"] is True and small["median_margin_ms"] == 0.05
    comp = rng.normal(10e-3, 0.3e-3, 500)
    big = _stage_compare(comp, comp * 1.6)
    assert big["same"] is False and big["median_margin_ms"] == pytest.approx(1.0, abs=0.05)
    just = _stage_compare(comp, comp * 1.09)
    assert just["same"] is True
