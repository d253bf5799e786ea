"""One clock for every record: Unix time in seconds (float), monotonic within a process.

``time.time()`` can step (NTP); ``time.perf_counter()`` has no epoch. ``now()`` is
perf_counter shifted once, at import, onto the Unix epoch, so intervals never go
backwards and records of processes on one host can be laid on one timeline.
"""

from __future__ import annotations

import time


def _epoch_offset(samples: int = 9) -> float:
    """``time.time() - time.perf_counter()``, read so that a preemption between the two
    reads cannot shift it: each sample brackets the wall-clock read between two
    perf_counter reads and the tightest bracket wins. One bare subtraction is off by
    however long the process was descheduled between its reads (over 100 ms on a
    loaded machine), and every process on a host computes its own offset: records of
    two processes (a Ray actor's stamps beside its caller's) would disagree by that."""
    best_width, best = float("inf"), 0.0
    for _ in range(samples):
        t0 = time.perf_counter()
        wall = time.time()
        t1 = time.perf_counter()
        if t1 - t0 < best_width:
            best_width, best = t1 - t0, wall - (t0 + t1) / 2
    return best


EPOCH_OFFSET: float = _epoch_offset()


def now() -> float:
    """Current time, Unix seconds."""
    return EPOCH_OFFSET + time.perf_counter()
