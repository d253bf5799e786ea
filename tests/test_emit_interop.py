"""``simstream emit`` against real receivers on loopback: pyzmq PULL, pynng Pull0, plain TCP.

What the receiver sees must be what the profile says and what the emit log says:
bursts and stalls at the planned times, a reset losing exactly its message, a
duplicate repeating a sequence number, a corruption failing to decode.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from simstream.emitter.log import read_log
from simstream.emitter.sink import ReceiveSummary, decode_ids, receive

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


def emit(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "simstream", "emit", "--no-progress", *args],
                       capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert "Traceback" not in r.stderr, r.stderr
    return r


class PullThread:
    """Our pyzmq PULL receiver on a free port, in a thread, until stopped."""

    def __init__(self, idle_timeout_s: float = 1.0) -> None:
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.box: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(idle_timeout_s,), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)
        self.url = self.box["url"]

    def _run(self, idle: float) -> None:
        self.box["summary"] = receive(
            "tcp://127.0.0.1:0", idle_timeout_s=idle, ready=self.ready, stop=self.stop,
            echo=None, max_wait_s=120, on_bound=lambda u: self.box.__setitem__("url", u))

    def finish(self) -> ReceiveSummary:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        summary: ReceiveSummary = self.box["summary"]
        return summary


def test_bursty_profile_bursts_and_stalls_when_the_profile_says(tmp_path: Path) -> None:
    rx = PullThread()
    log = tmp_path / "emit.jsonl"
    r = emit("--profile", "profiles/bursty.yaml", "--url", rx.url, "--duration", "3.0",
             "--log", str(log))
    got = rx.finish()
    assert r.returncode == 0, r.stderr
    recs = [x for x in read_log(log) if x["outcome"] == "delivered"]
    # 2 s of 100 Hz, 0.5 s of silence, then the second burst until the 3 s stop
    assert len(recs) == 250 and len(got.arrivals) == 250
    by_seq = {x["seq"]: x for x in recs}
    planned_gap = by_seq[200]["t_sched"] - by_seq[199]["t_sched"]
    assert planned_gap == pytest.approx(0.51)
    log_gap = by_seq[200]["t_first_byte"] - by_seq[199]["t_first_byte"]
    arrival = {a.seq: a.t for a in got.arrivals}
    seen_gap = arrival[200] - arrival[199]
    # the second burst never starts before its time, in the log and at the receiver
    t0 = by_seq[0]["t_sched"]
    assert by_seq[200]["t_first_byte"] >= by_seq[200]["t_sched"] - 0.002
    # 2.5 s between the bursts' first messages: exact in the schedule; the sends follow
    # it (never early, late by what the emitter's log records on a busy machine), and
    # the receiver sees the sends' spacing, give or take its thread's wake-up delay on
    # a loaded 2-core machine. How late the emitter runs is a benchmark, not a test.
    assert by_seq[200]["t_sched"] - t0 == pytest.approx(2.5, abs=0.02)
    sent = by_seq[200]["t_first_byte"] - by_seq[0]["t_first_byte"]
    late0 = by_seq[0]["t_first_byte"] - t0
    assert sent >= 2.5 - late0 - 0.01
    assert arrival[200] - arrival[0] >= 2.5 - late0 - 0.05
    assert arrival[200] - arrival[0] == pytest.approx(sent, abs=0.25)
    # the stall is where the profile put it. A burst that ran late on a busy machine
    # eats into the silence, never adds to it: the message still being sent at the
    # boundary slows to the stall phase's 10 Mbit/s cap, as on a real link, and
    # finishes when the next burst lifts it. When the burst kept up, the silence is
    # the whole stall.
    if by_seq[199]["t_last_byte"] <= t0 + 2.0 + 0.01:
        assert planned_gap - 0.1 < log_gap < planned_gap + 0.03
        assert seen_gap == pytest.approx(log_gap, abs=0.05)
        big = [(t, g) for t, g in got.gaps() if g > 0.3]
        assert len(big) == 1 and big[0][0] == arrival[200]
        # the first burst holds exactly the first phase's messages (counted up to the
        # stall: a shorter hiccup of a loaded receiver thread may split the burst itself)
        assert sum(a.t < big[0][0] for a in got.arrivals) == 200
    else:
        assert log_gap < planned_gap + 0.03


FAULTS = """
name: faults
seed: 2
source: {shape: [1, 32, 32], batch_size: 4, total_events: 48, pool: 3}
transport: {kind: zmq, role: client, url: "tcp://127.0.0.1:1", reconnect_backoff_ms: [20, 100],
            connect_timeout_s: 5}
timeline: {phases: [{name: steady, rate_hz: 20}]}
faults:
  - {kind: reset, at_message: 3}
  - {kind: duplicate, at_message: 5}
  - {kind: corrupt, at_message: 7, nbytes: 2}
  - {kind: truncate, at_message: 9, fraction: 0.3}
"""


def test_faults_as_the_receiver_sees_them(tmp_path: Path) -> None:
    prof = tmp_path / "faults.yaml"
    prof.write_text(FAULTS)
    rx = PullThread()
    log = tmp_path / "emit.jsonl"
    r = emit("--profile", str(prof), "--url", rx.url, "--log", str(log))
    got = rx.finish()
    assert r.returncode == 0, r.stderr
    seqs = [a.seq for a in got.arrivals if a.error is None]
    # reset (3) and truncate (9) lost exactly their message; 5 came twice; 7 did not decode
    assert seqs == [0, 1, 2, 4, 5, 5, 6, 8, 10, 11]
    bad = [a for a in got.arrivals if a.error is not None]
    assert len(bad) == 1 and "undecodable" in bad[0].error  # type: ignore[operator]
    recs = read_log(log)
    outcome = {(x["seq"], tuple(x["faults"])): x["outcome"] for x in recs}
    assert outcome[(3, ("reset",))] == "cut" and outcome[(9, ("truncate",))] == "cut"
    assert outcome[(7, ("corrupt",))] == "delivered"
    assert outcome[(5, ())] == outcome[(5, ("duplicate",))] == "delivered"
    assert len(recs) == 13  # 12 messages, one of them twice: every attempt logged
    cut = next(x for x in recs if x["seq"] == 9)
    assert 0 < cut["wire_bytes"] < cut["nbytes"]


def test_ranks_each_have_their_own_sequence(tmp_path: Path) -> None:
    prof = tmp_path / "faults.yaml"
    prof.write_text(FAULTS.split("faults:\n")[0])
    rx = PullThread()
    r = emit("--profile", str(prof), "--url", rx.url, "--ranks", "3", "--count", "4")
    got = rx.finish()
    assert r.returncode == 0, r.stderr
    for rank in range(3):
        assert sorted(a.seq for a in got.arrivals if a.rank == rank) == [0, 1, 2, 3]  # type: ignore[type-var]


def test_nng_transport_delivers_to_pynng(tmp_path: Path) -> None:
    pynng = pytest.importorskip("pynng")
    prof = tmp_path / "faults.yaml"
    prof.write_text(FAULTS.split("faults:\n")[0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    got: list[tuple[Any, ...]] = []
    with pynng.Pull0(listen=url, recv_timeout=20_000) as pull:
        def take() -> None:
            for _ in range(5):
                got.append(decode_ids(pull.recv()))

        th = threading.Thread(target=take, daemon=True)
        th.start()
        r = emit("--profile", str(prof), "--url", url, "--transport", "nng", "--count", "5")
        th.join(30)
    assert r.returncode == 0, r.stderr
    assert [g[0] for g in got] == [0, 1, 2, 3, 4] and all(g[3] is None for g in got)


def test_tcp_transport_delivers_length_prefixed_messages(tmp_path: Path) -> None:
    prof = tmp_path / "faults.yaml"
    prof.write_text(FAULTS.split("faults:\n")[0])
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(20)
    url = f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    got: list[tuple[Any, ...]] = []

    def read_exactly(conn: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def take() -> None:
        conn, _ = srv.accept()
        conn.settimeout(20)
        with conn:
            for _ in range(5):
                (n,) = struct.unpack(">Q", read_exactly(conn, 8))
                got.append(decode_ids(read_exactly(conn, n)))

    th = threading.Thread(target=take, daemon=True)
    th.start()
    try:
        r = emit("--profile", str(prof), "--url", url, "--transport", "tcp", "--count", "5")
        th.join(30)
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    assert [g[0] for g in got] == [0, 1, 2, 3, 4] and all(g[3] is None for g in got)


def test_server_role_binds_and_a_connecting_pull_receives(tmp_path: Path) -> None:
    prof = tmp_path / "faults.yaml"
    prof.write_text(FAULTS.split("faults:\n")[0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    box: dict[str, Any] = {}
    th = threading.Thread(target=lambda: box.setdefault("summary", receive(
        url, bind=False, count=6, echo=None, max_wait_s=60)), daemon=True)
    th.start()
    r = emit("--profile", str(prof), "--url", url, "--role", "server", "--count", "6")
    th.join(30)
    assert r.returncode == 0, r.stderr
    assert [a.seq for a in box["summary"].arrivals] == [0, 1, 2, 3, 4, 5]
