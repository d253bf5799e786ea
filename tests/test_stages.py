"""The consumer's stages on their own, in fake time: a stage reads the time from
the StageContext's clock, so its end conditions and its stamps are checked here
without sockets, threads waiting on the wall clock, torch or an engine."""

from __future__ import annotations

import io
import socket
import struct
import threading
from typing import Any

import numpy as np
import pytest

from simstream.pipeline.config import consumer_config
from simstream.pipeline.context import POLL_S, StageContext
from simstream.pipeline.decode import Decoder
from simstream.pipeline.inference import STARVATION_UTILISATION, report_progress
from simstream.pipeline.ingest import parse_in_actor, receive
from simstream.pipeline.q1 import LocalQ1
from simstream.pipeline.receiver import RawMessage, open_receiver
from simstream.runner.procs import free_port

T0 = 1_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class ScriptedReceiver:
    """``recv`` plays a script: a message arrives ``gap`` fake seconds after the
    call; once the script is over, every call is a silent poll that costs its
    timeout in fake time."""

    def __init__(self, clock: FakeClock, sizes: list[int], gap: float = 0.5,
                 limit: int = 10) -> None:
        self.clock = clock
        self.script = list(sizes)
        self.gap = gap
        self.limit = limit
        self.polls = 0

    def recv(self, timeout_s: float) -> RawMessage | None:
        self.polls += 1
        if self.script:
            self.clock.advance(self.gap)
            n = self.script.pop(0)
            return RawMessage(b"x" * min(n, self.limit), n, self.clock(),
                              oversize=n > self.limit)
        self.clock.advance(timeout_s)
        return None


class Records:
    """The record calls a stage makes, kept in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.batches = 0

    def arrival(self, t: float) -> None:
        self.calls.append(("arrival", t))

    def sequence(self, index: int, rank: int | None, seq: int | None) -> None:
        self.calls.append(("sequence", index, rank, seq))

    def quarantine(self, index: int, payload: Any, reason: str, **kw: Any) -> None:
        self.calls.append(("quarantine", index, reason, kw["t_arrival"]))

    def snapshot(self) -> dict[str, Any]:
        return {"batches": 8, "samples": 32, "gpu_busy": None}


class HostMemory:
    def host_array(self, shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Any]:
        return np.empty(shape, dtype), lambda: None


def context(clock: FakeClock, q1: Any = None, stripe: tuple[int, int] = (0, 1),
            **settings: Any) -> tuple[StageContext, Records]:
    cfg = consumer_config(section={"device": "cpu", "model": {"kind": "noop"},
                                   "max_message_bytes": 10, **settings})
    records = Records()
    return StageContext(cfg, records, q1, HostMemory(), threading.Event(), stripe=stripe,
                        clock=clock), records


def test_receiving_ends_after_idle_timeout_of_fake_silence() -> None:
    clock = FakeClock()
    ctx, records = context(clock, idle_timeout_s=5)
    rx = ScriptedReceiver(clock, [4, 6])
    got: list[tuple[int, float]] = []
    receive(ctx, rx, lambda msg, index: got.append((index, msg.t_arrival)))
    assert ctx.end_reason == "idle"
    assert got == [(0, T0 + 0.5), (1, T0 + 1.0)]
    assert records.calls == [("arrival", T0 + 0.5), ("arrival", T0 + 1.0)]
    # silence counted from the last message, in polls of POLL_S fake seconds
    assert clock.t - (T0 + 1.0) == pytest.approx(5.0, abs=POLL_S * 1.01)
    assert rx.polls == 2 + round(5.0 / POLL_S)


def test_receiving_ends_at_duration_in_fake_time() -> None:
    clock = FakeClock()
    ctx, _ = context(clock, duration_s=2)
    rx = ScriptedReceiver(clock, [1] * 20)
    got: list[int] = []
    receive(ctx, rx, lambda msg, index: got.append(index))
    # messages at +0.5, +1.0, +1.5, +2.0; the loop looks at the time before each read
    assert ctx.end_reason == "duration"
    assert got == [0, 1, 2, 3]


def test_receiving_ends_at_count_and_quarantines_oversize_with_its_stripe() -> None:
    clock = FakeClock()
    ctx, records = context(clock, stripe=(1, 3), count=3)
    rx = ScriptedReceiver(clock, [4, 50, 6, 7])
    got: list[int] = []
    receive(ctx, rx, lambda msg, index: got.append(index))
    assert ctx.end_reason == "count"
    assert got == [1, 7]  # receiver 1 of 3 numbers its messages 1, 4, 7
    assert ("sequence", 4, None, None) in records.calls
    assert ("quarantine", 4, "oversize: 50 bytes > max_message_bytes 10",
            T0 + 1.0) in records.calls
    assert rx.script == [7]


def test_parse_in_actor_stamps_q1_puts_with_the_stage_clock() -> None:
    clock = FakeClock()
    q1 = LocalQ1(8)
    ctx, _ = context(clock, q1=q1, count=2)
    parse_in_actor(ctx, ScriptedReceiver(clock, [3, 5]))
    items = [q1.get(0.0), q1.get(0.0)]
    assert [(i.host.index, i.host.nbytes, i.host.t_arrival, i.host.t_q1_put_start)
            for i in items] == [(0, 3, T0 + 0.5, T0 + 0.5), (1, 5, T0 + 1.0, T0 + 1.0)]
    assert [bytes(i.raw) for i in items] == [b"xxx", b"xxxxx"]
    assert ctx.put_count == 2


def test_the_decoder_stamps_parse_times_with_its_clock() -> None:
    ticks = iter([T0, T0 + 0.25])
    decoder = Decoder({"detector_data": "detector_data"}, clock=lambda: next(ticks))
    buf = io.BytesIO()
    np.savez(buf, detector_data=np.zeros((2, 4, 4), np.float32))
    pb = decoder.parse(buf.getvalue())
    assert (pb.events, pb.t_parse_start, pb.t_parse_end) == (2, T0, T0 + 0.25)


def test_progress_elapsed_and_starvation_warning_in_fake_time() -> None:
    q1 = LocalQ1(10)
    q1.put(object())
    seen: list[dict[str, Any]] = []
    snap, starved = report_progress(Records(), q1, T0, seen.append, T0 + 4.0)
    assert STARVATION_UTILISATION > 0.1 and starved
    assert (snap["elapsed_s"], snap["samples_per_s"], snap["q1_utilisation"]) == (4.0, 8.0, 0.1)
    assert seen == [snap]
    for _ in range(3):
        q1.put(object())
    assert report_progress(Records(), q1, T0, None, T0 + 1.0)[1] is False  # 40 % full


def test_a_stream_receiver_stamps_arrivals_with_the_injected_clock() -> None:
    clock = FakeClock()
    port = free_port()
    rx = open_receiver("tcp", f"tcp://127.0.0.1:{port}", "bind", 100, clock=clock)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(struct.pack(">Q", 3) + b"abc" + struct.pack(">Q", 500) + bytes(500))
            got: list[RawMessage] = []
            for _ in range(200):  # bounded: 200 polls of 50 ms at most
                m = rx.recv(0.05)
                if m is not None:
                    got.append(m)
                    clock.advance(1.0)
                if len(got) == 2:
                    break
    finally:
        rx.close()
    # over max_message_bytes: skipped by its declared length, its head kept
    assert [(bytes(m.payload), m.nbytes, m.oversize) for m in got] == [
        (b"abc", 3, False), (bytes(500), 500, True)]
    # stamped by the injected clock (both may come off one read, before it advanced)
    assert got[0].t_arrival == T0 and got[1].t_arrival in (T0, T0 + 1.0)
