"""``parse_isolation: process``: decode untrusted bytes in worker processes.

HDF5 decoding runs in native code (libhdf5 through h5py) that can fail hard on
hostile bytes: a segfault or an abort there would end the whole consumer. Here
each message is decoded in a worker process instead, so such a failure costs
that one message (quarantined with a ``crash:`` reason) and a fresh worker, not
the run. A worker that takes longer than ``timeout_s`` on one message is killed
the same way (``timeout:`` reason), so a decode that hangs cannot stall the run.

Protocol over one ``multiprocessing`` pipe per worker: the parent sends the
payload as raw bytes; the worker answers with a small header tuple and, for a
good batch, the detector array's bytes, which the parent reads straight into
host memory from ``host_alloc`` (pinned on CUDA): one copy from the pipe, as
many as the in-process path has from the socket buffer.

Workers are started with ``spawn`` (the consumer has threads and sockets that a
``fork`` would copy in a broken state). Thread-safe: each ``parse`` call takes
a free worker from a pool of ``workers``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from simstream.clock import now

from .decode import DecodeLimits, Decoder, ParsedBatch, ParseError

__all__ = ["IsolatedParser", "WorkerHook"]

#: called in the worker with the payload before it is decoded (tests use it to crash
#: a worker on purpose); must be a module-level function so ``spawn`` can pickle it
WorkerHook = Callable[[bytes], None]

_START_TIMEOUT_S = 60.0  # a spawned worker imports numpy and h5py: allow a slow machine


def _worker_main(conn: Any, fields: dict[str, str], expected: list[str],
                 event_shape: tuple[int, ...] | None, hook: WorkerHook | None,
                 limits: DecodeLimits | None = None) -> None:
    """The worker loop: payload in, (header[, array bytes]) out, until EOF."""
    # the parent handles Ctrl-C; a worker must not die of the terminal's SIGINT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = Decoder(fields, expected, event_shape, None, limits)
    conn.send(("ready",))
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if hook is not None:
            hook(payload)
        try:
            pb = parser.parse(payload)
        except ParseError as e:
            conn.send(("error", str(e), e.rank, e.seq, e.epoch))
            continue
        except Exception as e:  # a defect in the decoder still costs one message only
            conn.send(("error", f"codec: {type(e).__name__}: {e}", None, None, None))
            continue
        data = np.ascontiguousarray(pb.data)
        conn.send(("ok", data.shape, data.dtype.str, pb.rank, pb.seq, pb.events,
                   pb.t_parse_start, pb.t_parse_end, pb.epoch))
        # a flat byte view of the array (no copy)
        conn.send_bytes(data.reshape(-1).view(np.uint8) if data.nbytes else b"")


class _Worker:
    def __init__(self, ctx: Any, args: tuple[Any, ...]) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, *args), daemon=True,
                                name="parse-worker")
        self.proc.start()
        child.close()
        if not self.conn.poll(_START_TIMEOUT_S):
            self.kill()
            raise RuntimeError("a parse worker did not start")
        self.conn.recv()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.join(5.0)
        with contextlib.suppress(Exception):
            self.conn.close()

    def stop(self) -> None:
        # closing our end gives the worker EOF: it returns and exits cleanly
        with contextlib.suppress(Exception):
            self.conn.close()
        self.proc.join(2.0)
        if self.proc.is_alive():
            self.kill()

    def why_dead(self) -> str:
        self.proc.join(1.0)
        code = self.proc.exitcode
        if code is None:
            return "parse worker stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"parse worker killed by {name}"
        return f"parse worker exited with status {code}"


class IsolatedParser:
    """``Parser``'s ``parse`` contract, each decode in a worker process.

    ``fields``, ``expected``, ``event_shape``, ``host_alloc``: as ``pipeline.decode.Decoder``.
    ``workers``: processes (at most that many messages decode at once).
    ``timeout_s``: longest decode of one message before its worker is killed.
    ``hook``: see ``WorkerHook`` (tests only). ``clock``: where the parse times are
    read (this process's; the worker's own times are on another clock).

    ``parse`` raises ``ParseError`` for an unusable message, including one whose
    worker crashed (``crash: ...``) or timed out (``timeout: ...``); the worker is
    replaced before the next message. Raises RuntimeError if no worker can start.
    ``crashes`` and ``timeouts`` count those events. Call ``close()`` at the end.
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        expected: Sequence[str] = ("detector_data",),
        event_shape: Sequence[int] | None = None,
        host_alloc: Callable[[tuple[int, ...], Any], tuple[np.ndarray, Callable[[], None]]]
        | None = None,
        *,
        workers: int = 1,
        timeout_s: float = 30.0,
        hook: WorkerHook | None = None,
        clock: Callable[[], float] = now,
        limits: DecodeLimits | None = None,
    ) -> None:
        self.clock = clock
        self._ctx = multiprocessing.get_context("spawn")
        self._args = (dict(fields), list(expected),
                      tuple(event_shape) if event_shape else None, hook, limits)
        self.host_alloc = host_alloc
        self.timeout_s = timeout_s
        self.crashes = 0
        self.timeouts = 0
        self._lock = threading.Lock()
        self._closed = False
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        try:
            for _ in range(max(1, workers)):
                self._spawn()
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> None:
        w = _Worker(self._ctx, self._args)
        with self._lock:
            self._all.append(w)
        self._idle.put(w)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            if w in self._all:
                self._all.remove(w)
            closed = self._closed
        if not closed:
            self._spawn()

    def parse(self, payload: bytes | bytearray | memoryview) -> ParsedBatch:
        """Decode one message in a worker. Raises ParseError (the quarantine reason)."""
        t0 = self.clock()
        w = self._idle.get()
        healthy = False
        try:
            try:
                w.conn.send_bytes(payload)
                if not w.conn.poll(self.timeout_s):
                    self.timeouts += 1
                    raise ParseError(f"timeout: decode took longer than {self.timeout_s:g} s; "
                                     f"its worker was killed")
                head = w.conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                self.crashes += 1
                raise ParseError(f"crash: {w.why_dead()} while decoding this message") from None
            if head[0] == "error":
                healthy = True
                raise ParseError(head[1], head[2], head[3], head[4])
            _, shape, dtype, rank, seq, events = head[:6]
            dt = np.dtype(dtype)
            release = None
            if self.host_alloc is not None and len(shape) >= 2:
                arr, release = self.host_alloc(tuple(shape), dt)
            else:
                arr = np.empty(shape, dt)
            try:
                if arr.nbytes:
                    w.conn.recv_bytes_into(arr.reshape(-1).view(np.uint8))
                else:
                    w.conn.recv_bytes()
            except BaseException:
                if release is not None:
                    release()
                raise
            healthy = True
            # the worker's own times are on its clock (another process): ours are used
            return ParsedBatch(arr, release, rank, seq, int(events), t0, self.clock(), head[8])
        finally:
            if healthy:
                self._idle.put(w)
            else:
                self._replace(w)

    def close(self) -> None:
        """Stop every worker (each finishes the message it holds first)."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for w in workers:
            w.stop()
