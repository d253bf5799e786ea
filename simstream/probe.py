"""A probe any consumer can call to write a run directory that ``simstream diagnose`` reads.

The consumer tells the probe what happened; the probe keeps the books (the same
writer, ``simstream.records.RunRecords``, the bundled consumer uses) and writes
docs/formats.md's files: messages.csv, batches.csv, q1.csv, gpu.csv and, at
``close()``, summary.json. It needs neither torch nor pyzmq (nor numpy)::

    probe = Probe("runs/today")
    probe.sample_queue(lambda: q.qsize(), maxsize=16)     # polled on a thread
    n = probe.message_arrived(msg, rank, seq)             # bytes (or their count)
    with probe.stage("parse", n):
        batch = decode(msg)
    with probe.stage("compute", n):
        model(batch)
    probe.batch_done(n)                                   # or: the end of "d2h"
    probe.close()                                         # writes summary.json

Batches are numbered by ``message_arrived`` (0, 1, ...): one message is one
batch. Its rank and sequence number may be given there or, once parsed, with
``identify``. A batch is finished when its ``d2h`` stage ends or when
``batch_done`` is called; its row is written once no stage of it is still open
(a thread that put it on a queue may record the put's end after another thread
finished it). ``close()`` also finishes every batch whose compute ended. Every call takes an optional ``t`` (Unix seconds, ``simstream.clock``'s
timeline) for times measured elsewhere, e.g. in another process that passed
them along with the batch; without it the probe reads its clock.

Thread-safe: receiver, parser, queue and inference threads may all call it.
Wrong use (an unknown stage, a stage ended that never started, a batch number
never handed out) raises ValueError naming what is wrong.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simstream.clock import now
from simstream.records.contract import QUARANTINE_REASONS, STAGES
from simstream.records.run import BatchTimes, RunRecords

__all__ = ["STAGES", "Probe"]

_GPU_STAGES = ("h2d", "compute", "d2h")


@dataclass
class _Finished:
    """The device side of one batch, as RunRecords.batch_done reads it."""

    events: int
    buffer: int = 0
    t_h2d_start: float | None = None
    t_h2d_end: float | None = None
    t_compute_start: float | None = None
    t_compute_end: float | None = None
    t_d2h_start: float | None = None
    t_d2h_end: float | None = None


@dataclass
class _Batch:
    host: BatchTimes
    fin: _Finished
    device: int = 0
    sequenced: bool = False  # fed to the sequence ledger
    done: bool = False  # batch_done called (the row waits for stages still open)
    running: set[str] = field(default_factory=set)  # stages started and not yet ended


class Probe:
    """Records one consumer run into ``out_dir`` (created if missing).

    ``clock``: a callable giving Unix seconds (default ``simstream.clock.now``;
    inject a fake one in tests). ``device``: how summary.json names the
    inference device.
    """

    def __init__(self, out_dir: str | Path, *, clock: Callable[[], float] = now,
                 device: str = "unknown") -> None:
        self.dir = Path(out_dir)
        self.clock = clock
        self.device = device
        self.records = RunRecords(self.dir)
        self._lock = threading.Lock()
        self._next = 0
        self._open: dict[int, _Batch] = {}
        self._stages_seen: set[str] = set()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._sampler_errors = 0
        self._sampler_last_error: str | None = None
        self._summary: dict[str, Any] | None = None
        self.t_start = clock()

    # -- messages ----------------------------------------------------------------------
    def message_arrived(self, data: bytes | bytearray | memoryview | int, rank: int | None = None,
                        seq: int | None = None, *, events: int = 1,
                        t: float | None = None) -> int:
        """A message came in: ``data`` its bytes (or their count), ``rank``/``seq`` its
        producer rank and sequence number when known (None: the sequence ledger
        counts it as without one). Returns its batch number for the calls below."""
        nbytes = data if isinstance(data, int) else memoryview(data).nbytes
        if nbytes < 0 or events < 0:
            raise ValueError(f"nbytes {nbytes} and events {events} must be >= 0")
        t = self.clock() if t is None else t
        known = rank is not None or seq is not None
        with self._lock:
            n = self._next
            self._next += 1
            self._open[n] = _Batch(BatchTimes(n, rank, seq, events, nbytes, t), _Finished(events),
                                   sequenced=known)
        self.records.arrival(t)
        if known:
            self.records.sequence(n, rank, seq)
        return n

    def identify(self, batch: int, rank: int | None, seq: int | None, *,
                 events: int | None = None) -> None:
        """Batch ``batch``'s rank and sequence number once parsed (None: it carries
        none), and its event count when only now known."""
        with self._lock:
            b = self._get(batch)
            b.host.rank, b.host.seq = rank, seq
            if events is not None:
                b.host.events = b.fin.events = events
            first = not b.sequenced
            b.sequenced = True
        if first:
            self.records.sequence(batch, rank, seq)

    def message_rejected(self, batch: int, reason: str,
                         payload: bytes | bytearray | memoryview | None = None) -> None:
        """The message could not be used (undecodable, wrong shape...): it is
        quarantined (``quarantine/NNNNNN.bin`` with its bytes when given) and
        counted. ``reason`` starts with its category, e.g. ``"codec: bad magic"``."""
        if reason.split(":")[0] not in QUARANTINE_REASONS:
            raise ValueError(f"reason {reason!r} does not start with one of "
                             f"{', '.join(r + ':' for r in QUARANTINE_REASONS)}")
        with self._lock:
            b = self._get(batch)
            del self._open[batch]
        self._sequence(b)
        h = b.host
        self.records.quarantine(batch, payload, reason, nbytes=h.nbytes, t_arrival=h.t_arrival,
                                rank=h.rank, seq=h.seq)

    # -- stages ------------------------------------------------------------------------
    def stage_started(self, name: str, batch: int, *, t: float | None = None,
                      buffer: int | None = None) -> None:
        """Batch ``batch`` entered stage ``name`` (one of STAGES); ``buffer``: the
        device buffer it went to (for the GPU stages of a multi-buffered engine)."""
        self._stamp(name, batch, "start", t, buffer)

    def stage_ended(self, name: str, batch: int, *, t: float | None = None) -> None:
        """Batch ``batch`` left stage ``name``; the end of ``d2h`` finishes the batch."""
        self._stamp(name, batch, "end", t, None)
        if name == "d2h":
            self.batch_done(batch)

    @contextlib.contextmanager
    def stage(self, name: str, batch: int, *, buffer: int | None = None) -> Iterator[None]:
        """``with probe.stage("compute", n):`` brackets the stage (ended on error too)."""
        self.stage_started(name, batch, buffer=buffer)
        try:
            yield
        finally:
            self.stage_ended(name, batch)

    def batch_done(self, batch: int, *, events: int | None = None, device: int = 0) -> None:
        """Batch ``batch`` is through (for a consumer without a ``d2h`` stage): its row
        is written (once its open stages end). ``events``: its event count when only
        now known; ``device``: the inference device (actor) number that ran it."""
        with self._lock:
            b = self._get(batch)
            if b.done:
                raise ValueError(f"batch {batch} is already done")
            if b.fin.t_compute_start is None or b.fin.t_compute_end is None:
                raise ValueError(f"batch {batch} is done but its compute stage was never "
                                 "started and ended: a run directory needs it")
            if events is not None:
                b.host.events = b.fin.events = events
            b.device, b.done = device, True
            ready = self._pop_if_ready(batch, b)
        if ready:
            self._write(b)

    def _get(self, batch: int) -> _Batch:
        b = self._open.get(batch)
        if b is None:
            raise ValueError(f"batch {batch} is not open (never arrived, or already written)")
        return b

    def _pop_if_ready(self, batch: int, b: _Batch) -> bool:
        if b.done and not b.running:
            del self._open[batch]
            return True
        return False

    def _sequence(self, b: _Batch) -> None:
        if not b.sequenced:
            b.sequenced = True
            self.records.sequence(b.host.index, b.host.rank, b.host.seq)

    def _write(self, b: _Batch) -> None:
        self._sequence(b)
        self.records.batch_done(b.host, b.fin, device=b.device)

    def _stamp(self, name: str, batch: int, edge: str, t: float | None,
               buffer: int | None) -> None:
        if name not in STAGES:
            raise ValueError(f"stage {name!r} is not one of {', '.join(STAGES)}")
        t = self.clock() if t is None else t
        with self._lock:
            b = self._get(batch)
            self._stages_seen.add(name)
            target: Any = b.fin if name in _GPU_STAGES else b.host
            if edge == "end":
                if name not in b.running:
                    raise ValueError(f"stage {name!r} of batch {batch} ended but never started")
                b.running.discard(name)
            else:
                b.running.add(name)
            setattr(target, f"t_{name}_{edge}", t)
            if buffer is not None:
                b.fin.buffer = buffer
            ready = self._pop_if_ready(batch, b)
        if ready:
            self._write(b)

    # -- the queue ---------------------------------------------------------------------
    def sample_queue(self, depth: Callable[[], int], maxsize: int, *,
                     interval_s: float = 0.1) -> None:
        """Poll ``depth()`` (the queue's current length) every ``interval_s`` on a
        daemon thread until close(); ``maxsize`` is the queue's capacity. A call that
        raises is counted (summary ``q1.sampler_errors``) and sampling goes on."""
        if maxsize < 1 or interval_s <= 0:
            raise ValueError(f"maxsize {maxsize} must be >= 1 and interval_s {interval_s} > 0")
        if self._sampler is not None:
            raise ValueError("the queue is already sampled: one sampler per probe")

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.queue_depth(depth, maxsize)

        self._sampler = threading.Thread(target=loop, name="probe-q1-sampler", daemon=True)
        self._sampler.start()

    def queue_depth(self, depth: Callable[[], int] | int, maxsize: int, *,
                    t: float | None = None) -> None:
        """One queue sample now (or at ``t``): ``depth`` a number or a callable."""
        try:
            d = int(depth() if callable(depth) else depth)
        except Exception as e:  # noqa: BLE001 - the consumer's callable; counted, not fatal
            self._sampler_errors += 1
            self._sampler_last_error = f"{type(e).__name__}: {e}"
            return
        self.records.q1_sample(self.clock() if t is None else t, d, maxsize)

    # -- the end -----------------------------------------------------------------------
    def close(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Stop the sampler, write every batch whose compute ended, and write
        summary.json (``extra`` adds keys). Returns the summary; a second call
        returns it again."""
        if self._summary is not None:
            return self._summary
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5.0)
        with self._lock:
            left = sorted(self._open.items())
            self._open.clear()
        for _, b in left:
            # a batch whose compute ended is written (stages left open stay empty);
            # one that never got that far was in flight: received, not processed
            if b.fin.t_compute_start is not None and b.fin.t_compute_end is not None:
                self._write(b)
            else:
                self._sequence(b)
        t_end = self.clock()
        q1: dict[str, Any] = {"sampler_errors": self._sampler_errors}
        if self._sampler_last_error:
            q1["sampler_last_error"] = self._sampler_last_error
        self._summary = self.records.close({
            "wall_s": t_end - self.t_start, "t_start": self.t_start, "t_end": t_end,
            "mode": "probe", "device": self.device,
            "stages_seen": [s for s in STAGES if s in self._stages_seen],
            "q1": q1, **(extra or {}),
        })
        return self._summary

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
