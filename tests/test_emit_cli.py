"""``simstream emit`` on the command line: dry run, flags over the profile, errors, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from simstream.cli import main
from simstream.emitter.cli import build_profile
from simstream.emitter.log import LOG_KEYS, read_log
from simstream.profile import ProfileError, find_profile, load_profile

REPO = Path(__file__).resolve().parent.parent
SMALL = """
name: small
seed: 4
source: {shape: [1, 16, 16], batch_size: 4, total_events: 40, pool: 2}
transport: {kind: zmq, role: client, url: "tcp://127.0.0.1:%(port)d", connect_timeout_s: %(cto)s,
            reconnect_backoff_ms: [50, 200]}
timeline: {phases: [{name: steady, rate_hz: %(rate)s}]}
"""


def small_profile(tmp_path: Path, port: int = 1, cto: float = 1.0, rate: float = 50) -> Path:
    p = tmp_path / "small.yaml"
    p.write_text(SMALL % {"port": port, "cto": cto, "rate": rate})
    return p


def run_main(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return int(rc or 0), out.out, out.err


def test_dry_run_prints_the_schedule_and_opens_no_socket(capsys: Any) -> None:
    rc, out, _ = run_main(["emit", "--profile", "bursty", "--count", "3", "--dry-run"], capsys)
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == 4 and "no socket opened" in lines[-1]
    assert "seq       2" in lines[2] and "t=  0.020000s" in lines[2]


def test_dry_run_json_lines_with_log(tmp_path: Path, capsys: Any) -> None:
    log = tmp_path / "plan.jsonl"
    rc, out, _ = run_main(["emit", "--profile", "profiles/flaky.yaml", "--ranks", "2",
                           "--count", "120", "--dry-run", "--log", str(log)], capsys)
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert rc == 0 and f"{len(recs)} planned attempts written" in out
    assert sum(not r["duplicate"] for r in recs) == 240
    assert {r["rank"] for r in recs} == {0, 1}
    assert [r["t_sched"] for r in recs] == sorted(r["t_sched"] for r in recs)
    assert any(r["faults"] == ["reset"] and r["seq"] == 100 for r in recs)


def test_flags_override_the_profile() -> None:
    p = build_profile("steady", None, {
        "transport.url": "tcp://127.0.0.1:5555", "transport.role": "server",
        "transport.kind": "nng", "transport.ranks": 1, "seed": 9, "stop.messages": 7,
        "stop.duration_s": 2.5})
    assert (p.transport.url, p.transport.role, p.transport.kind, p.transport.ranks) == (
        "tcp://127.0.0.1:5555", "server", "nng", 1)
    assert (p.seed, p.stop.messages, p.stop.duration_s) == (9, 7, 2.5)
    p = build_profile("steady", None, {"transport.ranks": 3})
    assert (p.transport.role, p.transport.ranks) == ("client", 3)


def test_lclstreamer_config_is_a_base_profile(capsys: Any) -> None:
    cfg = REPO / "examples" / "lclstreamer-internal.yaml"
    rc, out, _ = run_main(["emit", "--lclstreamer-config", str(cfg), "--count", "2",
                           "--dry-run"], capsys)
    assert rc == 0 and "2 planned attempts" in out


@pytest.mark.parametrize("argv, needle", [
    (["emit", "--profile", "no-such-profile"], "no such file or bundled profile"),
    (["emit"], "--profile is required"),
    (["emit", "--profile", "steady", "--count", "0"], "0"),
    (["emit", "--profile", "steady", "--url", "http://x"], "transport.url"),
    (["emit", "--profile", "steady", "--loopback", "--url", "tcp://127.0.0.1:5555"], "--loopback"),
    (["emit", "--profile", "steady", "--log", "/no/such/dir/x.jsonl"], "does not exist"),
    (["emit", "--profile", "steady", "--role", "server", "--ranks", "2"], "needs 2 addresses"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], needle: str, capsys: Any) -> None:
    rc, out, err = run_main(argv, capsys)
    assert rc == 2
    assert needle in out + err
    assert "Traceback" not in out + err


def test_invalid_profile_names_the_path(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntimeline: {phases: [{rate_hz: -3}]}\n")
    rc, _, err = run_main(["emit", "--profile", str(bad)], capsys)
    assert rc == 2 and "timeline.phases[0].rate_hz: -3 is not >= 0" in err
    with pytest.raises(ProfileError):
        build_profile(str(bad), None, {})


def test_endless_dry_run_is_refused(tmp_path: Path, capsys: Any) -> None:
    p = tmp_path / "endless.yaml"
    p.write_text("name: endless\nsource: {total_events: null}\n")
    rc, _, err = run_main(["emit", "--profile", str(p), "--dry-run"], capsys)
    assert rc == 2 and "never stops" in err


# --------------------------------------------------------------------------
# with sockets (loopback only)


def simstream(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simstream", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.integration
def test_unreachable_peer_retries_then_exits_1(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = simstream("emit", "--profile", str(small_profile(tmp_path, port=1, cto=1.0)))
    took = time.monotonic() - t0
    assert r.returncode == 1
    assert "retry" in r.stderr and "within 1 s" in r.stderr
    assert "Traceback" not in r.stderr
    assert took < 20


@pytest.mark.integration
def test_address_in_use_is_exit_2(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = simstream("emit", "--profile", str(small_profile(tmp_path, port=port)),
                      "--role", "server")
    assert r.returncode == 2
    assert "address already in use" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.integration
def test_loopback_demo_prints_arrivals_and_the_log_has_every_attempt(tmp_path: Path) -> None:
    log = tmp_path / "emit.jsonl"
    r = simstream("emit", "--profile", str(small_profile(tmp_path)), "--loopback",
                  "--log", str(log))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(" seq ") >= 10
    assert "received 10 messages" in r.stdout and "delivered 10" in r.stdout
    recs = read_log(log)
    assert len(recs) == 10 and all(tuple(x) == LOG_KEYS for x in recs)
    assert all(x["outcome"] == "delivered" for x in recs)


@pytest.mark.integration
def test_sigint_stops_cleanly_with_a_complete_log(tmp_path: Path) -> None:
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVHWM, 1)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    prof = tmp_path / "endless.yaml"
    prof.write_text(SMALL.replace("total_events: 40", "total_events: null")
                    % {"port": port, "cto": 5, "rate": 200})
    log = tmp_path / "emit.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "simstream", "emit", "--profile", str(prof),
                             "--log", str(log)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        got = 0
        deadline = time.monotonic() + 20
        while got < 20 and time.monotonic() < deadline:
            if pull.poll(100):
                pull.recv()
                got += 1
        assert got == 20
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        pull.close(linger=0)
    assert proc.returncode == 130, err
    assert "interrupted" in out and "Traceback" not in err
    recs = read_log(log)
    assert log.read_text().endswith("\n")  # flushed whole lines
    per_seq = sorted(x["seq"] for x in recs)
    assert per_seq == list(range(len(per_seq)))  # nothing forgotten, nothing twice
    assert sum(x["outcome"] == "delivered" for x in recs) >= 20


def test_url_flag_replaces_a_list_of_urls(tmp_path: Path, capsys: Any) -> None:
    p = tmp_path / "two.yaml"
    p.write_text("name: two\nsource: {shape: [1, 8, 8], total_events: 16}\n"
                 "transport: {ranks: 2, urls: ['tcp://127.0.0.1:5001', 'tcp://127.0.0.1:5002']}\n")
    log = tmp_path / "plan.jsonl"
    rc, _, _ = run_main(["emit", "--profile", str(p), "--url", "tcp://127.0.0.1:6000",
                         "--dry-run", "--log", str(log)], capsys)
    assert rc == 0
    urls = {json.loads(x)["url"] for x in log.read_text().splitlines()}
    assert urls == {"tcp://127.0.0.1:6000"}


def test_target_consumer_preflight_warnings() -> None:
    from simstream.emitter.cli import preflight_warnings

    p = load_profile(find_profile("peaknet-1920"))
    assert p.target_consumer == "peaknet-pipeline-ray" and preflight_warnings(p) == []
    bad = p.with_overrides({"source.format": "hdf5", "source.total_events": 801,
                            "transport.role": "server"})
    text = "\n".join(preflight_warnings(bad))
    assert "parses only npz" in text and "holds 1 of 8 events" in text and "binds" in text
    assert preflight_warnings(bad.with_overrides({"target_consumer": "simstream"})) == []


def test_emit_flags_close_and_url_spread_and_the_warnings_on_stderr(capsys: Any) -> None:
    rc, out, err = run_main(["emit", "--profile", "peaknet-1920", "--count", "2", "--role",
                             "server", "--close", "abrupt", "--url-spread", "message",
                             "--dry-run"], capsys)
    assert rc == 0 and "warning: target_consumer peaknet-pipeline-ray" in err
    rc, _, err = run_main(["emit", "--profile", "steady", "--close", "sudden", "--dry-run"],
                          capsys)
    assert rc == 2 and "sudden" in err


def test_dry_run_into_a_pipe_closed_early_exits_quietly() -> None:
    """`emit --dry-run | head -1`: the reader leaving is not an error (exit 0, no traceback)."""
    proc = subprocess.Popen([sys.executable, "-m", "simstream", "emit", "--profile", "bursty", "--count", "5000",
                             "--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"rank")
    proc.stdout.close()
    try:
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, err
    finally:
        proc.kill()
        proc.stderr.close()
        proc.wait(timeout=10)
    assert b"Traceback" not in err and b"BrokenPipe" not in err
