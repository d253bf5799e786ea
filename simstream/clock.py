"""One clock for every record: Unix time in seconds (float), monotonic within a process.

``time.time()`` can step (NTP); ``time.perf_counter()`` has no epoch. ``now()`` is
perf_counter shifted once, at import, onto the Unix epoch, so intervals never go
backwards and records of processes on one host can be laid on one timeline.
"""

from __future__ import annotations

import time

EPOCH_OFFSET: float = time.time() - time.perf_counter()


def now() -> float:
    """Current time, Unix seconds."""
    return EPOCH_OFFSET + time.perf_counter()
