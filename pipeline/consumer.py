"""The consumer: receive -> parse -> Q1 -> N-way buffered inference, every stage measured.

The stages are modules of their own (``context``, ``ingest``, ``parse``,
``inference``, ``summary``); two runners compose them:

- ``pipeline.local_consumer``: threads of one process (the Q1 backend may still
  put Q1 in another process or in Ray shard actors);
- ``pipeline.ray_consumer``: receiver, Q1 shard and inference actors on Ray, as
  production lays them out (``queue.backend: ray`` with ``ray.actors: true`` in
  socket mode).

``run_consumer`` picks the runner a config asks for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simstream.clock import now

from .config import ConsumerConfig
from .context import Clock, Q1Item
from .local_consumer import run_local_consumer
from .ray_consumer import run_ray_consumer

__all__ = ["Q1Item", "run_consumer"]


def run_consumer(
    config: ConsumerConfig,
    out_dir: str | Path,
    *,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    engine: Any = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    warmup: bool = True,
    clock: Clock = now,
) -> dict[str, Any]:
    """Run one consumer into ``out_dir`` (docs/formats.md); returns the summary.

    ``ready`` is set once the socket is bound or connecting (random mode: once the
    engine is up). Setting ``stop`` ends receiving; what was received is still
    processed. ``engine`` replaces the one built from ``config.model`` (tests).
    ``on_progress(snapshot)`` is called every ``log_every_batches`` batches and at
    the end. Raises UsageError for bad settings (address in use, device missing,
    model), StageError if inference fails. ``clock`` is where the stages read the
    time (``simstream.clock.now``; tests pass a fake one), as the producer's
    ``wall_clock``; Ray actors run in other processes and keep the global clock.
    """
    cfg = config
    if cfg.queue.backend == "ray" and cfg.ray.actors and cfg.mode == "socket":
        if engine is not None:
            raise ValueError("an injected engine cannot run in Ray inference actors: "
                             "set ray.actors false")
        if clock is not now:
            raise ValueError("an injected clock cannot run in Ray actors: set ray.actors false")
        return run_ray_consumer(cfg, out_dir, ready=ready, stop=stop, on_progress=on_progress,
                                warmup=warmup)
    return run_local_consumer(cfg, out_dir, ready=ready, stop=stop, engine=engine,
                              on_progress=on_progress, warmup=warmup, clock=clock)
