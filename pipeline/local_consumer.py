"""The in-process runner: receive -> parse -> Q1 -> N-way buffered inference, every
stage measured, in threads of one process (the Q1 backend may put Q1 itself in
another process or in Ray shard actors).

Threads, in the order a batch meets them (``pipeline.ingest``, ``pipeline.inference``):

- receiver (socket mode) with its parser pool and in-order feeder (``parse_in:
  receiver``), or putting raw bytes into Q1 (``parse_in: actor``); or, with
  ``layout: fast``, one receiver per address and parsers putting straight into Q1
  (``pipeline.fast_ingest``);
- random producer (random mode): makes batches in host memory and puts them in Q1;
- Q1 sampler: occupancy every ``sample_interval_ms``;
- inference loop (the calling thread): Q1 -> engine.submit -> records.

The run ends at ``count`` messages, after ``duration_s``, after ``idle_timeout_s``
of silence following the first message, or when ``stop`` is set; whatever was
received by then is still parsed, queued and processed before the summary is
written, so every received message is accounted for.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simstream.clock import now

from .config import ConsumerConfig
from .context import Clock, Q1Item, StageContext
from .fast_ingest import fast_rcvbuf, merged_receiver_stats, parse_in_fast
from .inference import InferenceLoop, build_engine, warm_up
from .ingest import parse_in_actor, parse_in_receiver, producer_thread, random_producer
from .q1 import Q1Sampler, make_q1
from .receiver import check_bindable, open_receiver
from .records import RunRecords
from .summary import device_facts, host_pool_stats, summary_extra
from .zmtp_into import IntoReceiver

__all__ = ["run_local_consumer"]

log = logging.getLogger("pipeline.consumer")


class _LocalResources:
    """What one in-process run opens, closed in reverse whatever happens."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.own_engine = engine is None
        self.records: RunRecords | None = None
        self.q1: Any = None
        self.rx: Any = None
        self.extra_rx: list[Any] = []  # layout fast: the sockets of the other addresses
        self.sampler: Q1Sampler | None = None
        self.ctx: StageContext | None = None

    def open(self, cfg: ConsumerConfig, out_dir: str | Path, stop: threading.Event,
             warmup: bool, clock: Clock) -> StageContext:
        # "address in use" is the commonest mistake: find it before the slow model
        # build, but listen only once the engine is warm, so a producer started when
        # the port listens is not held back by the warm-up (it would show as blocking)
        if cfg.mode == "socket" and cfg.role == "bind":
            for url in cfg.urls:
                check_bindable(url)
        if self.engine is None:
            self.engine = build_engine(cfg)
        if warmup:
            warm_up(self.engine, cfg)
        # Q1 before the socket: a Ray backend takes seconds to start, and a producer
        # that connected meanwhile would be held back by a consumer not yet reading
        self.q1 = make_q1(cfg.queue.backend, cfg.queue.maxsize, cfg.queue.shards,
                          cfg.queue.poll_interval_ms, cfg.ray.address, cfg.ray.num_cpus,
                          cfg.ray.q1_items, preload=(Q1Item.__module__,))
        if cfg.mode == "socket" and cfg.layout == "fast":
            rcvbuf = fast_rcvbuf()
            first, *rest = [_fast_receiver(cfg, url, self.engine, clock, rcvbuf)
                            for url in cfg.urls]
            self.rx, self.extra_rx = first, rest
        elif cfg.mode == "socket":
            self.rx = open_receiver(cfg.transport, cfg.url, cfg.role, cfg.max_message_bytes,
                                    cfg.rcvhwm, clock=clock)
            if cfg.binds_all_interfaces:
                log.warning("binding %s: listening on all interfaces, not only loopback", cfg.url)
        self.records = RunRecords(out_dir)
        self.records.device = device_facts(self.engine)[0]
        self.ctx = StageContext(cfg, self.records, self.q1, self.engine, stop, clock=clock)
        self.sampler = Q1Sampler(self.q1, cfg.queue.sample_interval_ms / 1000.0,
                                 self.records.q1_sample).start()
        return self.ctx

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.ctx is not None:
            with contextlib.suppress(Exception):
                self.ctx.parser.close()  # parse-isolation workers, if any
        if self.q1 is not None:
            self.q1.close()
        for rx in [self.rx, *self.extra_rx]:
            if rx is not None:
                rx.close()
        if self.records is not None:
            with contextlib.suppress(Exception):
                self.records.close({"end_reason": "error"})
        if self.own_engine and self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.close()


def _fast_receiver(cfg: ConsumerConfig, url: str, engine: Any, clock: Clock,
                   rcvbuf: int | None) -> Any:
    """The fast layout's receiver for one address: for zmq bound here (and decoding
    in this process), ``IntoReceiver``, reading each message once, straight into
    the engine's host pool; otherwise the layout's usual one."""
    if cfg.transport == "zmq" and cfg.role == "bind" and cfg.parse_isolation == "none":
        return IntoReceiver(url, cfg.max_message_bytes, engine.host_array, clock=clock,
                            rcvbuf=rcvbuf)
    return open_receiver(cfg.transport, url, cfg.role, cfg.max_message_bytes, cfg.rcvhwm,
                         clock=clock, rcvbuf=rcvbuf)


def _start_ingest(ctx: StageContext, rx: Any, extra_rx: list[Any]) -> threading.Thread:
    if rx is None:
        return producer_thread(ctx, lambda: random_producer(ctx))
    if ctx.cfg.layout == "fast":
        return producer_thread(ctx, lambda: parse_in_fast(ctx, [rx, *extra_rx]))
    target = parse_in_receiver if ctx.cfg.parse_in == "receiver" else parse_in_actor
    return producer_thread(ctx, lambda: target(ctx, rx))


def _receiver_record(cfg: ConsumerConfig, res: _LocalResources) -> dict[str, Any] | None:
    if res.rx is None:
        return None
    if cfg.layout == "fast":
        return merged_receiver_stats([res.rx, *res.extra_rx])
    return dict(res.rx.stats.as_dict())


def run_local_consumer(
    cfg: ConsumerConfig,
    out_dir: str | Path,
    *,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    engine: Any = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    warmup: bool = True,
    clock: Clock = now,
) -> dict[str, Any]:
    """One in-process consumer run into ``out_dir``; returns the summary (as
    :func:`pipeline.consumer.run_consumer`, which calls this). ``clock``: where the
    stages read the time (``simstream.clock.now``)."""
    stop = stop or threading.Event()
    res = _LocalResources(engine)
    try:
        ctx = res.open(cfg, out_dir, stop, warmup, clock)
        t_start = clock()
        producer = _start_ingest(ctx, res.rx, res.extra_rx)
        if ready is not None:
            ready.set()
        inference = InferenceLoop(ctx, on_progress)
        try:
            inference.loop()
        except BaseException as exc:
            ctx.fail(exc)
        if ctx.errors:
            res.q1.close()  # unblock a producer waiting for room
        producer.join(timeout=30.0)
        t_end = clock()
        assert res.sampler is not None and res.records is not None
        res.sampler.sample_once()
        res.sampler.stop()
        res.sampler = None
        if ctx.errors:
            raise ctx.errors[0]
        device, device_desc = device_facts(res.engine)
        extra = summary_extra(
            cfg, t_start=t_start, t_end=t_end, end_reason=ctx.end_reason, device=device,
            device_description=device_desc, q1_stats=res.q1.stats,
            reordered=inference.q1_reordered,
            receiver=_receiver_record(cfg, res),
            starvation_warnings=inference.starvation_warnings,
            clock_error_s=getattr(res.engine, "clock_error_s", 0.0),
            ray_address=getattr(res.q1, "address", None),
            host_pool=host_pool_stats(res.engine),
        )
        summary = res.records.close(extra)
        res.records = None
        if on_progress is not None:
            on_progress({**summary, "final": True})
        return summary
    finally:
        stop.set()
        res.close()
