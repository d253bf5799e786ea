"""The inference stage: Q1 -> engine.submit -> records, N-way buffered.

``InferenceLoop.loop`` takes items off Q1 until the producers are done and Q1 is
drained (or a stage failed), parses raw bytes itself with ``parse_in: actor``,
submits each batch to the engine and records every finished one. Every
``log_every_batches`` batches it logs the live line and the starvation warning
(Q1 under ``STARVATION_UTILISATION`` full, the original codebase's threshold).

``build_engine`` makes the engine a config asks for. The engine and the models
import torch, so they are imported when an engine is built or a loop starts,
not with this module (the Ray driver and the tests of other stages need no torch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .config import ConsumerConfig
from .context import POLL_S, Q1Item, StageContext
from .parse import ParseError
from .records import BUSY_FIGURES, STARVATION_UTILISATION, BatchTimes, busy_label

__all__ = ["STARVATION_UTILISATION", "InferenceLoop", "build_engine", "busy_words",
           "host_buffers_needed", "report_progress", "warm_up"]

log = logging.getLogger("pipeline.consumer")

Progress = Callable[[dict[str, Any]], None]


def host_buffers_needed(cfg: ConsumerConfig, receivers: int | None = None) -> int:
    """The most host batch buffers a run holds at once: Q1 full, every parser slot
    busy, every engine buffer in flight (and one being filled by the random source);
    in the fast layout also one per receiver (each reads its next message into a
    buffer of the pool while the parser slots are taken): ``receivers``, by default
    one per address."""
    if receivers is None:
        receivers = len(cfg.urls) if cfg.mode == "socket" and cfg.layout == "fast" else 0
    return cfg.queue.maxsize + 2 * cfg.parser_threads + cfg.buffers + 1 + receivers


def build_engine(cfg: ConsumerConfig, host_buffers: int | None = None) -> Any:
    """The engine ``cfg`` asks for (model, device, buffers), keeping (and reserving at
    warm-up) ``host_buffers`` host buffers, by default ``host_buffers_needed(cfg)``:
    an engine fed from elsewhere (production's Ray inference actor, whose batches
    come out of the object store) passes what it holds itself. Raises UsageError for
    a missing device or a bad model."""
    from .engine import Engine  # torch
    from .models import build_model  # torch

    model = build_model(dict(cfg.model))
    if host_buffers is None:
        host_buffers = host_buffers_needed(cfg)
    return Engine(model, device=cfg.device, buffers=cfg.buffers, autocast_bf16=cfg.autocast_bf16,
                  host_buffers=host_buffers)


def warm_up(engine: Any, cfg: ConsumerConfig) -> None:
    """Run the engine on ``buffers`` batches of the random source's shape (a test
    double without ``warmup`` is left alone)."""
    if hasattr(engine, "warmup"):
        rc = cfg.random
        engine.warmup((rc.batch_size, *rc.shape), np.dtype(rc.dtype), batches=cfg.buffers)


def busy_words(figures: Mapping[str, Any], device: str | None) -> str:
    """The busy figures (simstream.records.contract.BUSY_FIGURES) as the report words
    them: ``inference loop busy 47%  device busy (cpu) 66%  device compute busy 42%``."""
    return "  ".join(f"{busy_label(k, device if k == 'device_busy' else None)} "
                     + ("-" if figures.get(k) is None else f"{figures[k] * 100:.0f}%")
                     for k in BUSY_FIGURES)


def report_progress(records: Any, q1: Any, t_start: float, on_progress: Progress | None,
                    t_now: float) -> tuple[dict[str, Any], bool]:
    """Log the live line (and the starvation warning when Q1 is under 30 % full)
    and pass the snapshot to ``on_progress``. Returns the snapshot and whether it
    warned."""
    snap = records.snapshot()
    depth = q1.depth()
    util = depth / q1.maxsize
    elapsed = t_now - t_start
    snap.update(q1_depth=depth, q1_maxsize=q1.maxsize, q1_utilisation=util,
                elapsed_s=elapsed, final=False,
                samples_per_s=snap["samples"] / elapsed if elapsed > 0 else None)
    log.info("batches %d  samples/s %.1f  Q1 %d/%d (%.0f%%)  %s",
             snap["batches"], snap["samples_per_s"] or 0.0, depth, q1.maxsize, util * 100,
             busy_words(snap, snap.get("device")))
    starved = util < STARVATION_UTILISATION
    if starved:
        log.warning("potential data starvation: Q1 utilisation %.0f%% (%d of %d batches)",
                    util * 100, depth, q1.maxsize)
    if on_progress is not None:
        on_progress(snap)
    return snap, starved


class InferenceLoop:
    """Q1 -> engine for one device. ``device``: its number in the records (a Ray
    inference actor's); ``report``: False where someone else reports progress
    (the Ray driver)."""

    def __init__(self, ctx: StageContext, on_progress: Progress | None, *, device: int = 0,
                 report: bool = True) -> None:
        self.ctx = ctx
        self.on_progress = on_progress
        self.device = device
        self.report = report
        self.got = 0
        self.max_index = -1
        self.q1_reordered = 0
        self.starvation_warnings = 0
        self.t_start = ctx.clock()

    def finish(self, done: list[Any]) -> None:
        """Record the engine's finished batches."""
        ctx = self.ctx
        for fin in done:
            host: BatchTimes = fin.meta
            t_put_end = ctx.put_end(host.index)
            if t_put_end is not None:
                host.t_q1_put_end = t_put_end
            ctx.records.batch_done(host, fin, self.device)
            if ctx.records.batches % ctx.cfg.log_every_batches == 0:
                self.progress()

    def progress(self) -> dict[str, Any]:
        """The live line (and the starvation warning), and ``on_progress``."""
        if not self.report:
            return {}
        snap, starved = report_progress(self.ctx.records, self.ctx.q1, self.t_start,
                                        self.on_progress, self.ctx.clock())
        self.starvation_warnings += starved
        return snap

    def _parse_raw(self, item: Q1Item) -> tuple[Any, Any] | None:
        """``parse_in: actor``: parse the item's raw bytes into its host times;
        (data, release), or None when it was quarantined."""
        ctx, host = self.ctx, item.host
        try:
            pb = ctx.parser.parse(item.raw)
        except ParseError as e:
            ctx.records.sequence(host.index, e.rank, e.seq, e.epoch)
            ctx.put_end(host.index)
            ctx.quarantine(host.index, item.raw, str(e), host.nbytes, host.t_arrival,
                           e.rank, e.seq)
            return None
        ctx.records.sequence(host.index, pb.rank, pb.seq, pb.epoch)
        host.rank, host.seq, host.events = pb.rank, pb.seq, pb.events
        host.t_parse_start, host.t_parse_end = pb.t_parse_start, pb.t_parse_end
        return pb.data, pb.release

    def _took(self, item: Q1Item, t_wait: float, t_got: float) -> None:
        host: BatchTimes = item.host
        self.got += 1
        host.t_q1_get_start, host.t_q1_get_end = t_wait, t_got
        if host.index < self.max_index:
            self.q1_reordered += 1
        self.max_index = max(self.max_index, host.index)

    def loop(self) -> None:
        """Until drained (producers done, every put taken) or a stage failed."""
        from .engine import WorkItem  # torch

        ctx = self.ctx
        t_wait: float | None = None
        while True:
            if t_wait is None:
                t_wait = ctx.clock()
            # decided before the get: an empty get after the last put means drained
            # (a put that lands during the get is not missed)
            drained = ctx.producers_done.is_set() and self.got >= ctx.put_count
            item = ctx.q1.get(POLL_S)
            if item is None:
                if ctx.errors:
                    return
                if drained:
                    break
                # Q1 is empty: record the batches the engine has finished meanwhile
                # (else the last of a burst waits for the next burst, or the stop)
                done = getattr(ctx.engine, "done", None)
                if done is not None:
                    self.finish(done())
                continue
            self._took(item, t_wait, ctx.clock())
            t_wait = None
            data, release = item.data, item.release
            if item.raw is not None:
                parsed = self._parse_raw(item)
                if parsed is None:
                    continue
                data, release = parsed
            host = item.host
            self.finish(ctx.engine.submit(WorkItem(host.index, data, release, host)))
        self.finish(ctx.engine.flush())
