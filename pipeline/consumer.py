"""The consumer: receive -> parse -> Q1 -> N-way buffered inference, every stage measured.

Threads, in the order a batch meets them:

- receiver (socket mode): takes messages off the socket, stamps arrival time and
  size, quarantines oversize ones. With ``parse_in: receiver`` it hands each
  message to a pool of ``parser_threads`` parsers (production's layout today);
  with ``parse_in: actor`` the raw bytes go through Q1 and the inference loop
  parses them (the seed's original design). At most ``2 * parser_threads``
  messages are being parsed at once: when Q1 is full the receiver stops reading,
  the socket buffers fill and the producer blocks, as in production.
- feeder (``parse_in: receiver``): takes parse results in arrival order and puts
  them into Q1 (so Q1 order is arrival order), or quarantines the failures.
- random producer (random mode): makes batches in host memory and puts them in Q1.
- Q1 sampler: occupancy every ``sample_interval_ms``.
- inference loop (the calling thread): Q1 -> engine.submit -> records.

The run ends at ``count`` messages, after ``duration_s``, after ``idle_timeout_s``
of silence following the first message, or when ``stop`` is set; whatever was
received by then is still parsed, queued and processed before the summary is
written, so every received message is accounted for.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simstream.clock import now

from .config import ConsumerConfig
from .parse import ParsedBatch, ParseError, Parser
from .q1 import Q1Closed, Q1Sampler, make_q1
from .receiver import RawMessage, check_bindable, open_receiver
from .records import STARVATION_UTILISATION, BatchTimes, RunRecords

__all__ = ["Q1Item", "run_consumer"]

log = logging.getLogger("pipeline.consumer")

_POLL_S = 0.05  # how long a blocking call waits before looking at the stop flag


@dataclass
class Q1Item:
    """What travels through Q1: a parsed batch (``data``) or raw bytes (``raw``, actor mode).

    ``release`` never crosses a process: the process backend serialises the data and
    the producer releases the host buffer right after."""

    host: BatchTimes
    data: np.ndarray | None = None
    raw: Any = None
    release: Callable[[], None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        raw = self.raw
        if raw is not None and not isinstance(raw, bytes):
            raw = bytes(raw)
        return {"host": self.host, "data": self.data, "raw": raw, "release": None}


class _Run:
    """Shared state of one consumer run (the threads' meeting point)."""

    def __init__(self, cfg: ConsumerConfig, records: Any, q1: Any, engine: Any,
                 stop: threading.Event, *, stripe: tuple[int, int] = (0, 1),
                 track_put_end: bool = True) -> None:
        self.cfg = cfg
        self.records = records
        self.q1 = q1
        self.engine = engine
        self.stop = stop
        # receiver i of n numbers its messages i, i + n, i + 2n... (RunRecords streams)
        self.indices = itertools.count(stripe[0], stripe[1])
        # a queue whose shards stamp the put's end in the item needs no side table
        self.track_put_end = track_put_end
        self.put_count = 0  # items placed in Q1
        self.producers_done = threading.Event()
        self.errors: list[BaseException] = []
        self.end_reason = "running"
        self._put_cv = threading.Condition()
        self._put_end: dict[int, float] = {}
        self.parser = Parser(cfg.fields, cfg.expected_fields, cfg.event_shape, engine.host_array,
                             isolation=cfg.parse_isolation, workers=cfg.parser_threads,
                             timeout_s=cfg.parse_timeout_s)

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.stop.set()

    # -- Q1 put with its times recorded -----------------------------------------------
    def put(self, item: Q1Item) -> bool:
        """Put into Q1, waiting for room; False when the queue closed first."""
        item.host.t_q1_put_start = now()
        try:
            t_end = self.q1.put(item)
        except Q1Closed:
            if item.release is not None:
                item.release()
            return False
        if self.q1.backend in ("process", "ray") and item.release is not None:
            item.release()  # the batch was serialised: its host buffer is free
        if not self.track_put_end:
            with self._put_cv:
                self.put_count += 1
            return True
        with self._put_cv:
            self._put_end[item.host.index] = t_end
            self.put_count += 1
            self._put_cv.notify_all()
        return True

    def put_end(self, index: int) -> float | None:
        """When item ``index``'s put returned. The consumer can hold an item before the
        producer's put call has returned: wait (briefly) for it. None when the queue
        stamps it in the item (``track_put_end`` False)."""
        if not self.track_put_end:
            return None
        with self._put_cv:
            self._put_cv.wait_for(lambda: index in self._put_end, timeout=2.0)
            return self._put_end.pop(index, None)

    def quarantine(self, index: int, payload: Any, reason: str, nbytes: int, t_arrival: float,
                   rank: int | None = None, seq: int | None = None) -> None:
        self.records.quarantine(index, payload, reason, nbytes=nbytes, t_arrival=t_arrival,
                                rank=rank, seq=seq)
        log.warning("message %d quarantined: %s", index, reason)


# --------------------------------------------------------------------------
# producers


def _receive(run: _Run, rx: Any, on_message: Callable[[RawMessage, int], None]) -> None:
    """The receiver loop: until count, duration, idle timeout or stop."""
    cfg = run.cfg
    t0 = now()
    n = 0
    last_activity: float | None = None
    while not run.stop.is_set():
        if cfg.count is not None and n >= cfg.count:
            run.end_reason = "count"
            return
        t = now()
        if cfg.duration_s is not None and t - t0 >= cfg.duration_s:
            run.end_reason = "duration"
            return
        if (cfg.idle_timeout_s is not None and last_activity is not None
                and t - last_activity >= cfg.idle_timeout_s):
            run.end_reason = "idle"
            return
        msg = rx.recv(_POLL_S)
        if msg is None:
            continue
        index = next(run.indices)
        n += 1
        run.records.arrival(msg.t_arrival)
        if msg.oversize:
            run.records.sequence(index, None, None)
            run.quarantine(index, msg.payload,
                           f"oversize: {msg.nbytes} bytes > max_message_bytes {cfg.max_message_bytes}",
                           msg.nbytes, msg.t_arrival)
        else:
            on_message(msg, index)
        # silence is measured from when we were ready to read again, so time spent
        # blocked on a full Q1 does not count as the producer being idle
        last_activity = now()
    run.end_reason = "stopped"


def _parse_in_receiver(run: _Run, rx: Any) -> None:
    """Receiver + parser pool + in-order feeder into Q1."""
    cfg = run.cfg
    slots = threading.BoundedSemaphore(2 * cfg.parser_threads)
    order: deque[tuple[int, RawMessage, Future[ParsedBatch]]] = deque()
    order_cv = threading.Condition()
    receiving_done = threading.Event()

    def parse(msg: RawMessage) -> ParsedBatch:
        return run.parser.parse(msg.payload)

    def feeder() -> None:
        try:
            while True:
                with order_cv:
                    while not order and not receiving_done.is_set():
                        order_cv.wait(_POLL_S)
                    if not order:
                        return
                    index, msg, fut = order.popleft()
                try:
                    pb = fut.result()
                except ParseError as e:
                    run.records.sequence(index, e.rank, e.seq)
                    run.quarantine(index, msg.payload, str(e), msg.nbytes, msg.t_arrival, e.rank, e.seq)
                    slots.release()
                    continue
                run.records.sequence(index, pb.rank, pb.seq)
                host = BatchTimes(index, pb.rank, pb.seq, pb.events, msg.nbytes, msg.t_arrival,
                                  pb.t_parse_start, pb.t_parse_end)
                item = Q1Item(host, data=pb.data, release=pb.release)
                if not run.put(item):
                    # Q1 closed under us (a failure elsewhere): account it, do not lose it
                    run.quarantine(index, None, "aborted: Q1 closed before the batch was queued",
                                   msg.nbytes, msg.t_arrival, pb.rank, pb.seq)
                slots.release()
        except BaseException as exc:  # a bug here must end the run, not hang it
            run.fail(exc)

    with ThreadPoolExecutor(cfg.parser_threads, thread_name_prefix="parser") as pool:
        feed = threading.Thread(target=feeder, name="q1-feeder", daemon=True)
        feed.start()

        def on_message(msg: RawMessage, index: int) -> None:
            while not slots.acquire(timeout=_POLL_S):
                if run.errors:
                    raise RuntimeError("feeder failed")
            fut = pool.submit(parse, msg)
            with order_cv:
                order.append((index, msg, fut))
                order_cv.notify()

        try:
            _receive(run, rx, on_message)
        finally:
            receiving_done.set()
            with order_cv:
                order_cv.notify_all()
            feed.join()


def _parse_in_actor(run: _Run, rx: Any) -> None:
    """Receiver putting raw bytes into Q1 (the inference loop parses)."""

    def on_message(msg: RawMessage, index: int) -> None:
        host = BatchTimes(index, None, None, 0, msg.nbytes, msg.t_arrival)
        if not run.put(Q1Item(host, raw=msg.payload)):
            run.records.sequence(index, None, None)
            run.quarantine(index, None, "aborted: Q1 closed before the message was queued",
                           msg.nbytes, msg.t_arrival)

    _receive(run, rx, on_message)


def _random_producer(run: _Run) -> None:
    from .random_source import RandomSource

    cfg = run.cfg
    rc = cfg.random
    src = RandomSource(rc.batch_size, rc.shape, rc.dtype, run.engine.host_array, fresh=rc.fresh)
    t0 = now()
    n = 0
    while not run.stop.is_set():
        if cfg.count is not None and n >= cfg.count:
            run.end_reason = "count"
            return
        if cfg.duration_s is not None and now() - t0 >= cfg.duration_s:
            run.end_reason = "duration"
            return
        data, release, ts, te = src.next()
        index = next(run.indices)
        n += 1
        run.records.arrival(te)
        run.records.sequence(index, None, None)
        host = BatchTimes(index, None, None, rc.batch_size, src.nbytes, te, ts, te)
        if not run.put(Q1Item(host, data=data, release=release)):
            run.quarantine(index, None, "aborted: Q1 closed before the batch was queued",
                           src.nbytes, te)
            return
    run.end_reason = "stopped"


def _producer_thread(run: _Run, target: Callable[[], None]) -> threading.Thread:
    def body() -> None:
        try:
            target()
        except BaseException as exc:
            run.fail(exc)
        finally:
            run.producers_done.set()

    t = threading.Thread(target=body, name="producer", daemon=True)
    t.start()
    return t


# --------------------------------------------------------------------------
# the inference loop


def report_progress(records: Any, q1: Any, t_start: float,
                    on_progress: Callable[[dict[str, Any]], None] | None) -> tuple[dict[str, Any], bool]:
    """Log the live line (and the seed's starvation warning when Q1 is under 30 %
    full) and pass the snapshot to ``on_progress``. Returns the snapshot and
    whether it warned."""
    snap = records.snapshot()
    depth = q1.depth()
    util = depth / q1.maxsize
    elapsed = now() - t_start
    snap.update(q1_depth=depth, q1_maxsize=q1.maxsize, q1_utilisation=util,
                elapsed_s=elapsed, final=False,
                samples_per_s=snap["samples"] / elapsed if elapsed > 0 else None)
    log.info("batches %d  samples/s %.1f  Q1 %d/%d (%.0f%%)  GPU busy %s",
             snap["batches"], snap["samples_per_s"] or 0.0, depth, q1.maxsize, util * 100,
             "-" if snap["gpu_busy"] is None else f"{snap['gpu_busy'] * 100:.0f}%")
    starved = util < STARVATION_UTILISATION
    if starved:
        log.warning("potential data starvation: Q1 utilisation %.0f%% (%d of %d batches)",
                    util * 100, depth, q1.maxsize)
    if on_progress is not None:
        on_progress(snap)
    return snap, starved


class _Inference:
    def __init__(self, run: _Run, on_progress: Callable[[dict[str, Any]], None] | None) -> None:
        self.run = run
        self.on_progress = on_progress
        self.got = 0
        self.max_index = -1
        self.q1_reordered = 0
        self.starvation_warnings = 0
        self.t_start = now()
        self.device = 0  # which inference device (actor) this loop feeds, for the records

    def finish(self, done: list[Any]) -> None:
        run = self.run
        for fin in done:
            host: BatchTimes = fin.meta
            t_put_end = run.put_end(host.index)
            if t_put_end is not None:
                host.t_q1_put_end = t_put_end
            run.records.batch_done(host, fin, self.device)
            if run.records.batches % run.cfg.log_every_batches == 0:
                self.progress()

    def progress(self) -> dict[str, Any]:
        """The live line (and the seed's starvation warning), and ``on_progress``."""
        snap, starved = report_progress(self.run.records, self.run.q1, self.t_start,
                                        self.on_progress)
        self.starvation_warnings += starved
        return snap

    def loop(self) -> None:
        run = self.run
        engine = run.engine
        from simstream.pipeline.engine import WorkItem

        t_wait: float | None = None
        while True:
            if t_wait is None:
                t_wait = now()
            # decided before the get: an empty get after the last put means drained
            # (a put that lands during the get is not missed)
            drained = run.producers_done.is_set() and self.got >= run.put_count
            item = run.q1.get(_POLL_S)
            if item is None:
                if run.errors:
                    return
                if drained:
                    break
                continue
            t_got = now()
            self.got += 1
            host: BatchTimes = item.host
            host.t_q1_get_start, host.t_q1_get_end = t_wait, t_got
            t_wait = None
            if host.index < self.max_index:
                self.q1_reordered += 1
            self.max_index = max(self.max_index, host.index)
            data, release = item.data, item.release
            if item.raw is not None:
                try:
                    pb = run.parser.parse(item.raw)
                except ParseError as e:
                    run.records.sequence(host.index, e.rank, e.seq)
                    run.put_end(host.index)
                    run.quarantine(host.index, item.raw, str(e), host.nbytes, host.t_arrival,
                                   e.rank, e.seq)
                    continue
                run.records.sequence(host.index, pb.rank, pb.seq)
                host.rank, host.seq, host.events = pb.rank, pb.seq, pb.events
                host.t_parse_start, host.t_parse_end = pb.t_parse_start, pb.t_parse_end
                data, release = pb.data, pb.release
            self.finish(engine.submit(WorkItem(host.index, data, release, host)))
        self.finish(engine.flush())


# --------------------------------------------------------------------------
# the entry point


def summary_extra(cfg: ConsumerConfig, *, t_start: float, t_end: float, end_reason: str,
                  device: str, device_description: str, q1_stats: Any, reordered: int,
                  receiver: dict[str, Any] | None, starvation_warnings: int,
                  clock_error_s: float, ray_address: str | None) -> dict[str, Any]:
    """The run facts summary.json holds besides the records' own (docs/formats.md)."""
    return {
        "wall_s": t_end - t_start,
        "t_start": t_start,
        "t_end": t_end,
        "end_reason": end_reason,
        "device": device,
        "device_description": device_description,
        "mode": cfg.mode,
        "transport": cfg.transport if cfg.mode == "socket" else None,
        "url": cfg.url if cfg.mode == "socket" else None,
        "urls": cfg.urls if cfg.mode == "socket" else None,
        "role": cfg.role if cfg.mode == "socket" else None,
        "parse_in": cfg.parse_in,
        "queue_backend": cfg.queue.backend,
        "ray_address": ray_address,
        "buffers": cfg.buffers,
        "model": dict(cfg.model),
        "backpressure_events": q1_stats.backpressure_events,
        "q1": {**q1_stats.as_dict(), "reordered": reordered},
        "receiver": receiver,
        "starvation_warnings": starvation_warnings,
        "clock_error_s": clock_error_s,
        "config": cfg.model_dump(mode="json"),
    }


def device_facts(engine: Any) -> tuple[str, str]:
    """(device, its description) of an engine, for the summary; an engine without a
    describable device (a test double) gives its str twice."""
    device = getattr(engine, "device", "?")
    try:
        from simstream.pipeline.device import describe

        return str(device), describe(device)  # type: ignore[arg-type]
    except Exception:
        return str(device), str(device)


def _build_engine(cfg: ConsumerConfig) -> Any:
    from simstream.pipeline.engine import Engine
    from simstream.pipeline.models import build_model

    model = build_model(dict(cfg.model))
    return Engine(model, device=cfg.device, buffers=cfg.buffers, autocast_bf16=cfg.autocast_bf16,
                  host_buffers=host_buffers_needed(cfg))


def host_buffers_needed(cfg: ConsumerConfig) -> int:
    """The most host batch buffers a run holds at once: Q1 full, every parser slot
    busy, every engine buffer in flight (and one being filled by the random source)."""
    return cfg.queue.maxsize + 2 * cfg.parser_threads + cfg.buffers + 1


def run_consumer(
    config: ConsumerConfig,
    out_dir: str | Path,
    *,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    engine: Any = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    warmup: bool = True,
) -> dict[str, Any]:
    """Run one consumer into ``out_dir`` (docs/formats.md); returns the summary.

    ``ready`` is set once the socket is bound or connecting (random mode: once the
    engine is up). Setting ``stop`` ends receiving; what was received is still
    processed. ``engine`` replaces the one built from ``config.model`` (tests).
    ``on_progress(snapshot)`` is called every ``log_every_batches`` batches and at
    the end. Raises UsageError for bad settings (address in use, device missing,
    model), StageError if inference fails.
    """
    cfg = config
    if cfg.queue.backend == "ray" and cfg.ray.actors and cfg.mode == "socket":
        if engine is not None:
            raise ValueError("an injected engine cannot run in Ray inference actors: "
                             "set ray.actors false")
        from .ray_consumer import run_ray_consumer

        return run_ray_consumer(cfg, out_dir, ready=ready, stop=stop, on_progress=on_progress,
                                warmup=warmup)
    stop = stop or threading.Event()
    own_engine = engine is None
    records: RunRecords | None = None
    q1 = None
    rx = None
    sampler = None
    run: _Run | None = None
    try:
        # "address in use" is the commonest mistake: find it before the slow model
        # build, but listen only once the engine is warm, so a producer started when
        # the port listens is not held back by the warm-up (it would show as blocking)
        if cfg.mode == "socket" and cfg.role == "bind":
            check_bindable(cfg.url)
        if engine is None:
            engine = _build_engine(cfg)
        if warmup and hasattr(engine, "warmup"):
            rc = cfg.random
            engine.warmup((rc.batch_size, *rc.shape), np.dtype(rc.dtype), batches=cfg.buffers)
        # Q1 before the socket: a Ray backend takes seconds to start, and a producer
        # that connected meanwhile would be held back by a consumer not yet reading
        q1 = make_q1(cfg.queue.backend, cfg.queue.maxsize, cfg.queue.shards,
                     cfg.queue.poll_interval_ms, cfg.ray.address, cfg.ray.num_cpus)
        if cfg.mode == "socket":
            rx = open_receiver(cfg.transport, cfg.url, cfg.role, cfg.max_message_bytes,
                               cfg.rcvhwm)
            if cfg.binds_all_interfaces:
                log.warning("binding %s: listening on all interfaces, not only loopback", cfg.url)
        records = RunRecords(out_dir)
        run = _Run(cfg, records, q1, engine, stop)
        sampler = Q1Sampler(q1, cfg.queue.sample_interval_ms / 1000.0, records.q1_sample).start()
        t_start = now()
        if rx is not None:
            target = _parse_in_receiver if cfg.parse_in == "receiver" else _parse_in_actor
            producer = _producer_thread(run, lambda: target(run, rx))
        else:
            producer = _producer_thread(run, lambda: _random_producer(run))
        if ready is not None:
            ready.set()
        inference = _Inference(run, on_progress)
        try:
            inference.loop()
        except BaseException as exc:
            run.fail(exc)
        if run.errors:
            q1.close()  # unblock a producer waiting for room
        producer.join(timeout=30.0)
        t_end = now()
        sampler.sample_once()
        sampler.stop()
        sampler = None
        if run.errors:
            raise run.errors[0]
        device, device_desc = device_facts(engine)
        extra = summary_extra(
            cfg, t_start=t_start, t_end=t_end, end_reason=run.end_reason, device=device,
            device_description=device_desc, q1_stats=q1.stats, reordered=inference.q1_reordered,
            receiver=rx.stats.as_dict() if rx is not None else None,
            starvation_warnings=inference.starvation_warnings,
            clock_error_s=getattr(engine, "clock_error_s", 0.0),
            ray_address=getattr(q1, "address", None),
        )
        summary = records.close(extra)
        records = None
        if on_progress is not None:
            on_progress({**summary, "final": True})
        return summary
    finally:
        stop.set()
        if sampler is not None:
            sampler.stop()
        if run is not None:
            with contextlib.suppress(Exception):
                run.parser.close()  # parse-isolation workers, if any
        if q1 is not None:
            q1.close()
        if rx is not None:
            rx.close()
        if records is not None:
            with contextlib.suppress(Exception):
                records.close({"end_reason": "error"})
        if own_engine and engine is not None:
            with contextlib.suppress(Exception):
                engine.close()
