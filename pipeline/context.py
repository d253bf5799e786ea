"""What the consumer's stages share: the run's context and what travels through Q1.

``StageContext`` is the meeting point of one run's stages (ingest, inference) in
one process or one Ray actor: the config, where records go, Q1, the engine's host
memory, the stop event, the clock every stage stamps its times with, and the
put/get bookkeeping that lets the inference stage know when Q1 is drained.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from simstream.clock import now

from .config import ConsumerConfig
from .parse import Parser
from .q1 import Q1Closed
from .records import BatchTimes

__all__ = ["POLL_S", "Clock", "Q1Item", "StageContext"]

log = logging.getLogger("pipeline.consumer")

POLL_S = 0.05  # how long a blocking call waits before looking at the stop flag

#: what stages read the time from: Unix seconds (``simstream.clock.now`` by default)
Clock = Callable[[], float]


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


class StageContext:
    """Shared state of one consumer run (the stages' meeting point).

    ``records``: a RunRecords or anything with its record calls (a Ray actor's
    relay). ``engine``: anything with ``host_array(shape, dtype)`` (the parser's
    host memory) and, for the inference stage, ``submit``/``flush``. ``stripe``
    (i, n): this receiver numbers its messages i, i + n, i + 2n... A queue whose
    shards stamp the put's end in the item needs no side table (``track_put_end``
    False). ``clock``: where every stage reads the time."""

    def __init__(self, cfg: ConsumerConfig, records: Any, q1: Any, engine: Any,
                 stop: threading.Event, *, stripe: tuple[int, int] = (0, 1),
                 track_put_end: bool = True, clock: Clock = now) -> None:
        self.cfg = cfg
        self.records = records
        self.q1 = q1
        self.engine = engine
        self.stop = stop
        self.clock = clock
        self.indices = itertools.count(stripe[0], stripe[1])
        self.track_put_end = track_put_end
        self.put_count = 0  # items placed in Q1
        self.producers_done = threading.Event()
        self.errors: list[BaseException] = []
        self.end_reason = "running"
        self._put_cv = threading.Condition()
        self._put_end: dict[int, float] = {}
        self.parser = Parser(cfg.fields, cfg.expected_fields, cfg.event_shape, engine.host_array,
                             isolation=cfg.parse_isolation, workers=cfg.parser_threads,
                             timeout_s=cfg.parse_timeout_s, clock=clock,
                             limits=cfg.decode_limits)

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.stop.set()

    # -- Q1 put with its times recorded -----------------------------------------------
    def put(self, item: Q1Item) -> bool:
        """Put into Q1, waiting for room; False when the queue closed first."""
        item.host.t_q1_put_start = self.clock()
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
