"""Resident memory that follows what a streaming process holds.

A consumer or emitter allocates and frees one message-sized buffer (megabytes)
per message, from several threads. glibc serves such blocks from the heap
arenas of whichever threads touch them once its dynamic mmap threshold has
risen (the first free of a large mapped block raises it, up to 32 MiB), and the
arenas keep what is freed. Resident memory then ratchets up to the high-water
mark of every arena, in steps that look like a leak in a long run (bench/soak.py:
a consumer climbing from 325 to 546 MiB in 3 minutes of bursts).

Two cures, measured on the development machine with 8 MiB messages:
- a fixed mmap threshold (``mallopt(M_MMAP_THRESHOLD)``) maps and unmaps every
  message: resident memory is exact, but each message costs a fresh,
  kernel-zeroed mapping: 5.2 ms per 8 MiB message against 0.14 ms (page faults),
  too much for a consumer that measures throughput;
- ``malloc_trim(0)`` once a second (what :class:`Trimmer` does) hands the free
  pages of every arena back to the kernel (``MADV_DONTNEED``) and leaves the
  allocator's fast reuse alone; the free memory returns within a second.

Not glibc (musl, macOS): nothing to do, :func:`libc_trim` is None.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

__all__ = ["Trimmer", "libc_trim"]


def libc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)`` as a callable, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        fn = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: int(fn(0))


class Trimmer:
    """Calls ``trim`` every ``interval_s`` seconds on a daemon thread until ``stop``.

    ``trim`` defaults to :func:`libc_trim`; without one, ``start`` does nothing.
    ``calls`` counts the trims done. Raises ValueError for an interval <= 0.
    """

    def __init__(self, interval_s: float = 1.0, trim: Callable[[], int] | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s {interval_s} is not > 0")
        self.interval_s = interval_s
        self.trim = trim if trim is not None else libc_trim()
        self.calls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Trimmer:
        if self.trim is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.trim is not None
        while not self._stop.wait(self.interval_s):
            self.trim()
            self.calls += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
