"""``simstream consume``: bad input exits 2 with one line; a real run over loopback
writes a complete run directory."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simstream.cli import main
from simstream.pipeline.records import BATCH_COLUMNS, GPU_COLUMNS, MESSAGE_COLUMNS, Q1_COLUMNS
from simstream.profile import parse_profile
from simstream.runner.procs import free_port, is_listening
from tests.peers import consume_while_emitting

PROFILE = """\
name: tiny
source:
  batch_size: 4
  shape: [1, 32, 32]
  dtype: float32
  content: random
  format: {fmt}
  fields: {fields}
  total_events: 38
transport: {{kind: zmq, url: "tcp://127.0.0.1:12321"}}
consumer:
  model: {{kind: noop}}
  device: cpu
  queue: {{maxsize: 4, sample_interval_ms: 20}}
"""
H5 = "{detector_data: /data/data, timestamp: /data/timestamp}"
NPZ = "{detector_data: detector_data, timestamp: timestamp}"


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "Traceback" not in err
    return err


def test_bind_and_connect_together(capsys) -> None:
    assert exit_code(["consume", "--bind", "tcp://127.0.0.1:1", "--connect", "tcp://127.0.0.1:2"]) == 2
    assert "--bind and --connect are exclusive" in one_line_error(capsys)
    assert len(capsys.readouterr().err.splitlines()) <= 1


def test_bad_url(capsys) -> None:
    assert exit_code(["consume", "--bind", "http://x"]) == 2
    err = one_line_error(capsys)
    assert "--bind" in err and "tcp://HOST:PORT" in err and "\n" not in err


def test_a_failed_stage_is_one_error_line_and_exit_1(tmp_path: Path, capsys,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage or Ray actor that fails mid-run (not bad input) exits 1 with one line."""
    from simstream.pipeline import consumer
    from simstream.pipeline.engine import StageError

    def failing(*args: object, **kw: object) -> dict[str, object]:
        raise StageError("compute", 3, ValueError("boom"))

    monkeypatch.setattr(consumer, "run_consumer", failing)
    assert exit_code(["consume", "--mode", "random", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "error: compute stage failed on batch 3: ValueError('boom')" in err
    assert "Traceback" not in err


def test_bad_consumer_section_names_the_path(tmp_path: Path, capsys) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\nconsumer: {queue: {maxsize: -1}}\n")
    assert exit_code(["consume", "--profile", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "consumer.queue.maxsize: -1 is not >= 1" in capsys.readouterr().err


def test_a_flag_out_of_range_is_refused_by_click(capsys) -> None:
    assert exit_code(["consume", "--buffers", "0"]) == 2


@pytest.mark.integration
def test_address_in_use(tmp_path: Path, capsys) -> None:
    import zmq

    port = free_port()
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.bind(f"tcp://127.0.0.1:{port}")
    try:
        code = exit_code(["consume", "--bind", f"tcp://127.0.0.1:{port}", "--device", "cpu",
                          "--out", str(tmp_path / "o")])
    finally:
        s.close(linger=0)
        ctx.term()
    assert code == 2
    assert "address in use" in capsys.readouterr().err


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["hdf5", "npz"])
def test_consume_over_zmq_writes_the_run_directory(tmp_path: Path, fmt: str) -> None:
    import zmq

    from simstream.payload import MessageFactory

    text = PROFILE.format(fmt=fmt, fields=H5 if fmt == "hdf5" else NPZ)
    prof_path = tmp_path / "tiny.yaml"
    prof_path.write_text(text)
    profile = parse_profile(__import__("yaml").safe_load(text))
    port = free_port()
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simstream", "consume", "--profile", str(prof_path),
         "--bind", f"tcp://127.0.0.1:{port}", "--idle-timeout", "1", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not is_listening(port):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "consumer never listened"
            time.sleep(0.05)
        factory = MessageFactory(profile.source, rank=0)
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(f"tcp://127.0.0.1:{port}")
        n = factory.total_messages
        assert n == 10
        for seq in range(n):
            if seq == 4:
                continue  # lost on purpose
            push.send(bytes(factory.message(seq).payload))
        push.send(b"corrupt message")
        push.close()
        ctx.term()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    s = json.loads((out / "summary.json").read_text())
    assert (s["received"], s["processed"], s["quarantined"]) == (10, 9, 1)
    assert s["received"] == s["processed"] + s["quarantined"]
    assert (s["lost"], s["duplicated"], s["reordered"]) == (1, 0, 0)
    assert s["samples"] == 8 * 4 + 2  # the last batch is partial
    assert s["end_reason"] == "idle"
    for name, cols in (("messages", MESSAGE_COLUMNS), ("batches", BATCH_COLUMNS),
                       ("q1", Q1_COLUMNS), ("gpu", GPU_COLUMNS)):
        with (out / f"{name}.csv").open() as f:
            assert next(csv.reader(f)) == list(cols)
    assert len(list((out / "quarantine").glob("*.bin"))) == 1
    assert "received 10  processed 9  quarantined 1" in stdout


@pytest.mark.integration
def test_random_mode_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "rnd"
    r = subprocess.run(
        [sys.executable, "-m", "simstream", "consume", "--mode", "random", "--count", "6",
         "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, env=_env(), timeout=120,
        input="",
    )
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["mode"] == "random" and s["processed"] == 6 and s["lost"] is None


@pytest.mark.integration
def test_sigint_finishes_and_writes_the_summary(tmp_path: Path) -> None:
    import signal

    port = free_port()
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simstream", "consume", "--bind", f"tcp://127.0.0.1:{port}",
         "--device", "cpu", "--idle-timeout", "3600", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not is_listening(port):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr  # the README's status for SIGINT
    s = json.loads((out / "summary.json").read_text())
    assert s["end_reason"] == "stopped" and s["received"] == 0
    assert s["lost"] is None


def test_live_progress_panel_renders_snapshots(tmp_path: Path) -> None:
    from simstream.pipeline.cli import _Progress, summary_lines
    from simstream.pipeline.config import consumer_config
    from simstream.pipeline.consumer import run_consumer

    cfg = consumer_config(section={
        "mode": "random", "count": 6, "device": "cpu", "model": {"kind": "noop"},
        "log_every_batches": 2, "random": {"batch_size": 2, "shape": [1, 8, 8]},
    })
    seen: list[dict] = []
    with _Progress(live=True) as progress:
        def on(snap: dict) -> None:
            seen.append(snap)
            progress.update(snap)

        s = run_consumer(cfg, tmp_path, on_progress=on)
    assert [x["batches"] for x in seen if not x.get("final")] == [2, 4, 6]
    lines = summary_lines(s, tmp_path)
    assert lines[1].startswith("received 6  processed 6  quarantined 0  lost None")


@pytest.mark.integration
@pytest.mark.parametrize(("kind", "role"), [("zmq", "client"), ("zmq", "server"),
                                            ("tcp", "client"), ("nng", "client")])
def test_emit_to_consume_every_message_accounted(tmp_path: Path, kind: str, role: str) -> None:
    """`simstream emit` (bundled profile steady) -> `simstream consume` on loopback:
    what the emit log says was delivered is what the consumer received and processed."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "run"
    emit_log = tmp_path / "emit.jsonl"
    consume = [sys.executable, "-m", "simstream", "consume", "--profile", "steady",
               "--transport", kind, "--idle-timeout", "2", "--device", "cpu", "--out", str(out),
               "--connect" if role == "server" else "--bind", url]
    emit = [sys.executable, "-m", "simstream", "emit", "--profile", "steady", "--url", url,
            "--role", role, "--transport", kind, "--count", "25", "--log", str(emit_log),
            "--no-progress"]
    consume_while_emitting(consume, emit, [port] if role == "client" else [],
                           _env(), listen_s=60)
    records = [json.loads(line) for line in emit_log.read_text().splitlines() if line.strip()]
    delivered = [r for r in records if r["outcome"] == "delivered"]
    assert len(delivered) == 25
    s = json.loads((out / "summary.json").read_text())
    assert s["received"] == s["processed"] + s["quarantined"]
    assert (s["received"], s["processed"], s["quarantined"]) == (25, 25, 0)
    assert (s["lost"], s["duplicated"], s["reordered"]) == (0, 0, 0)
    assert s["samples"] == sum(r["events"] for r in delivered)
    with (out / "messages.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["seq"]) for r in rows) == sorted(r["seq"] for r in delivered)
    # one clock for both ends: nothing arrives before its first byte left (1 ms of
    # slack for the two processes' epoch offsets)
    first_byte = {r["seq"]: r["t_first_byte"] for r in delivered}
    for r in rows:
        assert float(r["t_arrival"]) >= first_byte[int(r["seq"])] - 1e-3
