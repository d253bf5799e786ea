"""The emitter engine: trio tasks around the pure schedule, one pair per rank.

Per rank, a *scheduler* task walks :class:`simstream.schedule.Schedule`: it
builds each message ahead of time, sleeps until its planned time, applies its
faults and puts it into a memory channel of capacity ``transport.sndhwm``
(LCLStreamer's SNDHWM: at most that many messages queued for a peer that is
not reading; then the producer waits, and the wait is recorded as
``blocked_s``). A *writer* task takes from the channel and sends through the
transport, paced by the token bucket (per rank, or one shared by all ranks).

Nothing is forgotten: every attempt ends in one record (``delivered``,
``cut`` or ``lost``), including messages in flight or still queued when the
run is stopped (Ctrl-C, a drain timeout) or when the peer disconnects.

End of stream (``transport.close``): ``graceful`` lets the queue drain (within
the drain time-out); ``abrupt`` closes as soon as the schedule is over, as
LCLStreamer does (LINGER 0): sending goes on only while the kernel takes
messages without waiting for the peer (libzmq's I/O thread hands its queue over
until the close reaches it); the message that would wait and those still queued
are lost, and their records say so in ``at_close`` (``in_flight``/``queued``).
A sender without ``close_when_blocked`` is cut off at once.

Several urls (``transport.url_spread``): ``rank`` gives each rank one url;
``message`` opens every url in every rank and sends message k of the rank on
url k mod len(urls), as one ZMQ PUSH socket on several endpoints does.

Times: trio's clock drives sleeping (virtual in tests, with MockClock);
records carry ``wall_clock()`` Unix seconds (``simstream.clock.now``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from simstream import clock
from simstream.faults import Attempt
from simstream.profile import Profile
from simstream.schedule import PlannedSend, Schedule
from simstream.timing import (
    TokenBucket,
    chunk_and_burst,
    effective_network,
    mbps_to_bytes_per_s,
    phase_at,
)

__all__ = [
    "EmitResult",
    "RankStats",
    "rank_urls_of",
    "SenderFactory",
    "default_message_factory",
    "default_sender_factory",
    "new_epoch",
    "run_emitter",
]

#: wake this long before a planned time and yield until it: the event loop's own
#: timer wakes up to ~1 ms late (epoll's millisecond resolution)
SPIN_S = 0.0015

#: the bucket holds this many chunks: a wake-up that comes a few ms late (the event
#: loop's timer, a busy machine) finds the tokens it earned meanwhile instead of
#: losing them to the cap, which would bring the rate below the cap
BURST_CHUNKS = 4

#: messages at least this big (estimated) are built in a worker thread
THREAD_BUILD_BYTES = 1 << 20

#: chunk size handed to the transport when no cap applies (bytes)
UNCAPPED_CHUNK_BYTES = 1 << 20

Record = dict[str, Any]
Gate = Callable[[int], Awaitable[None]]


class SenderFactory(Protocol):
    """Opens one connection: ``async with factory(kind, role, url, ...) as sender``."""

    def __call__(self, kind: str, role: str, url: str, *, connect_timeout_s: float,
                 backoff_ms: tuple[float, float],
                 on_event: Callable[..., None] | None) -> Any: ...


def default_sender_factory(kind: str, role: str, url: str, *, connect_timeout_s: float,
                           backoff_ms: tuple[float, float],
                           on_event: Callable[..., None] | None,
                           dead_link_ms: float | None = None,
                           sndbuf_bytes: int | None = None) -> Any:
    """The real transport (``simstream.transport.open_sender``), imported when used."""
    from simstream.transport import open_sender

    return open_sender(kind, role, url, connect_timeout_s=connect_timeout_s,
                       backoff_ms=backoff_ms, on_event=on_event, dead_link_ms=dead_link_ms,
                       sndbuf_bytes=sndbuf_bytes)


def default_message_factory(profile: Profile, rank: int, epoch: int = 0) -> Any:
    """The real payloads (``simstream.payload.MessageFactory``), imported when used;
    pooled messages as scatter payloads (views of the pool, no copy of the batch)."""
    from simstream.payload import MessageFactory

    return MessageFactory(profile.source, rank=rank, seed=profile.seed, epoch=epoch,
                          scatter=True)


def new_epoch() -> int:
    """A start id for one emitter run: microseconds of Unix time, so a restarted
    emitter (a killed host started again) sends under a later epoch than its earlier
    life and the consumer counts its sequence numbers as a new stream. Below 2**53,
    so it survives a float column."""
    return time.time_ns() // 1000


@contextlib.asynccontextmanager
async def _open(factory_result: Any) -> AsyncIterator[Any]:
    """Accept either an async context manager or a coroutine returning a sender."""
    if hasattr(factory_result, "__aenter__"):
        async with factory_result as sender:
            yield sender
        return
    sender = await factory_result
    try:
        yield sender
    finally:
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            await sender.close()


async def sleep_until_precise(t: float) -> None:
    """trio.sleep_until, but on time to well under a millisecond with the real clock.

    Sleeps until SPIN_S before ``t``, then yields to other tasks until ``t``
    (costs at most SPIN_S of CPU per call). With any other clock (MockClock in
    tests) it is exactly trio.sleep_until: spinning would stop virtual time.
    """
    if type(trio.lowlevel.current_clock()).__name__ != "SystemClock":
        await trio.sleep_until(t)
        return
    if t - trio.current_time() > SPIN_S:
        await trio.sleep_until(t - SPIN_S)
    for _ in range(1_000_000):  # bounded; ~1 us per pass
        if trio.current_time() >= t:
            break
        await trio.lowlevel.checkpoint()


@dataclass
class RankStats:
    """Running totals of one rank (what the progress display and summary show)."""

    rank: int
    url: str
    delivered: int = 0
    cut: int = 0
    lost: int = 0
    nbytes: int = 0
    wire_bytes: int = 0
    blocked_s: float = 0.0
    phase: str = ""
    queued: int = 0
    planned_end: str | None = None
    #: messages discarded by the end-of-stream close, as (seq, "in_flight"|"queued")
    tail: list[tuple[int, str]] = field(default_factory=list)

    @property
    def lost_at_tail(self) -> int:
        return len(self.tail)

    @property
    def attempts(self) -> int:
        return self.delivered + self.cut + self.lost


@dataclass
class EmitResult:
    ranks: list[RankStats]
    t_start: float  # wall clock, Unix seconds
    t_end: float
    interrupted: bool = False
    records: int = 0

    @property
    def elapsed_s(self) -> float:
        return max(0.0, self.t_end - self.t_start)

    def total(self, attr: str) -> float:
        return sum(getattr(r, attr) for r in self.ranks)


@dataclass
class _Item:
    planned: PlannedSend
    attempt: Attempt
    blocked_s: float
    events: int


@dataclass
class _Run:
    """Shared state of one run."""

    profile: Profile
    t0: float  # trio time of the schedule's zero
    unix0: float  # wall clock at t0
    wall_clock: Callable[[], float]
    emit: Callable[[Record], None]
    stats: list[RankStats]
    buckets: dict[int, TokenBucket] = field(default_factory=dict)
    notes: list[tuple[int, str]] = field(default_factory=list)
    #: trio time after which queued or blocked messages are given up (stop + drain)
    drain_deadline: float | None = None
    #: live changes (``simstream.emitter.control.LiveConditions``), or None
    live: Any = None
    #: this run's start id: every payload's ``/simstream/epoch`` and every record's
    epoch: int = 0

    def rank_stats(self, rank: int) -> RankStats:
        """The totals of the rank with this (global) id."""
        return self.stats[rank - self.profile.transport.rank_offset]

    @property
    def capped(self) -> bool:
        """Whether any phase (or the base network section, or a live change) caps the
        bandwidth."""
        if self.live is not None and self.live.network is not None \
                and self.live.network.bandwidth_mbps is not None:
            return True
        return self.profile.network.bandwidth_mbps is not None or any(
            ph.network is not None and ph.network.bandwidth_mbps is not None
            for ph in self.profile.timeline.phases
        )

    def bucket(self, rank: int, rate: float, burst: int) -> TokenBucket:
        key = -1 if self.profile.network.bandwidth_scope == "aggregate" else rank
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = TokenBucket(rate, burst, t0=trio.current_time())
        else:
            b.set_rate(trio.current_time(), rate, burst)  # a new phase's cap, if any
        return b


def _record(run: _Run, item: _Item, url: str, *, outcome: str, t_first: float | None = None,
            t_last: float | None = None, wire_bytes: int = 0, socket_wait_s: float = 0.0,
            at_close: str | None = None) -> Record:
    p = item.planned
    return {
        "rank": p.rank,
        "seq": p.seq,
        "phase": p.phase,
        "t_sched": run.unix0 + p.t_sched,
        "t_first_byte": t_first,
        "t_last_byte": t_last,
        "nbytes": item.attempt.nbytes,
        "wire_bytes": int(wire_bytes),
        "events": item.events,
        "blocked_s": round(item.blocked_s + (socket_wait_s or 0.0), 9),
        # the two parts of blocked_s: waiting for room in the SNDHWM queue (before
        # the first byte) and waiting on the kernel inside sends (TCP backpressure)
        "hwm_wait_s": round(item.blocked_s, 9),
        "socket_wait_s": round(socket_wait_s or 0.0, 9),
        "faults": p.fault_names,
        "outcome": outcome,
        "url": url,
        # lost because the stream's end closed the socket: "in_flight" or "queued"
        "at_close": at_close,
        "epoch": run.epoch,
    }


def _cap_now(run: _Run) -> float | None:
    """The cap in force now (Mbit/s), by the clock: the link's cap changes at the
    phase boundary, as a kernel shaper's does, whichever phase a message that is
    still being sent was scheduled in."""
    return _network_now(run).bandwidth_mbps


def _network_now(run: _Run) -> Any:
    """The network conditions in force now: base, the phase's by the clock, live changes."""
    w = phase_at(run.profile.timeline, trio.current_time() - run.t0)
    override = w.phase.network if w is not None else None
    net = effective_network(run.profile.network, override)
    if run.live is not None:
        net = effective_network(net, run.live.network)
    return net


def _make_gate(run: _Run, rank: int) -> tuple[Gate | None, int]:
    """The token-bucket gate for one message (None when no phase is capped) and its
    chunk size (from the cap in force when the message starts)."""
    if not run.capped:
        return None, UNCAPPED_CHUNK_BYTES
    mbps = _cap_now(run)
    chunk = UNCAPPED_CHUNK_BYTES if mbps is None else chunk_and_burst(mbps_to_bytes_per_s(mbps))

    async def gate(nbytes: int) -> None:
        mbps = _cap_now(run)
        if mbps is None:
            await trio.lowlevel.checkpoint()
            return
        rate = mbps_to_bytes_per_s(mbps)
        bucket = run.bucket(rank, rate, BURST_CHUNKS * chunk_and_burst(rate))
        now = trio.current_time()
        t = now
        left: float = nbytes
        # a piece larger than the burst (framing + chunk) is booked in burst-sized parts
        while left > 0:
            part = min(left, bucket.burst)
            t = bucket.reserve(now, part)
            left -= part
        if t > now:
            await trio.sleep_until(t)
        else:
            await trio.lowlevel.checkpoint()

    return gate, chunk


async def _scheduler(run: _Run, rank: int, factory: Any,
                     send_ch: trio.MemorySendChannel[_Item], *, in_thread: bool,
                     log_lost: Callable[[_Item], None], first: Any = None) -> None:
    stats = run.rank_stats(rank)
    sched = Schedule(run.profile, rank, live=run.live)
    stop_s = run.profile.stop.duration_s
    message: Any = first
    async with send_ch:
        while True:
            planned = sched.next(trio.current_time() - run.t0)
            if planned is None:
                break
            # build the message before its time comes, so encoding is not on the clock
            if message is None or message.seq != planned.seq:
                # big messages are built in a thread so sends go on meanwhile; small ones
                # inline: a thread hand-off costs more than the build and its GIL
                # contention would delay the wake-ups the schedule depends on
                # (a factory that says a message is cheap, e.g. a pooled scatter
                # payload, builds it inline whatever its size)
                big = (planned.nbytes_estimate or 0) >= THREAD_BUILD_BYTES
                cheap = getattr(factory, "cheap", None)
                if in_thread and big and not (cheap is not None and cheap(planned.seq)):
                    message = await trio.to_thread.run_sync(factory.message, planned.seq)
                else:
                    message = factory.message(planned.seq)
            await sleep_until_precise(run.t0 + planned.t_sched)
            if run.live is not None and run.live.paused:
                # paused: this message and the schedule after it move later by the pause
                waited = await run.live.wait_resumed()
                sched.delay(waited)
                planned = dataclasses.replace(planned, t_offered=planned.t_offered + waited,
                                              t_sched=planned.t_sched + waited)
            attempt = Attempt(message.payload)
            for f in planned.faults:
                attempt = f.apply(attempt)
            item = _Item(planned, attempt, 0.0, int(message.events))
            stats.phase = planned.phase
            t_put = trio.current_time()
            # a producer blocked on a peer that does not read gives up when the drain
            # after the stop is over (a blocked message is sent if the peer wakes up)
            give_up = math.inf if run.drain_deadline is None else max(run.drain_deadline, t_put)
            queued = False
            try:
                with trio.move_on_at(give_up):
                    await send_ch.send(item)
                    queued = True
            finally:
                item.blocked_s = trio.current_time() - t_put
                if not queued:
                    log_lost(item)
            if not queued:
                stats.planned_end = "blocked at stop"
                return
            stats.queued = send_ch.statistics().current_buffer_used
        stats.planned_end = sched.end_reason
        if sched.end_reason in ("duration", "silent") and stop_s is not None:
            # the run lasts its whole duration, silent tail included
            await trio.sleep_until(run.t0 + stop_s)


async def _writer(run: _Run, rank: int, links: list[tuple[str, Any]],
                  recv_ch: trio.MemoryReceiveChannel[_Item], closing: trio.Event) -> None:
    """Sends the rank's queue; message k goes on ``links[k % len(links)]`` (url, sender)."""
    stats = run.rank_stats(rank)
    t_idle = trio.current_time()  # when the previous attempt finished (trio time)
    current: _Item | None = None
    k = 0
    url = links[0][0]
    async with recv_ch:
        try:
            try:
                async for item in recv_ch:
                    current = item
                    url, sender = links[k % len(links)]
                    k += 1
                    await _send_one(run, rank, url, sender, item, stats, t_idle)
                    current = None
                    t_idle = trio.current_time()
            except _closed_at_end():
                pass  # an abrupt close met a full send buffer: the rest is the tail
        finally:
            # stopped (Ctrl-C, drain timeout, an abrupt close): what was in flight or
            # queued is lost, and said so; after the schedule's end it is the tail
            tail = closing.is_set()
            if current is not None:
                run.emit(_record(run, current, url, outcome="lost",
                                 at_close="in_flight" if tail else None))
                stats.lost += 1
                if tail:
                    stats.tail.append((current.planned.seq, "in_flight"))
            while True:
                try:
                    left = recv_ch.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                left_url = links[k % len(links)][0]
                k += 1
                run.emit(_record(run, left, left_url, outcome="lost",
                                 at_close="queued" if tail else None))
                stats.lost += 1
                if tail:
                    stats.tail.append((left.planned.seq, "queued"))
            stats.queued = 0


async def _send_one(run: _Run, rank: int, url: str, sender: Any, item: _Item,
                    stats: RankStats, t_idle: float) -> None:
    """One attempt: wait for its time (and any stall), send, record, then act on faults."""
    att = item.attempt
    start = run.t0 + item.planned.t_sched
    if att.silence_s:
        start = max(start, t_idle + att.silence_s)
    if start > trio.current_time():
        await sleep_until_precise(start)
    gate, chunk = _make_gate(run, rank)
    cut = att.cut_after_bytes()
    try:
        report = await sender.send_message(
            att.payload, gate=gate, chunk_bytes=chunk, cut_after_bytes=cut)
    except trio.Cancelled:
        raise
    except Exception as e:
        if isinstance(e, _closed_at_end()):
            raise  # the writer records it and the queue as the tail
        # this message is lost either way; an unreachable peer or a closed sender ends
        # the run (after the record), a mere disconnect does not: the transport reconnects
        _note_error(run, rank, e)
        if isinstance(e, _fatal_errors()):
            raise  # the writer records this message (and what is queued) as lost
        run.emit(_record(run, item, url, outcome="lost"))
        stats.lost += 1
        return
    outcome = str(getattr(report, "outcome", "delivered"))
    if outcome not in ("delivered", "cut", "lost"):
        outcome = "lost"
    if cut is not None and outcome == "delivered":
        # the transport did not cut: still a faulted attempt, not a clean delivery
        outcome = "cut"
    # t_last_byte only for a completed message (docs/formats.md)
    rec = _record(run, item, url, outcome=outcome, t_first=report.t_first_byte,
                  t_last=report.t_last_byte if outcome == "delivered" else None,
                  wire_bytes=report.wire_bytes, socket_wait_s=report.socket_wait_s)
    run.emit(rec)
    stats.nbytes += att.nbytes if outcome == "delivered" else 0
    stats.wire_bytes += int(report.wire_bytes or 0)
    stats.blocked_s += rec["blocked_s"]
    setattr(stats, outcome, getattr(stats, outcome) + 1)
    # a cut needs nothing more: the transport aborts the connection (RST) itself and
    # the next send reconnects
    if att.close_s is not None:
        # slow close: the connection lingers idle for close_s, then closes (FIN) and
        # the transport connects again at once
        await trio.sleep(att.close_s)
        await sender.reconnect()


def _fatal_errors() -> tuple[type[BaseException], ...]:
    """Errors after which sending cannot go on: no peer within the connect time-out,
    or a sender closed under us."""
    out: list[type[BaseException]] = [trio.ClosedResourceError]
    try:
        from simstream.transport import ConnectTimeout
    except ImportError:  # pragma: no cover - the transport is part of the package
        pass
    else:
        out.append(ConnectTimeout)
    return tuple(out)


def _closed_at_end() -> tuple[type[BaseException], ...]:
    """The transport's error for a write an abrupt close abandons."""
    try:
        from simstream.transport import WouldBlockAtClose
    except ImportError:  # pragma: no cover - the transport is part of the package
        return ()
    return (WouldBlockAtClose,)


def _note_error(run: _Run, rank: int, err: BaseException) -> None:
    if len(run.notes) < 100:  # bounded: a flapping peer must not grow memory
        run.notes.append((rank, repr(err)))


async def run_emitter(
    profile: Profile,
    *,
    sender_factory: SenderFactory | Callable[..., Any] = default_sender_factory,
    message_factory: Callable[[Profile, int], Any] = default_message_factory,
    on_record: Callable[[Record], None] | None = None,
    on_event: Callable[..., None] | None = None,
    wall_clock: Callable[[], float] = clock.now,
    drain_timeout_s: float | None = 10.0,
    messages_in_thread: bool = True,
    stats_out: list[RankStats] | None = None,
    live: Any = None,
    epoch: int | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> EmitResult:
    """Run the profile's emitter to its stop condition; return the per-rank totals.

    ``sender_factory(kind, role, url, connect_timeout_s=, backoff_ms=, on_event=)``
    opens one connection per rank (an async context manager or a coroutine).
    ``message_factory(profile, rank)`` returns an object with ``.message(seq)``
    giving ``.seq``, ``.events``, ``.payload`` (and, optionally, ``.cheap(seq)``:
    True where message ``seq`` costs next to nothing to build, so it is built in
    the event loop rather than a worker thread). ``on_record`` receives every
    emit-log record as the attempt ends. ``drain_timeout_s``: after the
    schedule ends, how long queued messages may take to go before they are
    logged as lost (None: wait for ever). ``stats_out``: a list filled with the
    live :class:`RankStats` (for a progress display). ``live``: a
    ``simstream.emitter.control.LiveConditions`` whose changes (network fields,
    rate, pause, injected faults) the run follows from each rank's next message.
    ``epoch``: the run's start id (default ``new_epoch()``), in every record and,
    with the default message factory, in every payload (``/simstream/epoch``); a
    custom factory's payloads carry whatever epoch it puts there.

    Ranks: the ids ``transport.rank_offset`` .. ``rank_offset + ranks - 1``, all in
    this process (``transport.processes`` is the command line's business: it
    starts one engine per process, each with its own offset).

    Raises what opening a connection raises (the transport's ConnectTimeout,
    AddressInUse); cancellation (Ctrl-C) ends the run with every attempt
    recorded, then propagates.
    """
    tp = profile.transport
    epoch = new_epoch() if epoch is None else int(epoch)
    if message_factory is default_message_factory:
        message_factory = functools.partial(default_message_factory, epoch=epoch)
    # rank ids are global (MPI) ids: the payload's rank, the log's, the seed of every
    # random stream and the URL choice all use them, so a rank is the same rank
    # whichever emitter process runs it
    rank_urls = {r: rank_urls_of(profile, r)
                 for r in range(tp.rank_offset, tp.rank_offset + tp.ranks)}
    stats = [RankStats(rank=r, url=",".join(u)) for r, u in rank_urls.items()]
    if stats_out is not None:
        stats_out[:] = stats
    records = 0

    def emit(rec: Record) -> None:
        nonlocal records
        records += 1
        if on_record is not None:
            on_record(rec)

    async with contextlib.AsyncExitStack() as stack:
        senders: list[list[tuple[str, Any]]] = []
        # passed only when set: a sender factory that knows neither still works
        extra: dict[str, Any] = {}
        if tp.dead_link_ms:
            extra["dead_link_ms"] = tp.dead_link_ms
        if tp.sndbuf_bytes:
            extra["sndbuf_bytes"] = tp.sndbuf_bytes
        for st in stats:
            links = []
            for url in rank_urls[st.rank]:
                cm = sender_factory(tp.kind, tp.role, url,
                                    connect_timeout_s=tp.connect_timeout_s,
                                    backoff_ms=(float(tp.reconnect_backoff_ms[0]),
                                                float(tp.reconnect_backoff_ms[1])),
                                    on_event=on_event, **extra)
                links.append((url, await stack.enter_async_context(_open(cm))))
            senders.append(links)
        # payload factories are built (pools encoded) before the clock starts
        # and each rank's first message too: the start must not wait for an encode
        factories = []
        firsts = []
        for st in stats:
            if messages_in_thread:
                f = await trio.to_thread.run_sync(message_factory, profile, st.rank)
                first = await trio.to_thread.run_sync(_first_message, f, profile, st.rank)
            else:
                f = message_factory(profile, st.rank)
                first = _first_message(f, profile, st.rank)
            factories.append(f)
            firsts.append(first)
        run = _Run(profile, trio.current_time(), wall_clock(), wall_clock, emit, stats,
                   live=live, epoch=epoch)
        if live is not None:
            live.attach([st.rank for st in stats], functools.partial(_live_status, run))
        if profile.stop.duration_s is not None and drain_timeout_s is not None:
            run.drain_deadline = run.t0 + profile.stop.duration_s + drain_timeout_s
        task_status.started(run.unix0)
        result = EmitResult(stats, run.unix0, run.unix0)
        try:
            async with trio.open_nursery() as nursery:
                for st, sender, factory, first in zip(stats, senders, factories, firsts,
                                                      strict=True):
                    nursery.start_soon(_rank_pair, run, st.rank, sender,
                                       factory, first, messages_in_thread, drain_timeout_s)
        except trio.Cancelled:
            result.interrupted = True
            raise
        finally:
            result.t_end = wall_clock()
            result.records = records
            if live is not None:
                live.finished = True
    return result


def _first_message(factory: Any, profile: Profile, rank: int) -> Any:
    """Message 0 when the rank's schedule has one (built ahead of the start), else None."""
    if Schedule(profile, rank).next() is None:
        return None
    return factory.message(0)


def rank_urls_of(profile: Profile, rank: int) -> list[str]:
    """The urls rank ``rank`` (a global id) sends on (``transport.url_spread``)."""
    urls = profile.transport.all_urls
    if profile.transport.url_spread == "message":
        return urls
    return [urls[rank % len(urls)]]


async def _rank_pair(run: _Run, rank: int, links: list[tuple[str, Any]], factory: Any,
                     first: Any, in_thread: bool, drain_timeout_s: float | None) -> None:
    send_ch, recv_ch = trio.open_memory_channel[_Item](run.profile.transport.sndhwm)
    closing = trio.Event()

    def log_lost(item: _Item) -> None:
        run.emit(_record(run, item, links[0][0], outcome="lost"))
        run.rank_stats(rank).lost += 1

    async with trio.open_nursery() as nursery:
        writer_scope = trio.CancelScope()

        async def writer() -> None:
            with writer_scope:
                await _writer(run, rank, links, recv_ch, closing)

        nursery.start_soon(writer)
        await _scheduler(run, rank, factory, send_ch, in_thread=in_thread,
                         log_lost=log_lost, first=first)
        closing.set()
        if run.profile.transport.close == "abrupt":
            # LINGER 0: what the kernel takes without waiting still goes; the first
            # write that would wait ends the stream and the rest is dropped (the
            # writer records them as the tail)
            senders = [sender for _, sender in links]
            if all(hasattr(x, "close_when_blocked") for x in senders):
                for x in senders:
                    x.close_when_blocked()
            else:
                writer_scope.cancel()
            return
        # the schedule is over: queued messages still go, within the drain timeout
        if run.drain_deadline is not None:
            writer_scope.deadline = run.drain_deadline
        elif drain_timeout_s is not None:
            writer_scope.deadline = trio.current_time() + drain_timeout_s


def _live_status(run: _Run) -> dict[str, Any]:
    """What the control API's GET /status adds: conditions in force now and counters."""
    elapsed = trio.current_time() - run.t0
    w = phase_at(run.profile.timeline, elapsed)
    counters = {k: sum(getattr(st, k) for st in run.stats)
                for k in ("delivered", "cut", "lost", "nbytes", "queued")}
    counters["attempts"] = counters["delivered"] + counters["cut"] + counters["lost"]
    counters["blocked_s"] = round(sum(st.blocked_s for st in run.stats), 6)
    return {
        "elapsed_s": round(elapsed, 6),
        "phase": w.phase.name if w is not None else None,
        "network": _network_now(run).model_dump(),
        "counters": counters,
        "ranks": [{"rank": st.rank, "url": st.url, "phase": st.phase, "delivered": st.delivered,
                   "cut": st.cut, "lost": st.lost, "queued": st.queued,
                   "ended": st.planned_end} for st in run.stats],
    }


def expected_messages(profile: Profile) -> float:
    """Messages per rank the stop conditions allow (inf when endless), for progress bars."""
    from simstream.schedule import messages_per_rank

    n, _ = messages_per_rank(profile)
    return math.inf if n is None else float(n)
