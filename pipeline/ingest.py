"""The ingest stage: messages (or random batches) into Q1, every one accounted.

- ``receive``: the receiver loop, until ``count``, ``duration_s``, ``idle_timeout_s``
  of silence after the first message, or stop; stamps arrivals, quarantines
  oversize messages, hands the rest to ``on_message``.
- ``parse_in_receiver``: the receiver hands each message to a pool of
  ``parser_threads`` parsers (production's layout today); a feeder puts the
  results into Q1 in arrival order, or quarantines the failures. At most ``2 *
  parser_threads`` messages are being parsed at once: when Q1 is full the receiver
  stops reading, the socket buffers fill and the producer blocks, as in production.
- ``parse_in_actor``: the raw bytes go through Q1 and the inference stage parses
  them (the original codebase's design).
- ``random_producer`` (random mode): batches made in host memory, into Q1.
- ``producer_thread``: runs one of these in a thread that ends the run on failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .context import POLL_S, Q1Item, StageContext
from .parse import ParsedBatch, ParseError
from .random_source import RandomSource
from .receiver import RawMessage
from .records import BatchTimes

log = logging.getLogger("pipeline.ingest")

__all__ = ["parse_in_actor", "parse_in_receiver", "producer_thread", "put_parsed",
           "random_producer", "receive"]


def _ended(ctx: StageContext, n: int, t0: float, last_activity: float | None) -> str | None:
    """Why receiving ends now (count, duration, idle), or None to go on."""
    cfg = ctx.cfg
    if cfg.count is not None and n >= cfg.count:
        return "count"
    t = ctx.clock()
    if cfg.duration_s is not None and t - t0 >= cfg.duration_s:
        return "duration"
    if (cfg.idle_timeout_s is not None and last_activity is not None
            and t - last_activity >= cfg.idle_timeout_s):
        return "idle"
    return None


def receive(ctx: StageContext, rx: Any, on_message: Callable[[RawMessage, int], None]) -> None:
    """The receiver loop: until count, duration, idle timeout or stop."""
    cfg = ctx.cfg
    t0 = ctx.clock()
    n = 0
    last_activity: float | None = None
    while not ctx.stop.is_set():
        reason = _ended(ctx, n, t0, last_activity)
        if reason is not None:
            ctx.end_reason = reason
            return
        msg = rx.recv(POLL_S)
        if msg is None:
            continue
        index = next(ctx.indices)
        n += 1
        ctx.records.arrival(msg.t_arrival)
        if msg.oversize or msg.reject:
            ctx.records.sequence(index, None, None)
            ctx.quarantine(index, msg.payload, msg.reject or
                           f"oversize: {msg.nbytes} bytes > max_message_bytes {cfg.max_message_bytes}",
                           msg.nbytes, msg.t_arrival)
        else:
            on_message(msg, index)
        # silence is measured from when we were ready to read again, so time spent
        # blocked on a full Q1 does not count as the producer being idle
        last_activity = ctx.clock()
    ctx.end_reason = "stopped"


def put_parsed(ctx: StageContext, index: int, msg: RawMessage,
               parsed: Callable[[], ParsedBatch]) -> None:
    """Account message ``index`` and hand its batch to Q1: ``parsed()`` gives the
    parsed batch (the parse itself, or a finished parse's result) or raises
    ParseError, which quarantines the message. A batch Q1 no longer takes (closed by
    a failure elsewhere) is quarantined too: nothing is lost unrecorded. Both
    layouts' parsers end here (``parse_in_receiver``'s feeder and the fast
    layout's parser threads)."""
    try:
        pb = parsed()
    except ParseError as e:
        ctx.records.sequence(index, e.rank, e.seq, e.epoch)
        ctx.quarantine(index, msg.payload, str(e), msg.nbytes, msg.t_arrival, e.rank, e.seq)
        return
    ctx.records.sequence(index, pb.rank, pb.seq, pb.epoch)
    host = BatchTimes(index, pb.rank, pb.seq, pb.events, msg.nbytes, msg.t_arrival,
                      pb.t_parse_start, pb.t_parse_end)
    if not ctx.put(Q1Item(host, data=pb.data, release=pb.release)):
        ctx.quarantine(index, None, "aborted: Q1 closed before the batch was queued",
                       msg.nbytes, msg.t_arrival, pb.rank, pb.seq)


class _InOrderFeeder:
    """Parse results into Q1 in arrival order (``parse_in: receiver``): the receiver
    ``submit``s each message to the parser pool; the feeder thread takes the
    futures in order and puts or quarantines them. ``slots`` bounds the messages
    being parsed at once.

    A slow message (a hostile peer's, or a huge one) holds back the batches parsed
    after it for at most ``parse_hold_s``: past that, finished ones go into Q1 ahead
    of it (``overtaken`` counts them), so one peer's message cannot stall the
    others' while the remaining parser threads are free. The slow parse itself ends
    by ``parse_deadline_s`` (checked between its steps) or, in an isolation worker,
    ``parse_timeout_s``; ``max_chunks`` bounds the steps."""

    def __init__(self, ctx: StageContext, pool: ThreadPoolExecutor) -> None:
        self.ctx = ctx
        self.pool = pool
        self.hold_s = ctx.cfg.parse_hold_s
        self.overtaken = 0
        self.slots = threading.BoundedSemaphore(2 * ctx.cfg.parser_threads)
        self.order: deque[tuple[int, RawMessage, Future[ParsedBatch]]] = deque()
        self.t_submit: dict[int, float] = {}
        self.order_cv = threading.Condition()
        self.receiving_done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="q1-feeder", daemon=True)

    def submit(self, msg: RawMessage, index: int) -> None:
        """Start parsing ``msg``, waiting for a free slot (the receiver's backpressure)."""
        while not self.slots.acquire(timeout=POLL_S):
            if self.ctx.errors:
                raise RuntimeError("feeder failed")
        fut = self.pool.submit(self.ctx.parser.parse, msg.payload)
        with self.order_cv:
            self.order.append((index, msg, fut))
            self.t_submit[index] = time.monotonic()
            self.order_cv.notify()
        fut.add_done_callback(self._done)

    def _done(self, _fut: Future[ParsedBatch]) -> None:
        with self.order_cv:
            self.order_cv.notify_all()

    def finish(self) -> None:
        """No more messages: the feeder drains what is pending and ends."""
        self.receiving_done.set()
        with self.order_cv:
            self.order_cv.notify_all()
        self.thread.join()
        if self.overtaken:
            log.info("%d parsed batches went into Q1 ahead of a slower message "
                     "(parse_hold_s %.2f)", self.overtaken, self.hold_s)

    def _next(self) -> tuple[int, RawMessage, Future[ParsedBatch]] | None:
        """The head once parsed; or, once the head has been parsing for ``hold_s``,
        the first later message already parsed; None when all is done."""
        with self.order_cv:
            while True:
                if not self.order:
                    if self.receiving_done.is_set():
                        return None
                    self.order_cv.wait(POLL_S)
                    continue
                head = self.order[0]
                if head[2].done():
                    return self._take(0)
                waited = time.monotonic() - self.t_submit[head[0]]
                if waited >= self.hold_s:
                    for i in range(1, len(self.order)):
                        if self.order[i][2].done():
                            self.overtaken += 1
                            return self._take(i)
                    self.order_cv.wait(POLL_S)
                else:
                    self.order_cv.wait(min(POLL_S, self.hold_s - waited))

    def _take(self, i: int) -> tuple[int, RawMessage, Future[ParsedBatch]]:
        entry = self.order[i]
        del self.order[i]
        self.t_submit.pop(entry[0], None)
        return entry

    def _run(self) -> None:
        ctx = self.ctx
        try:
            while (entry := self._next()) is not None:
                self._feed(*entry)
                self.slots.release()
        except BaseException as exc:  # a bug here must end the run, not hang it
            ctx.fail(exc)

    def _feed(self, index: int, msg: RawMessage, fut: Future[ParsedBatch]) -> None:
        put_parsed(self.ctx, index, msg, fut.result)


def parse_in_receiver(ctx: StageContext, rx: Any) -> None:
    """Receiver + parser pool + in-order feeder into Q1."""
    with ThreadPoolExecutor(ctx.cfg.parser_threads, thread_name_prefix="parser") as pool:
        feeder = _InOrderFeeder(ctx, pool)
        feeder.thread.start()
        try:
            receive(ctx, rx, feeder.submit)
        finally:
            feeder.finish()


def parse_in_actor(ctx: StageContext, rx: Any) -> None:
    """Receiver putting raw bytes into Q1 (the inference stage parses)."""

    def on_message(msg: RawMessage, index: int) -> None:
        host = BatchTimes(index, None, None, 0, msg.nbytes, msg.t_arrival)
        if not ctx.put(Q1Item(host, raw=msg.payload)):
            ctx.records.sequence(index, None, None)
            ctx.quarantine(index, None, "aborted: Q1 closed before the message was queued",
                           msg.nbytes, msg.t_arrival)

    receive(ctx, rx, on_message)


def random_producer(ctx: StageContext) -> None:
    """Random mode: batches made in host memory into Q1, until count, duration or stop."""
    cfg = ctx.cfg
    rc = cfg.random
    src = RandomSource(rc.batch_size, rc.shape, rc.dtype, ctx.engine.host_array, fresh=rc.fresh,
                       clock=ctx.clock)
    t0 = ctx.clock()
    n = 0
    while not ctx.stop.is_set():
        if cfg.count is not None and n >= cfg.count:
            ctx.end_reason = "count"
            return
        if cfg.duration_s is not None and ctx.clock() - t0 >= cfg.duration_s:
            ctx.end_reason = "duration"
            return
        data, release, ts, te = src.next()
        index = next(ctx.indices)
        n += 1
        ctx.records.arrival(te)
        ctx.records.sequence(index, None, None)
        host = BatchTimes(index, None, None, rc.batch_size, src.nbytes, te, ts, te)
        if not ctx.put(Q1Item(host, data=data, release=release)):
            ctx.quarantine(index, None, "aborted: Q1 closed before the batch was queued",
                           src.nbytes, te)
            return
    ctx.end_reason = "stopped"


def producer_thread(ctx: StageContext, target: Callable[[], None]) -> threading.Thread:
    """Run ``target`` (an ingest loop) in a thread; its failure ends the run, and
    ``ctx.producers_done`` is set when it returns either way."""

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            ctx.fail(exc)
        finally:
            ctx.producers_done.set()

    t = threading.Thread(target=body, name="producer", daemon=True)
    t.start()
    return t
