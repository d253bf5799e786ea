"""Stateful end-to-end campaign: a live emitter and consumer on loopback, driven by a
hypothesis RuleBasedStateMachine.

Rules: send a segment of messages (each segment is a fresh emitter run: the emitter
restarts between segments, as a producer that is restarted would), optionally with
one fault (reset mid-message, truncate, corrupt, duplicate, stall, slow close) and a
phase change; kill the emitter part-way through a run; restart the consumer.

Invariants after every step:
- every message the emit log says was delivered is accounted for at the consumer:
  processed, or quarantined with a reason (the corrupted ones);
- nothing is processed twice unless a duplicate fault sent it twice (and then the
  consumer's ledger counts it as a duplicate);
- per-rank order is preserved;
- when a consumer ends, summary.json agrees with messages.csv, batches.csv and
  quarantine/ (counts, samples, reasons, and lost/duplicated/reordered recomputed).

Bounded: the examples are a quarter of the settings profile's (``ci``: 10, ``thorough``:
500), each a handful of short segments of tiny messages.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from simstream.emitter.engine import run_emitter
from simstream.pipeline.config import consumer_config
from simstream.pipeline.records import SequenceLedger
from simstream.profile import parse_profile
from simstream.runner.procs import free_port
from tests.peers import ThreadedConsumer

SHAPE = [1, 8, 8]
FAULTS = {
    "reset": {"kind": "reset"},
    "truncate": {"kind": "truncate", "fraction": 0.5},
    "corrupt": {"kind": "corrupt", "nbytes": 4},
    "duplicate": {"kind": "duplicate"},
    "stall": {"kind": "stall", "duration_ms": 30},
    "slow_close": {"kind": "slow_close", "duration_ms": 20},
}
#: what the campaign did, so the test can prove it did something
STEPS: Counter[str] = Counter()
SETTLE_S = 10.0  # longest wait for the consumer to record what was delivered


def rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _int(v: str) -> int | None:
    return int(v) if v not in ("", None) else None


class Consumer(ThreadedConsumer):
    """``run_consumer`` in a thread, bound on ``port``."""

    def __init__(self, out: Path, transport: str, port: int) -> None:
        self.url = f"tcp://127.0.0.1:{port}"
        section = {
            "device": "cpu", "model": {"kind": "noop"}, "buffers": 1, "event_shape": SHAPE,
            "idle_timeout_s": None, "log_every_batches": 10_000, "transport": transport,
            "bind": self.url, "max_message_bytes": 1 << 20,
            "random": {"batch_size": 2, "shape": SHAPE, "dtype": "float32"},
            "queue": {"maxsize": 4, "sample_interval_ms": 50},
        }
        super().__init__(consumer_config(section=section), out, start_s=60.0, stop_s=60.0)
        assert "error" not in self.box, self.box.get("error")

    def messages(self) -> list[dict[str, str]]:
        return rows(self.out / "messages.csv")


def check_summary_against_records(out: Path, s: dict[str, Any]) -> None:
    """summary.json's counters agree with the per-message and per-batch records."""
    on_disk = json.loads((out / "summary.json").read_text())
    msgs = rows(out / "messages.csv")
    batches = rows(out / "batches.csv")
    quarantined = [m for m in msgs if m["status"] == "quarantined"]
    for k in ("received", "processed", "quarantined", "samples", "lost", "duplicated",
              "reordered"):
        assert on_disk[k] == s[k], k
    assert s["received"] == len(msgs) == s["processed"] + s["quarantined"]
    assert s["processed"] == len(batches) == sum(m["status"] == "processed" for m in msgs)
    assert s["quarantined"] == len(quarantined) == len(list((out / "quarantine").glob("*.json")))
    assert s["samples"] == sum(int(b["events"]) for b in batches)
    assert s["quarantine_reasons"] == dict(Counter(m["reason"].split(":")[0] for m in quarantined))
    assert all(m["reason"] for m in quarantined)
    ledger = SequenceLedger()
    for m in sorted(msgs, key=lambda m: int(m["index"])):
        # a restarted emitter is a new epoch: its seq 0 starts a new stream, no duplicate
        ledger.see(_int(m["rank"]), _int(m["seq"]), _int(m.get("epoch", "")))
    assert ledger.counts() == {k: s[k] for k in ("lost", "duplicated", "reordered")}


class EmitterConsumerCampaign(RuleBasedStateMachine):
    """A consumer that lives across steps; an emitter run per step."""

    def __init__(self) -> None:
        super().__init__()
        self.consumer: Consumer | None = None
        self.epoch = 0
        self.segment = 0
        self.seen_rows = 0  # rows of the current consumer's messages.csv already checked
        self.failures: list[str] = []

    @initialize(transport=st.sampled_from(["tcp", "zmq", "nng"]))
    def start(self, transport: str) -> None:
        import tempfile

        self.transport = transport
        self.root = Path(tempfile.mkdtemp(prefix="campaign-"))
        self.port = free_port()
        self._start_consumer()

    def _start_consumer(self) -> None:
        self.epoch += 1
        self.seen_rows = 0
        self.consumer = Consumer(self.root / f"consumer-{self.epoch}", self.transport, self.port)

    def _profile(self, n: int, ranks: int, fault: str | None, at: int, phases: bool,
                 seed: int, endless: bool = False) -> Any:
        assert self.consumer is not None
        timeline: dict[str, Any] = {"phases": [{"name": "steady", "rate_hz": 400}]}
        if phases:
            timeline = {"repeat": True, "phases": [
                {"name": "fast", "duration_s": 0.02, "rate_hz": 500},
                {"name": "slow", "duration_s": 0.03, "rate_hz": 60}]}
        data = {
            "name": f"campaign-{self.segment}", "seed": seed,
            "source": {"batch_size": 2, "shape": SHAPE, "content": "constant",
                       "total_events": None},
            "transport": {"kind": self.transport, "role": "client", "url": self.consumer.url,
                          "ranks": ranks, "connect_timeout_s": 5,
                          "reconnect_backoff_ms": [5, 50]},
            "timeline": timeline,
            "faults": [dict(FAULTS[fault], at_message=at)] if fault else [],
            "stop": {"duration_s": 2.0} if endless else {"messages": n},
        }
        return parse_profile(data, source="campaign")

    def _emit(self, profile: Any, cancel_after_s: float | None = None) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []

        async def main() -> None:
            with trio.move_on_after(cancel_after_s if cancel_after_s is not None else 60):
                await run_emitter(profile, on_record=records.append, drain_timeout_s=5.0)

        trio.run(main)
        self.segment += 1
        STEPS["segments"] += 1
        STEPS["delivered"] += sum(r["outcome"] == "delivered" for r in records)
        for r in records:
            for f in r["faults"]:
                STEPS[f"{f}/{r['outcome']}"] += 1
        return records

    def _account(self, records: list[dict[str, Any]]) -> None:
        """The segment's delivered messages are all at the consumer, each once (twice
        if duplicated), in per-rank order; an interrupted emitter's too (its close is
        a FIN, so what it handed to the kernel still arrives)."""
        assert self.consumer is not None
        delivered = [r for r in records if r["outcome"] == "delivered"]
        others = [r for r in records if r["outcome"] != "delivered"]
        want = len(delivered)
        new = self._settle(want)
        # nothing appears that was not sent; a "lost" attempt may have arrived whole
        assert want <= len(new) <= want + sum(r["outcome"] == "lost" for r in others), (
            f"{self.transport}: {want} delivered, {len(new)} recorded; "
            f"records={[(r['rank'], r['seq'], r['faults'], r['outcome']) for r in records]} "
            f"rows={[(m['rank'], m['seq'], m['status'], m['reason'][:40]) for m in new]}")
        processed = Counter((_int(m["rank"]), _int(m["seq"])) for m in new
                            if m["status"] == "processed")
        quarantined = [m for m in new if m["status"] == "quarantined"]
        assert all(m["reason"] for m in quarantined)
        clean = Counter((r["rank"], r["seq"]) for r in delivered if "corrupt" not in r["faults"])
        corrupt = [r for r in delivered if "corrupt" in r["faults"]]
        missing = clean - processed
        assert not missing, f"{self.transport}: delivered but not processed: {sorted(missing)}"
        extra = processed - clean
        lost_ok = Counter((r["rank"], r["seq"]) for r in others if r["outcome"] == "lost")
        assert not (extra - lost_ok), f"processed but never delivered: {sorted(extra)}"
        assert len(quarantined) >= len(corrupt) and all(
            m["reason"].split(":")[0] in ("codec", "missing field", "shape", "batch")
            for m in quarantined), [m["reason"] for m in quarantined]
        # per-rank order: seqs of one rank never go backwards within a segment
        by_rank: dict[int | None, list[int]] = {}
        for m in sorted(new, key=lambda m: int(m["index"])):
            if m["status"] == "processed":
                by_rank.setdefault(_int(m["rank"]), []).append(_int(m["seq"]) or 0)
        for rank, seqs in by_rank.items():
            assert seqs == sorted(seqs), f"rank {rank} reordered: {seqs}"

    def _settle(self, want: int) -> list[dict[str, str]]:
        """The consumer's new rows once ``want`` have appeared (or SETTLE_S passed)."""
        assert self.consumer is not None
        deadline = time.monotonic() + SETTLE_S
        while True:
            new = self.consumer.messages()[self.seen_rows:]
            if len(new) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        time.sleep(0.05)
        new = self.consumer.messages()[self.seen_rows:]
        self.seen_rows += len(new)
        return new

    @rule(n=st.integers(1, 6), ranks=st.integers(1, 2),
          fault=st.sampled_from([*sorted(FAULTS), None]), at=st.integers(0, 5),
          phases=st.booleans(), seed=st.integers(0, 1000))
    def send(self, n: int, ranks: int, fault: str | None, at: int, phases: bool,
             seed: int) -> None:
        at %= n  # the fault strikes a message of the segment
        records = self._emit(self._profile(n, ranks, fault, at, phases, seed))
        if fault == "duplicate":
            dups = [r for r in records if "duplicate" in r["faults"]]
            assert dups, "a duplicate fault left no second attempt in the emit log"
        self._account(records)

    @rule(after_s=st.floats(0.02, 0.2), seed=st.integers(0, 1000))
    def kill_emitter_mid_run(self, after_s: float, seed: int) -> None:
        records = self._emit(self._profile(0, 1, None, 0, False, seed, endless=True),
                             cancel_after_s=after_s)
        self._account(records)

    @precondition(lambda self: self.consumer is not None)
    @rule()
    def restart_consumer(self) -> None:
        assert self.consumer is not None
        summary = self.consumer.stop()
        check_summary_against_records(self.consumer.out, summary)
        STEPS["consumer restarts"] += 1
        self._start_consumer()

    @invariant()
    def consumer_alive(self) -> None:
        if self.consumer is not None:
            assert "error" not in self.consumer.box, self.consumer.box.get("error")
            assert self.consumer.thread.is_alive()

    def teardown(self) -> None:
        if self.consumer is not None:
            summary = self.consumer.stop()
            check_summary_against_records(self.consumer.out, summary)
            self.consumer = None


@pytest.mark.integration
@pytest.mark.timeout(1800)  # the thorough profile (500 examples) takes ~6-7 min here
def test_nothing_delivered_is_lost_duplicated_or_reordered() -> None:
    base = settings()
    STEPS.clear()
    run_state_machine_as_test(EmitterConsumerCampaign, settings=settings(
        base, max_examples=max(2, base.max_examples // 4), stateful_step_count=8,
        deadline=None, suppress_health_check=[HealthCheck.too_slow]))
    print(dict(STEPS))
    assert STEPS["segments"] > 0 and STEPS["delivered"] > 0


@pytest.mark.integration
def test_an_interrupted_emitter_keeps_what_it_delivered() -> None:
    """A peer that reads slowly, an emitter interrupted mid-run: every message the
    emit log calls delivered must reach the peer."""
    import socket
    import struct

    listener = socket.create_server(("127.0.0.1", 0))
    # a small receive buffer (set before accept, so the window is small from the
    # start) leaves delivered messages queued in the emitter's kernel send buffer
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = listener.getsockname()[1]
    data = {
        "name": "interrupted", "source": {"batch_size": 2, "shape": SHAPE,
                                          "content": "constant", "total_events": None},
        "transport": {"kind": "tcp", "role": "client", "url": f"tcp://127.0.0.1:{port}",
                      "connect_timeout_s": 5},
        "timeline": {"phases": [{"name": "fast", "rate_hz": 2000}]},
        "stop": {"duration_s": 5.0},
    }
    profile = parse_profile(data)
    records: list[dict[str, Any]] = []
    conn_box: list[socket.socket] = []
    accepter = threading.Thread(target=lambda: conn_box.append(listener.accept()[0]))
    accepter.start()

    async def main() -> None:
        with trio.move_on_after(0.3):
            await run_emitter(profile, on_record=records.append, drain_timeout_s=1.0)

    try:
        trio.run(main)
        accepter.join(5)
        conn = conn_box[0]
        got = bytearray()
        conn.settimeout(2.0)
        while True:
            try:
                chunk = conn.recv(1 << 16)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        conn.close()
    finally:
        listener.close()
    frames, pos = 0, 0
    while pos + 8 <= len(got):
        (n,) = struct.unpack(">Q", got[pos:pos + 8])
        if pos + 8 + n > len(got):
            break
        frames += 1
        pos += 8 + n
    delivered = sum(r["outcome"] == "delivered" for r in records)
    assert delivered > 0
    assert frames >= delivered, f"{delivered} delivered per the emit log, {frames} arrived"
