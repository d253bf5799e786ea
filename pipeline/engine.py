"""The inference stage: an N-way buffered H2D -> compute -> D2H executor.

It mirrors production's inference actor (WIRE.md, peaknet-pipeline-ray): N
buffers, three streams (H2D, compute, D2H) and per-buffer events h2d_done,
compute_done, d2h_done, so that each stage waits only for its own buffer:

- H2D of buffer k waits for the previous D2H of buffer k (its memory is free),
- compute of buffer k waits for H2D of buffer k,
- D2H of buffer k waits for compute of buffer k.

``submit`` enqueues batch i and returns the batches that finished, collecting
batch i-(N-1) as production does (so with N buffers at most N batches are in
flight and the caller is paced by the device). Every submitted batch yields
exactly one ``Finished``, in submission order.

Differences from production, on purpose: the whole batch goes over the bus in
one copy from pinned memory (production pins and copies sample by sample);
dtype conversion (e.g. float64 -> float32) happens on the device after H2D;
any batch size is accepted (production raises on a partial batch); every stage
is timed.

Two executors with one shape:
- CUDA: three ``torch.cuda.Stream`` and ``torch.cuda.Event``; times come from
  the events, aligned to the host clock by ``pipeline.device.GpuClock``
  (alignment error in ``Engine.clock_error_s``, typically tens of microseconds).
- CPU: one worker thread per stage, with the same per-buffer dependencies kept
  by a condition variable, so the overlap is real: H2D (a copy into the
  buffer's torch tensor) of batch k+1 runs while batch k computes. Times are
  ``simstream.clock.now()`` around each stage. ``WorkItem.release`` is called
  from the H2D thread on CPU, from the caller's thread on CUDA: it must be
  thread-safe (the pool's is).

A failure in any stage makes ``submit``/``flush`` raise ``StageError`` (the
original exception as ``__cause__``); the engine then refuses further work.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from simstream.clock import now
from simstream.errors import UsageError

from .device import Anchor, GpuClock, resolve_device
from .pinned import PinnedPool, copy_into, is_pinned, reserve_budget


@dataclass
class WorkItem:
    """One batch for the engine. ``data`` is (B, ...) on the host, any int/float dtype."""

    index: int
    data: np.ndarray
    release: Callable[[], None] | None = None  # called once, after the batch's H2D completed
    meta: Any = None


@dataclass
class Finished:
    """One completed batch. Times are Unix seconds on ``simstream.clock.now()``'s clock."""

    index: int
    meta: Any
    events: int
    output: np.ndarray  # small per-event result, shape (B, ...)
    buffer: int
    t_h2d_start: float
    t_h2d_end: float
    t_compute_start: float
    t_compute_end: float
    t_d2h_start: float
    t_d2h_end: float


class StageError(RuntimeError):
    """A stage failed; ``stage`` is h2d, compute, d2h, release or cuda; ``index`` the batch."""

    def __init__(self, stage: str, index: int, cause: BaseException) -> None:
        super().__init__(f"{stage} stage failed on batch {index}: {cause!r}")
        self.stage = stage
        self.index = index


class Interval(NamedTuple):
    """A busy interval of one stream, as in gpu.csv."""

    stream: str  # h2d, compute, d2h
    buffer: int
    batch_index: int
    t_start: float
    t_end: float


def busy_intervals(finished: Iterable[Finished]) -> list[Interval]:
    """The H2D, compute and D2H intervals of ``finished``, stream by stream."""
    out: list[Interval] = []
    for f in finished:
        out.append(Interval("h2d", f.buffer, f.index, f.t_h2d_start, f.t_h2d_end))
        out.append(Interval("compute", f.buffer, f.index, f.t_compute_start, f.t_compute_end))
        out.append(Interval("d2h", f.buffer, f.index, f.t_d2h_start, f.t_d2h_end))
    return out


def union_seconds(spans: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] spans, seconds."""
    total = 0.0
    cur_start = cur_end = None
    for start, end in sorted(spans):
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def h2d_compute_overlaps(finished: Sequence[Finished]) -> list[tuple[int, int, float]]:
    """(h2d batch, compute batch, overlap seconds) for each H2D that overlaps the
    compute of a batch carried by another buffer."""
    found = []
    for a in finished:
        for b in finished:
            if a.buffer == b.buffer:
                continue
            overlap = min(a.t_h2d_end, b.t_compute_end) - max(a.t_h2d_start, b.t_compute_start)
            if overlap > 0:
                found.append((a.index, b.index, overlap))
    return found


def default_reduce(out: Any) -> torch.Tensor:
    """Per-event mean of a model output (B, ...) -> (B,); models may define ``reduce``."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model returned {type(out).__name__}, expected a tensor")
    if out.ndim <= 1:
        return out
    return out.reshape(out.shape[0], -1).float().mean(1)


@dataclass
class _Job:
    seq: int
    item: WorkItem
    buffer: int
    released: bool = False
    done: bool = False
    error: BaseException | None = None
    times: dict[str, float] = field(default_factory=dict)
    output: np.ndarray | None = None
    anchor: Anchor | None = None
    staged_at: float | None = None  # host time the copy into a pinned staging buffer began

    def finished(self) -> Finished:
        t = self.times
        assert self.output is not None
        return Finished(
            index=self.item.index,
            meta=self.item.meta,
            events=int(self.item.data.shape[0]),
            output=self.output,
            buffer=self.buffer,
            t_h2d_start=t["h2d_start"],
            t_h2d_end=t["h2d_end"],
            t_compute_start=t["compute_start"],
            t_compute_end=t["compute_end"],
            t_d2h_start=t["d2h_start"],
            t_d2h_end=t["d2h_end"],
        )


def _release(job: _Job) -> None:
    """Call the item's release exactly once."""
    if job.released:
        return
    job.released = True
    if job.item.release is not None:
        job.item.release()


class Engine:
    """N-way buffered inference over ``model``; see the module docstring.

    ``device``: auto | cpu | cuda | cuda:N. ``buffers``: N, 1..16.
    ``autocast_bf16``: run the model under bf16 autocast. ``compute_dtype``: the
    floating dtype batches are converted to on the device before the model.
    Raises UsageError for a bad device, buffer count or dtype.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str = "auto",
        buffers: int = 2,
        autocast_bf16: bool = False,
        compute_dtype: torch.dtype = torch.float32,
        host_buffers: int = 16,
    ) -> None:
        if not 1 <= int(buffers) <= 16:
            raise UsageError(f"buffers: {buffers} is out of range (1..16)")
        if not compute_dtype.is_floating_point:
            raise UsageError(f"compute_dtype: {compute_dtype} is not a floating dtype")
        self.device: torch.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.buffers = int(buffers)
        self.autocast_bf16 = bool(autocast_bf16)
        self.compute_dtype = compute_dtype
        model = model.to(self.device)
        if compute_dtype != torch.float32:
            model = model.to(compute_dtype)
        model.eval()
        self.model = model
        self._reduce: Callable[[Any], torch.Tensor] = getattr(model, "reduce", None) or default_reduce
        # host_buffers: released host buffers kept for reuse; a consumer passes the most
        # it can hold at once, so no buffer is ever freed and allocated again mid-run
        self.pool = PinnedPool(pin=self.device.type == "cuda", max_free=max(1, int(host_buffers)))
        self._executor: _CudaExecutor | _ThreadExecutor
        if self.device.type == "cuda":
            self._executor = _CudaExecutor(self)
        else:
            self._executor = _ThreadExecutor(self)

    # -- the compute step, shared by both executors ------------------------------------
    def _compute(self, raw: torch.Tensor) -> torch.Tensor:
        """Convert on the device, run the model, reduce to a small (B, ...) tensor."""
        x = raw if raw.dtype == self.compute_dtype else raw.to(self.compute_dtype)
        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16
        ):
            result = self._reduce(self.model(x))
        # numpy has no bfloat16: hand the host a float32 result
        return result.float() if result.dtype in (torch.bfloat16, torch.float16) else result

    # -- public surface -------------------------------------------------------------------
    def host_array(
        self, shape: tuple[int, ...], dtype: Any
    ) -> tuple[np.ndarray, Callable[[], None]]:
        """A host array to decode a batch into (pinned on CUDA) and its release callable."""
        return self.pool.acquire(tuple(int(s) for s in shape), dtype)

    def submit(self, item: WorkItem) -> list[Finished]:
        """Enqueue ``item``; returns the batches that completed, in submission order.

        Blocks until batch i-(N-1) has finished. Raises StageError if a stage failed,
        ValueError for data with no batch dimension.
        """
        data = item.data
        if not isinstance(data, np.ndarray) or data.ndim < 1:
            raise ValueError(f"batch {item.index}: data must be a numpy array of shape (B, ...)")
        return self._executor.submit(item)

    def flush(self) -> list[Finished]:
        """Wait for every outstanding batch; returns them in order. Raises StageError."""
        return self._executor.flush()

    def done(self) -> list[Finished]:
        """The outstanding batches that have already finished, in order, without
        waiting (the loop collects them while Q1 is empty, so the last batch of a
        burst is recorded when it ends, not when the next one comes). Raises
        StageError."""
        return self._executor.done()

    def close(self) -> None:
        """Stop the workers (CPU) or wait for the streams (CUDA); idempotent."""
        self._executor.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def clock_error_s(self) -> float:
        """Worst host/GPU clock alignment error so far, seconds (0 on CPU)."""
        return self._executor.clock_error_s

    def warmup(self, shape: tuple[int, ...], dtype: Any = np.float32, batches: int = 2,
               reserve: bool = True) -> None:
        """Run ``batches`` zero batches through, unrecorded (cuDNN
        autotuning, lazy CUDA init and first allocations then happen here, not in a run).
        With ``reserve``, first allocate the host pool's buffers for batches of this
        shape (as many as the pool keeps, ``host_buffers``, each with room for a
        whole message of such a batch: ``PinnedPool.reserve``): pinning them mid-run
        would stall the receivers and the CUDA driver for tens of milliseconds per
        buffer, on the run's clock. Batches of another size are pinned when first met.
        The reserve takes at most half the memory the kernel reports available
        (``pinned.reserve_budget``); a run that needs more pins the rest as it goes."""
        if reserve:
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            self.pool.reserve(nbytes, self.pool.max_free, max_bytes=reserve_budget())
        for i in range(batches):
            arr, release = self.host_array(shape, dtype)
            arr.fill(0)
            self.submit(WorkItem(index=-1 - i, data=arr, release=release))
        self.flush()


# ------------------------------------------------------------------------------------------
# CPU: one thread per stage
# ------------------------------------------------------------------------------------------


@dataclass
class _CpuSlot:
    free: bool = True
    raw: torch.Tensor | None = None
    result: torch.Tensor | None = None


class _ThreadExecutor:
    clock_error_s = 0.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.n = engine.buffers
        self._cv = threading.Condition()
        self._slots = [_CpuSlot() for _ in range(self.n)]
        self._inflight: deque[_Job] = deque()
        self._seq = 0
        self._error: StageError | None = None
        self._closed = False
        self._queues: list[queue.SimpleQueue[_Job | None]] = [queue.SimpleQueue() for _ in range(3)]
        self._threads = [
            threading.Thread(target=self._run, args=(stage,), name=f"engine-{stage}", daemon=True)
            for stage in ("h2d", "compute", "d2h")
        ]
        for t in self._threads:
            t.start()

    # caller side
    def submit(self, item: WorkItem) -> list[Finished]:
        self._check()
        if self._closed:
            raise RuntimeError("engine is closed")
        job = _Job(self._seq, item, self._seq % self.n)
        self._seq += 1
        self._inflight.append(job)
        self._queues[0].put(job)
        return self._collect(keep=self.n - 1)

    def flush(self) -> list[Finished]:
        return self._collect(keep=0)

    def done(self) -> list[Finished]:
        self._check()
        ready = 0
        with self._cv:
            for job in self._inflight:
                if not job.done:
                    break
                ready += 1
        return self._collect(keep=len(self._inflight) - ready)

    def _collect(self, keep: int) -> list[Finished]:
        out = []
        while len(self._inflight) > keep:
            job = self._inflight[0]
            with self._cv:
                while not job.done and self._error is None:
                    self._cv.wait(timeout=1.0)
            self._check()
            self._inflight.popleft()
            out.append(job.finished())
        return out

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queues[0].put(None)
        for t in self._threads:
            t.join(timeout=30.0)

    # worker side
    def _fail(self, stage: str, job: _Job, exc: BaseException) -> None:
        with self._cv:
            job.error = exc
            if self._error is None:
                self._error = StageError(stage, job.item.index, exc)
                self._error.__cause__ = exc
            self._cv.notify_all()

    def _run(self, stage: str) -> None:
        step = {"h2d": self._h2d, "compute": self._compute, "d2h": self._d2h}[stage]
        inbox = self._queues[("h2d", "compute", "d2h").index(stage)]
        outbox = None if stage == "d2h" else self._queues[("h2d", "compute", "d2h").index(stage) + 1]
        while True:
            job = inbox.get()
            if job is not None:
                step(job)
            if outbox is not None:
                outbox.put(job)
            if job is None:
                return

    def _h2d(self, job: _Job) -> None:
        slot = self._slots[job.buffer]
        with self._cv:  # wait for the previous D2H of this buffer
            while not slot.free:
                self._cv.wait()
            slot.free = False
        try:
            if job.error is None and self._error is None:
                data = job.item.data
                job.times["h2d_start"] = now()
                dtype = torch.from_numpy(np.empty(0, dtype=data.dtype)).dtype
                if slot.raw is None or slot.raw.shape != data.shape or slot.raw.dtype != dtype:
                    slot.raw = torch.empty(data.shape, dtype=dtype)
                if data.flags.c_contiguous and data.flags.writeable:
                    slot.raw.copy_(torch.from_numpy(data))
                else:
                    copy_into(slot.raw.numpy(), data)
                job.times["h2d_end"] = now()
        except BaseException as exc:
            self._fail("h2d", job, exc)
        try:
            _release(job)
        except BaseException as exc:
            self._fail("release", job, exc)

    def _compute(self, job: _Job) -> None:
        if job.error is not None or self._error is not None:
            return
        slot = self._slots[job.buffer]
        try:
            assert slot.raw is not None
            job.times["compute_start"] = now()
            slot.result = self.engine._compute(slot.raw)
            job.times["compute_end"] = now()
        except BaseException as exc:
            self._fail("compute", job, exc)

    def _d2h(self, job: _Job) -> None:
        slot = self._slots[job.buffer]
        try:
            if job.error is None and self._error is None:
                assert slot.result is not None
                job.times["d2h_start"] = now()
                job.output = slot.result.detach().cpu().numpy().copy()
                slot.result = None
                job.times["d2h_end"] = now()
        except BaseException as exc:
            self._fail("d2h", job, exc)
        with self._cv:
            job.done = True
            slot.free = True
            self._cv.notify_all()


# ------------------------------------------------------------------------------------------
# CUDA: three streams, per-buffer events
# ------------------------------------------------------------------------------------------

_EVENTS = ("h2d_start", "h2d_end", "compute_start", "compute_end", "d2h_start", "d2h_end")


class _CudaSlot:
    def __init__(self) -> None:
        self.events = {name: torch.cuda.Event(enable_timing=True) for name in _EVENTS}
        self.used = False
        self.raw: torch.Tensor | None = None  # device input buffer, reused while the shape holds
        self.staging: tuple[np.ndarray, Callable[[], None]] | None = None
        self.host_out: torch.Tensor | None = None  # pinned result buffer


class _CudaExecutor:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.n = engine.buffers
        self.device = engine.device
        self.h2d = torch.cuda.Stream(self.device)
        self.compute = torch.cuda.Stream(self.device)
        self.d2h = torch.cuda.Stream(self.device)
        self.clock = GpuClock(self.device)
        self._slots = [_CudaSlot() for _ in range(self.n)]
        self._inflight: deque[_Job] = deque()
        self._seq = 0
        self._error: StageError | None = None
        self._closed = False

    @property
    def clock_error_s(self) -> float:
        return self.clock.max_error_s

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError("engine is closed")

    def _fail(self, stage: str, job: _Job, exc: BaseException) -> StageError:
        err = StageError(stage, job.item.index, exc)
        err.__cause__ = exc
        if self._error is None:
            self._error = err
        return err

    def submit(self, item: WorkItem) -> list[Finished]:
        # every allocation and record below on this engine's device, whatever is current
        with torch.cuda.device(self.device):
            return self._submit(item)

    def _submit(self, item: WorkItem) -> list[Finished]:
        self._check()
        job = _Job(self._seq, item, self._seq % self.n)
        self._seq += 1
        slot = self._slots[job.buffer]
        stage = "h2d"
        try:
            job.anchor = self.clock.current()
            src = self._host_source(job, slot)
            shape, dtype = tuple(item.data.shape), src.dtype
            if slot.raw is None or tuple(slot.raw.shape) != shape or slot.raw.dtype != dtype:
                slot.raw = None  # free the old one first: its last reader was collected
                slot.raw = torch.empty(shape, dtype=dtype, device=self.device)
            ev = slot.events
            with torch.cuda.stream(self.h2d):
                if slot.used:
                    self.h2d.wait_event(ev["d2h_end"])
                ev["h2d_start"].record(self.h2d)
                slot.raw.copy_(src, non_blocking=True)
                ev["h2d_end"].record(self.h2d)
            stage = "compute"
            with torch.cuda.stream(self.compute):
                self.compute.wait_event(ev["h2d_end"])
                ev["compute_start"].record(self.compute)
                result = self.engine._compute(slot.raw)
                ev["compute_end"].record(self.compute)
            stage = "d2h"
            with torch.cuda.stream(self.d2h):
                self.d2h.wait_event(ev["compute_end"])
                ev["d2h_start"].record(self.d2h)
                if (
                    slot.host_out is None
                    or slot.host_out.shape != result.shape
                    or slot.host_out.dtype != result.dtype
                ):
                    slot.host_out = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
                slot.host_out.copy_(result, non_blocking=True)
                # the result was made on the compute stream; keep its memory until D2H read it
                result.record_stream(self.d2h)
                ev["d2h_end"].record(self.d2h)
            slot.used = True
        except BaseException as exc:
            err = self._fail(stage, job, exc)
            try:
                # an H2D may already be reading the host memory: let it finish first
                with contextlib.suppress(Exception):
                    self.h2d.synchronize()
                _release(job)
            finally:
                raise err from exc
        self._inflight.append(job)
        self._poll_releases()
        return self._collect(keep=self.n - 1)

    def _host_source(self, job: _Job, slot: _CudaSlot) -> torch.Tensor:
        """A pinned tensor holding the batch: the item's own memory when it is pinned
        (one cudaMemcpyAsync, nothing else), else a pinned staging copy, timed as H2D."""
        data = job.item.data
        if data.flags.c_contiguous and data.flags.writeable and (
            self.engine.pool.owns(data) or is_pinned(data)
        ):
            return torch.from_numpy(data)
        job.staged_at = now()
        if slot.staging is None or slot.staging[0].shape != data.shape or slot.staging[0].dtype != data.dtype:
            if slot.staging is not None:
                slot.staging[1]()
            slot.staging = self.engine.pool.acquire(tuple(data.shape), data.dtype)
        copy_into(slot.staging[0], data)
        return torch.from_numpy(slot.staging[0])

    def _poll_releases(self) -> None:
        """Release items whose H2D has completed (without waiting)."""
        for job in self._inflight:
            if not job.released and self._slots[job.buffer].events["h2d_end"].query():
                try:
                    _release(job)
                except BaseException as exc:
                    raise self._fail("release", job, exc) from exc

    def _collect(self, keep: int) -> list[Finished]:
        out = []
        while len(self._inflight) > keep:
            job = self._inflight[0]
            slot = self._slots[job.buffer]
            try:
                slot.events["d2h_end"].synchronize()
                assert job.anchor is not None and slot.host_out is not None
                for name, event in slot.events.items():
                    job.times[name] = GpuClock.host_time(job.anchor, event)
                job.output = slot.host_out.numpy().copy()
            except BaseException as exc:
                raise self._fail("cuda", job, exc) from exc
            if job.staged_at is not None:
                job.times["h2d_start"] = min(job.times["h2d_start"], job.staged_at)
            try:
                _release(job)
            except BaseException as exc:
                raise self._fail("release", job, exc) from exc
            self._inflight.popleft()
            out.append(job.finished())
        return out

    def flush(self) -> list[Finished]:
        self._check()
        with torch.cuda.device(self.device):
            return self._collect(keep=0)

    def done(self) -> list[Finished]:
        self._check()
        with torch.cuda.device(self.device):
            ready = 0
            for job in self._inflight:
                if not self._slots[job.buffer].events["d2h_end"].query():
                    break
                ready += 1
            return self._collect(keep=len(self._inflight) - ready)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in (self.h2d, self.compute, self.d2h):
            stream.synchronize()
        for job in self._inflight:
            if not job.released:
                with contextlib.suppress(Exception):  # closing: nothing left to report it to
                    _release(job)
        self._inflight.clear()
        for slot in self._slots:
            if slot.staging is not None:
                slot.staging[1]()
                slot.staging = None
