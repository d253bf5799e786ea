"""simstream.probe: the public recorder any consumer calls (docs/probe.md)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from simstream.probe import Probe
from simstream.records import contract as c

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def tick(self, dt: float) -> None:
        self.t += dt


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_stages_become_rows_and_the_summary(tmp_path: Path) -> None:
    clock = FakeClock()
    probe = Probe(tmp_path, clock=clock, device="cpu")
    for seq in (0, 1, 3):  # seq 2 never comes: one lost
        n = probe.message_arrived(b"x" * 100, rank=7, seq=seq, events=4)
        for stage in ("parse", "q1_put", "q1_get", "h2d", "compute", "d2h"):
            with probe.stage(stage, n, buffer=n % 2):
                clock.tick(0.002 if stage == "compute" else 0.001)
    bad = probe.message_arrived(10, rank=7, seq=4)
    probe.message_rejected(bad, "codec: not HDF5", b"junk")
    summary = probe.close()
    assert (summary["received"], summary["processed"], summary["quarantined"]) == (4, 3, 1)
    assert (summary["lost"], summary["duplicated"], summary["reordered"]) == (1, 0, 0)
    assert summary["accounting_ok"] and summary["samples"] == 12 and summary["bytes"] == 300
    assert summary["stage_median_ms"]["compute"] == pytest.approx(2.0)
    assert summary["stages_seen"] == list(c.STAGES)
    assert summary["mode"] == "probe" and summary["device"] == "cpu"
    assert json.loads((tmp_path / c.SUMMARY_JSON).read_text())["processed"] == 3
    batches = _rows(tmp_path / c.BATCHES_CSV)
    assert [b["seq"] for b in batches] == ["0", "1", "3"]
    b0 = batches[0]
    assert float(b0["t_compute_end"]) - float(b0["t_compute_start"]) == pytest.approx(0.002)
    assert b0["buffer"] == "0" and batches[1]["buffer"] == "1"
    gpu = _rows(tmp_path / c.GPU_CSV)
    assert [g["stream"] for g in gpu[:3]] == list(c.GPU_STREAMS)
    msgs = _rows(tmp_path / c.MESSAGES_CSV)
    assert [m["status"] for m in msgs].count("quarantined") == 1
    assert (tmp_path / c.QUARANTINE_DIR / "000003.bin").read_bytes() == b"junk"
    assert set(summary) <= set(c.SUMMARY_KEYS)


def test_a_consumer_without_gpu_copies_finishes_batches_itself(tmp_path: Path) -> None:
    clock = FakeClock()
    probe = Probe(tmp_path, clock=clock)
    n = probe.message_arrived(50)  # rank and seq learnt when parsed
    with probe.stage("parse", n):
        clock.tick(0.001)
    probe.identify(n, 0, 0, events=2)
    probe.stage_started("compute", n)
    probe.stage_ended("compute", n, t=clock() + 0.005)
    probe.batch_done(n)
    summary = probe.close()
    assert summary["processed"] == 1 and summary["samples"] == 2 and summary["lost"] == 0
    row = _rows(tmp_path / c.BATCHES_CSV)[0]
    assert row["t_h2d_start"] == "" and row["t_d2h_end"] == ""
    assert [g["stream"] for g in _rows(tmp_path / c.GPU_CSV)] == ["compute"]
    assert summary["stage_median_ms"]["latency"] == pytest.approx(6.0)


def test_a_batch_waits_for_a_stage_another_thread_still_has_open(tmp_path: Path) -> None:
    probe = Probe(tmp_path, clock=FakeClock())
    n = probe.message_arrived(1, 0, 0)
    probe.stage_started("q1_put", n)  # the receiver is still inside put()
    for stage in ("q1_get", "compute", "d2h"):  # the inference thread finishes the batch
        probe.stage_started(stage, n)
        probe.stage_ended(stage, n)
    assert _rows(tmp_path / c.BATCHES_CSV) == []
    probe.stage_ended("q1_put", n)
    assert len(_rows(tmp_path / c.BATCHES_CSV)) == 1
    assert probe.close()["processed"] == 1


def test_close_writes_computed_batches_and_counts_the_rest_in_flight(tmp_path: Path) -> None:
    probe = Probe(tmp_path, clock=FakeClock())
    done = probe.message_arrived(1, 0, 0)
    probe.stage_started("compute", done)
    probe.stage_ended("compute", done)
    probe.message_arrived(1, 0, 1)  # still queued when the run stopped
    summary = probe.close()
    assert (summary["received"], summary["processed"], summary["quarantined"]) == (2, 1, 0)
    assert not summary["accounting_ok"]
    assert probe.close() is summary  # a second close changes nothing


def test_wrong_use_is_named(tmp_path: Path) -> None:
    probe = Probe(tmp_path, clock=FakeClock())
    n = probe.message_arrived(1)
    with pytest.raises(ValueError, match="stage 'decode' is not one of parse, q1_put"):
        probe.stage_started("decode", n)
    with pytest.raises(ValueError, match="ended but never started"):
        probe.stage_ended("h2d", n)
    with pytest.raises(ValueError, match="batch 5 is not open"):
        probe.stage_started("parse", 5)
    with pytest.raises(ValueError, match="compute stage was never"):
        probe.batch_done(n)
    with pytest.raises(ValueError, match="does not start with one of codec:"):
        probe.message_rejected(n, "bad bytes")
    with pytest.raises(ValueError, match="maxsize 0"):
        probe.sample_queue(lambda: 0, maxsize=0)
    probe.close()


def test_the_queue_sampler_polls_until_close_and_survives_errors(tmp_path: Path) -> None:
    probe = Probe(tmp_path)
    calls = {"n": 0}
    polled = threading.Event()

    def depth() -> int:
        calls["n"] += 1
        if calls["n"] >= 4:
            polled.set()
        if calls["n"] == 2:
            raise RuntimeError("queue actor restarting")
        return 3

    probe.sample_queue(depth, maxsize=4, interval_s=0.005)
    assert polled.wait(timeout=10)
    summary = probe.close()
    rows = _rows(tmp_path / c.Q1_CSV)
    assert len(rows) >= 3 and all((r["depth"], r["maxsize"]) == ("3", "4") for r in rows)
    assert summary["q1"]["sampler_errors"] == 1
    assert "queue actor restarting" in summary["q1"]["sampler_last_error"]
    assert summary["q1"]["share_over_80"] == 0 and summary["q1"]["share_under_30"] == 0
    n_after = calls["n"]
    assert not any(t.name == "probe-q1-sampler" and t.is_alive() for t in threading.enumerate())
    assert calls["n"] == n_after


@pytest.mark.integration
def test_the_example_consumer_records_a_real_emitter_and_diagnose_reads_it(tmp_path: Path) -> None:
    """examples/probe_consumer.py against `simstream emit` on loopback, then `simstream
    diagnose` on its run directory."""
    profile = tmp_path / "tiny.yaml"
    profile.write_text(
        "name: tiny\nseed: 1\n"
        "source: {batch_size: 4, shape: [1, 32, 32], content: random, pool: 4}\n"
        "transport: {kind: zmq, role: client, url: tcp://127.0.0.1:12321, ranks: 1}\n"
        "timeline:\n  phases:\n    - {name: steady, duration_s: 1.0, rate_hz: 200}\n")
    run = tmp_path / "run"
    env_py = [sys.executable]
    consumer = subprocess.Popen(
        [*env_py, str(ROOT / "examples" / "probe_consumer.py"), "--out", str(run),
         "--bind", "tcp://127.0.0.1:*", "--count", "40", "--idle-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert consumer.stdout is not None
        line = consumer.stdout.readline()
        assert line.startswith("listening on tcp://127.0.0.1:"), line
        url = line.split()[-1]
        emit = subprocess.run(
            [*env_py, "-m", "simstream", "emit", "--profile", str(profile), "--url", url,
             "--count", "40", "--log", str(run / c.EMIT_LOG), "--no-progress"],
            capture_output=True, text=True, timeout=60)
        assert emit.returncode == 0, emit.stderr
        out, _ = consumer.communicate(timeout=60)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(timeout=10)
    assert consumer.returncode == 0, out
    assert "40 received, 40 processed, 0 quarantined, lost 0" in out
    summary = json.loads((run / c.SUMMARY_JSON).read_text())
    assert summary["samples"] == 160 and summary["q1"]["samples"] > 0
    diag = subprocess.run([*env_py, "-m", "simstream", "diagnose", str(run), "--json",
                           "--no-plots"], capture_output=True, text=True, timeout=120)
    assert diag.returncode == 0, diag.stderr
    report = json.loads(diag.stdout)
    assert report["verdict"] in ("network", "parse", "queue", "consumer")
    assert report["data_sources"]["emit_log"] is True


def test_the_ray_sketch_is_valid_python_that_uses_the_probe() -> None:
    source = (ROOT / "examples" / "probe_ray.py").read_text()
    compile(source, "probe_ray.py", "exec")
    assert "Probe(" in source and "sample_queue(" in source and "message_arrived(" in source
