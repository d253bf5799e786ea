"""A recycling pool of host buffers to decode batches straight into.

On CUDA the buffers are page-locked (pinned): the H2D stage is then one
``cudaMemcpyAsync`` of the whole batch at full bus speed, and the pinning cost
(``cudaHostAlloc``: milliseconds per hundred megabytes) is paid once per buffer,
not once per batch or per sample as in production. On CPU the pool hands out
plain numpy memory with the same interface, so the consumer code is the same.

``acquire`` returns an array and a ``release`` callable; release returns the
memory to the pool (exactly once: a second call raises). A released buffer is
reused for any later request that fits in it and is at most twice as large, so
a final partial batch reuses a full batch's buffer. At most ``max_free`` free
buffers are kept: when a release would keep one more, the buffer released
longest ago (and not taken since) is dropped, so sizes in use keep their
buffers and a size no longer asked for ages out. ``reserve`` allocates buffers
ahead of a run. Thread-safe.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from simstream.clock import now


@dataclass
class _Buffer:
    capacity: int  # bytes
    storage: np.ndarray  # uint8, the whole buffer
    keepalive: torch.Tensor | None  # the pinned tensor that owns the memory (CUDA only)

    @property
    def address(self) -> int:
        return int(self.storage.ctypes.data)


@dataclass
class PoolStats:
    """Counts since the pool was made; bytes are capacities, not request sizes."""

    allocations: int = 0
    reuses: int = 0
    releases: int = 0
    bytes_allocated: int = 0
    outstanding: int = 0
    alloc_seconds: float = 0.0  # time spent allocating (pinning) new buffers
    reserved: int = 0  # of the allocations, those made before the run (up to ``reserve``)
    sizes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """summary.json's ``host_pool``: the counts, and the buffer sizes as
        {bytes: how many} rather than a list."""
        sizes: dict[str, int] = {}
        for n in self.sizes:
            sizes[str(n)] = sizes.get(str(n), 0) + 1
        return {"allocations": self.allocations, "reserved": self.reserved,
                "reuses": self.reuses, "releases": self.releases,
                "bytes_allocated": self.bytes_allocated,
                "alloc_s": round(self.alloc_seconds, 6), "sizes": sizes}


class PinnedPool:
    """Host buffers, page-locked when ``pin`` is true; see the module docstring.

    ``max_free`` bounds how many released buffers are kept for reuse; beyond it the
    one released longest ago is dropped (and unpinned by torch's host allocator when
    garbage collected).
    """

    def __init__(self, pin: bool, max_free: int = 16) -> None:
        if pin and not torch.cuda.is_available():
            raise RuntimeError("PinnedPool(pin=True) needs a CUDA device")
        self.pin = pin
        self.max_free = max_free
        self.stats = PoolStats()
        self._free: list[_Buffer] = []
        self._lock = threading.Lock()
        self._ranges: dict[int, int] = {}  # address -> capacity, of every live buffer

    def acquire(
        self, shape: tuple[int, ...], dtype: np.dtype | type | str
    ) -> tuple[np.ndarray, Callable[[], None]]:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype`` and its release callable."""
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        buf = self._take(nbytes)
        array = buf.storage[:nbytes].view(dt).reshape(shape)
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    raise RuntimeError("pinned buffer released twice")
                released = True
                self.stats.releases += 1
                self.stats.outstanding -= 1
                self._keep_free(buf)

        return array, release

    def _keep_free(self, buf: _Buffer) -> None:
        """(Lock held.) ``buf`` joins the free list, the most recently released last;
        beyond ``max_free`` the one released longest ago is dropped."""
        self._free.append(buf)
        if len(self._free) > self.max_free:
            old = self._free.pop(0)
            self._ranges.pop(old.address, None)

    def _count_new(self, buf: _Buffer) -> None:
        """(Lock held.) A buffer just allocated, in the counts and the owned ranges."""
        self.stats.allocations += 1
        self.stats.bytes_allocated += buf.capacity
        self.stats.sizes.append(buf.capacity)
        self._ranges[buf.address] = buf.capacity

    def _take(self, nbytes: int) -> _Buffer:
        with self._lock:
            best = None
            for i, buf in enumerate(self._free):
                fits = nbytes <= buf.capacity <= max(2 * nbytes, 4096)
                if fits and (best is None or buf.capacity < self._free[best].capacity):
                    best = i
            if best is not None:
                self.stats.reuses += 1
                self.stats.outstanding += 1
                return self._free.pop(best)
        buf = self._allocate(max(nbytes, 1))
        with self._lock:
            self._count_new(buf)
            self.stats.outstanding += 1
        return buf

    def _allocate(self, nbytes: int) -> _Buffer:
        t0 = now()
        if self.pin:
            tensor = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            storage = tensor.numpy()
            buf = _Buffer(nbytes, storage, tensor)
        else:
            buf = _Buffer(nbytes, np.empty(nbytes, dtype=np.uint8), None)
        self.stats.alloc_seconds += now() - t0
        return buf

    def reserve(self, nbytes: int, count: int, headroom: float = 1 / 64,
                max_bytes: int | None = None) -> float:
        """Allocate (pin) buffers until ``count`` free ones (at most ``max_free``) would
        serve a request of ``nbytes``, so a run that later holds that many at once pins
        nothing on its clock: pinning a few hundred megabytes takes tens of
        milliseconds and holds up the CUDA driver meanwhile. New buffers get
        ``headroom`` more (at least 64 KiB, at most ``nbytes``), so they also take a
        whole message of that batch (its bytes plus the container's, for a receiver
        that reads a message into one buffer) as well as the batch. Free buffers that
        would not serve such a message are dropped first. Every allocation so far
        counts as ``stats.reserved`` (made before the run). ``max_bytes`` bounds what
        the free buffers may then hold in all (at least one buffer is kept): beyond
        it the pool allocates as a run needs, as without a reserve. Returns the
        seconds it took (also in ``stats.alloc_seconds``)."""
        t0 = now()
        nbytes = max(int(nbytes), 1)
        # within twice nbytes, so a batch of exactly nbytes still takes the buffer
        capacity = nbytes + min(nbytes, max(64 << 10, int(nbytes * headroom)))
        want = min(int(count), self.max_free)
        if max_bytes is not None:
            want = min(want, max(1, int(max_bytes) // capacity))
        with self._lock:
            keep: list[_Buffer] = []
            drop: list[_Buffer] = []
            for b in self._free:
                fits = capacity <= b.capacity <= max(2 * nbytes, 4096)
                (keep if fits else drop).append(b)
            for b in drop:
                self._ranges.pop(b.address, None)
            self._free = keep
            have = len(keep)
        for _ in range(max(0, want - have)):
            buf = self._allocate(capacity)
            with self._lock:
                self._count_new(buf)
                self._keep_free(buf)
        with self._lock:
            self.stats.reserved = self.stats.allocations
        return now() - t0

    def owns(self, array: np.ndarray) -> bool:
        """True when ``array``'s memory lies inside a buffer of this pool."""
        if array.size == 0:
            return False
        start = int(array.__array_interface__["data"][0])
        with self._lock:
            for address, capacity in self._ranges.items():
                if address <= start < address + capacity:
                    return True
        return False

    def clear(self) -> None:
        """Drop every free buffer (outstanding ones stay valid until released)."""
        with self._lock:
            for buf in self._free:
                self._ranges.pop(buf.address, None)
            self._free.clear()


def reserve_budget(fraction: float = 0.5) -> int | None:
    """How many bytes a warm-up may reserve: ``fraction`` of the memory the kernel
    says is available (Linux's MemAvailable), or None where that cannot be read.
    Pinned memory cannot be swapped out, so a reserve for large batches and a deep
    Q1 must not take the host's memory before the run has shown it needs it."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * fraction)
    except (OSError, ValueError, IndexError):
        return None
    return None


def is_pinned(array: np.ndarray) -> bool:
    """True when ``array`` lives in page-locked memory (always False without CUDA)."""
    if not torch.cuda.is_available() or array.size == 0:
        return False
    if not (array.flags.c_contiguous and array.flags.writeable):
        return False
    return bool(torch.from_numpy(array.reshape(-1).view(np.uint8)).is_pinned())


_copy_pool: ThreadPoolExecutor | None = None
_copy_pool_lock = threading.Lock()


def copy_into(dst: np.ndarray, src: np.ndarray, *, min_chunk_bytes: int = 4 << 20, max_threads: int = 8) -> None:
    """``dst[...] = src`` (same shape and dtype) split over up to ``max_threads`` threads.

    One thread copies ordinary memory at 5-10 GB/s, far below a PCIe/NVLink H2D
    (~50 GB/s on an H200 host); numpy releases the GIL while it copies, so chunks
    copied in parallel add up. Small copies stay on the calling thread.
    Raises ValueError when shape or dtype differ.
    """
    if dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError(f"copy_into: {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")
    threads = min(max_threads, os.cpu_count() or 1, dst.nbytes // max(min_chunk_bytes, 1))
    if dst.flags.c_contiguous and src.flags.c_contiguous:
        dst_parts, src_parts = dst.reshape(-1), src.reshape(-1)
    elif dst.ndim and dst.shape[0] > 1:
        dst_parts, src_parts = dst, src
        threads = min(threads, dst.shape[0])
    else:
        threads = 1
    if threads <= 1:
        np.copyto(dst, src, casting="no")
        return
    global _copy_pool
    with _copy_pool_lock:
        if _copy_pool is None:
            _copy_pool = ThreadPoolExecutor(max_workers=min(max_threads, os.cpu_count() or 1), thread_name_prefix="copy")
        pool = _copy_pool
    bounds = np.linspace(0, len(dst_parts), threads + 1).astype(np.int64)
    futures = [
        pool.submit(np.copyto, dst_parts[a:b], src_parts[a:b], casting="no")
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]
    for future in futures:
        future.result()
