"""The fast receive layout (``consumer.layout: fast``): ingest that outruns one stream.

Production's layout (``pipeline.ingest.parse_in_receiver``) reads every message
with one socket in one thread and puts the parsed batches into Q1 through one
in-order feeder thread: each batch makes three thread hops and waits for the
batches ahead of it. This layout removes those serial points:

- one socket and one receiver thread per bind address (``consumer.bind`` as a
  list; the runner spreads the emitter's ranks over the addresses), each socket
  with its own libzmq I/O thread and a kernel receive buffer of ``RCVBUF_BYTES``
  (or Linux's autotuning where that reaches as far: ``fast_rcvbuf``);
- zmq bound here (and parsed in this process) is read by
  ``pipeline.zmtp_into.IntoReceiver``: each message body ``recv_into`` a buffer
  of the engine's host pool (pinned on CUDA), decoded in place by a pool of
  ``parser_threads`` (the batch is a view of that buffer where its bytes lie
  back to back): each byte is copied once, by the kernel, between the socket and
  the H2D. Other transports and roles use the layout's usual receivers;
- each parser thread puts its batch into Q1 as soon as it is parsed (Q1 is the
  in-process queue, ``queue.backend: local``: the batch is handed over by
  reference, never serialised). Batches of one stream can reach Q1 out of order
  when parses finish out of order; the records' (rank, seq) accounting does not
  depend on order, and inference counts the reorderings as it does elsewhere.

Backpressure is the same chain as production's: at most ``2 * parser_threads``
messages are being parsed; when Q1 is full the parsers wait, the receivers stop
reading, the kernel buffers fill and the producer blocks. The end conditions
(``count`` over all receivers, ``duration_s``, ``idle_timeout_s`` of silence on
every receiver after the first message, stop) are those of ``ingest.receive``.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .context import POLL_S, StageContext
from .ingest import put_parsed
from .receiver import RawMessage, Receiver

__all__ = ["RCVBUF_BYTES", "fast_rcvbuf", "merged_receiver_stats", "parse_in_fast"]

log = logging.getLogger("pipeline.fast_ingest")

#: the receive buffer the fast layout wants per connection: room for a large batch
#: in flight while its receiver thread is busy
RCVBUF_BYTES = 32 << 20


def _sysctl_ints(path: str) -> list[int]:
    try:
        with open(path) as fh:
            return [int(x) for x in fh.read().split()]
    except (OSError, ValueError):
        return []


def fast_rcvbuf(want: int = RCVBUF_BYTES) -> int | None:
    """SO_RCVBUF to set for ``want`` bytes, or None to leave Linux's autotuning on.

    Setting SO_RCVBUF turns autotuning off and is capped at net.core.rmem_max,
    while autotuning grows a busy connection's buffer up to tcp_rmem's maximum: so
    it is set only where the cap lets it reach more than autotuning would."""
    rmem_max = _sysctl_ints("/proc/sys/net/core/rmem_max")
    tcp_rmem = _sysctl_ints("/proc/sys/net/ipv4/tcp_rmem")
    auto_max = tcp_rmem[2] if len(tcp_rmem) == 3 else 0
    if rmem_max and rmem_max[0] >= want > auto_max:
        return want
    return None


class _Shared:
    """What the receiver threads of one run share: the message count, the last
    activity, why receiving ended, and the parse slots."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.lock = threading.Lock()
        self.n = 0
        self.t0 = ctx.clock()
        self.last_activity: float | None = None
        self.done = threading.Event()
        self.slots = threading.BoundedSemaphore(2 * ctx.cfg.parser_threads)

    def end(self, reason: str) -> None:
        with self.lock:
            if not self.done.is_set():
                self.ctx.end_reason = reason
                self.done.set()

    def check_end(self) -> bool:
        """True once receiving is over (this call may be the one that ends it)."""
        if self.done.is_set():
            return True
        ctx, cfg = self.ctx, self.ctx.cfg
        if ctx.stop.is_set():
            self.end("stopped")
            return True
        t = ctx.clock()
        with self.lock:
            n, last = self.n, self.last_activity
        if cfg.count is not None and n >= cfg.count:
            self.end("count")
        elif cfg.duration_s is not None and t - self.t0 >= cfg.duration_s:
            self.end("duration")
        elif cfg.idle_timeout_s is not None and last is not None and t - last >= cfg.idle_timeout_s:
            self.end("idle")
        return self.done.is_set()

    def admit(self) -> int:
        """The run's index for a message just received. A message read off the wire
        is always taken in, so with several sockets a run may take a few messages
        past ``count`` (at most one per other receiver): none is dropped unrecorded."""
        with self.lock:
            self.n += 1
            return next(self.ctx.indices)


def _parse_and_put(ctx: StageContext, shared: _Shared, msg: RawMessage, index: int) -> None:
    """One parser thread's work: decode into host memory, then straight into Q1."""
    owned = [msg.release] if msg.release is not None else []

    def parse() -> Any:
        pb = ctx.parser.parse(msg.payload, msg.release)
        owned.clear()  # the batch holds the buffer now (or parse gave it back)
        return pb

    try:
        put_parsed(ctx, index, msg, parse)
    except BaseException as exc:  # a bug here must end the run, not hang it
        ctx.fail(exc)
    finally:
        for release in owned:  # a parse error: quarantined, now the buffer goes back
            release()
        shared.slots.release()


def _receive(ctx: StageContext, shared: _Shared, rx: Receiver, pool: ThreadPoolExecutor) -> None:
    """One receiver thread: its socket's messages to the parser pool."""
    try:
        while not shared.check_end():
            msg = rx.recv(POLL_S)
            if msg is None:
                continue
            index = shared.admit()
            ctx.records.arrival(msg.t_arrival)
            if msg.oversize or msg.reject:
                ctx.records.sequence(index, None, None)
                ctx.quarantine(index, msg.payload, msg.reject or
                               f"oversize: {msg.nbytes} bytes > max_message_bytes "
                               f"{ctx.cfg.max_message_bytes}", msg.nbytes, msg.t_arrival)
                if msg.release is not None:
                    msg.release()
            else:
                # wait for a parse slot holding this message: while every slot is taken
                # (Q1 full) nothing more is read, so the kernel buffers fill and the
                # producer blocks (a receiver waiting on its socket holds no slot)
                while not shared.slots.acquire(timeout=POLL_S):
                    if ctx.errors:
                        raise RuntimeError("a parser failed")
                pool.submit(_parse_and_put, ctx, shared, msg, index)
            # silence is measured from when we were ready to read again (as in
            # ingest.receive): time blocked on a full Q1 is not the producer idling
            with shared.lock:
                shared.last_activity = ctx.clock()
    except BaseException as exc:
        ctx.fail(exc)
        shared.end("error")


def parse_in_fast(ctx: StageContext, receivers: list[Receiver]) -> None:
    """Receiver threads (one per socket) + a parser pool putting into Q1; returns
    when receiving has ended and every message taken in is parsed and queued."""
    shared = _Shared(ctx)
    with ThreadPoolExecutor(ctx.cfg.parser_threads, thread_name_prefix="fast-parser") as pool:
        threads = [threading.Thread(target=_receive, args=(ctx, shared, rx, pool),
                                    name=f"fast-receiver-{i}", daemon=True)
                   for i, rx in enumerate(receivers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # the pool's exit waited for every parse, so every put has been made


def merged_receiver_stats(receivers: list[Receiver]) -> dict[str, Any]:
    """The receivers' stats as one ``summary.receiver`` record: counts and times
    summed, the span over all of them, ``busy_share`` that of the busiest
    receiver thread (the one that limits), and each receiver's own record under
    ``per_receiver``."""
    stats = [rx.stats for rx in receivers]
    dicts = [st.as_dict() for st in stats]
    if len(stats) == 1:
        return {**dicts[0], "per_receiver": dicts}
    out: dict[str, Any] = {}
    for k in ("messages", "bytes", "oversize", "connections", "cut", "multipart", "disconnects",
              "protocol_errors", "wakeups", "ready_without_wait"):
        out[k] = sum(int(getattr(st, k)) for st in stats)
    out["wait_s"] = round(sum(st.wait_s for st in stats), 6)
    out["read_s"] = round(sum(st.read_s for st in stats), 6)
    out["errors"] = [e for st in stats for e in st.errors][-10:]
    firsts = [st.t_first for st in stats if st.t_first is not None]
    lasts = [st.t_last for st in stats if st.t_last is not None]
    out["span_s"] = round(max(lasts) - min(firsts), 6) if firsts and lasts else None
    busy = [1.0 - st.wait_s / (st.t_last - st.t_first) for st in stats
            if st.t_first is not None and st.t_last is not None and st.t_last > st.t_first]
    out["busy_share"] = round(max(0.0, max(busy)), 4) if busy else None
    out["bytes_per_wakeup"] = (round(out["bytes"] / max(out["wakeups"], 1), 1)
                               if out["bytes"] else None)
    rxq = [q for st in stats for q in st.rx_queue_samples]
    out["rx_queue_bytes_mean"] = round(sum(rxq) / len(rxq), 1) if rxq else None
    out["rx_queue_bytes_max"] = max(rxq) if rxq else None
    out["rx_queue_samples"] = len(rxq)
    out["per_receiver"] = dicts
    return out
