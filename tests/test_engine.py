"""The N-way buffered executor on CPU: order, exactly-once, release, partial batches,
dtype conversion, error propagation, and (slow) real overlap of H2D and compute."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from simstream.clock import now
from simstream.errors import UsageError
from simstream.pipeline.engine import (
    Engine,
    Finished,
    StageError,
    WorkItem,
    busy_intervals,
    h2d_compute_overlaps,
    union_seconds,
)
from simstream.pipeline.models import build_model
from simstream.pipeline.pinned import copy_into

DTYPES = [np.float64, np.float32, np.int16, np.uint8, np.uint16]


def _expected_noop(data: np.ndarray) -> np.ndarray:
    return data.reshape(data.shape[0], -1)[:, :16].astype(np.float64).sum(1)


def _check_stage_order(done: list[Finished], buffers: int) -> None:
    for f in done:
        assert f.t_h2d_start <= f.t_h2d_end <= f.t_compute_start <= f.t_compute_end
        assert f.t_compute_end <= f.t_d2h_start <= f.t_d2h_end
    # H2D into a buffer waits for the previous D2H out of that buffer
    for earlier, later in zip(done, done[buffers:], strict=False):
        assert later.buffer == earlier.buffer
        assert later.t_h2d_start >= earlier.t_d2h_end


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=5), min_size=0, max_size=7),
    buffers=st.integers(min_value=1, max_value=4),
    dtype=st.sampled_from(DTYPES),
    width=st.integers(min_value=1, max_value=20),
)
def test_every_batch_exactly_once_in_order(sizes, buffers, dtype, width):
    rng = np.random.default_rng(len(sizes) * 31 + buffers)
    batches = [(rng.random((b, width)) * 100).astype(dtype) for b in sizes]
    done: list[Finished] = []
    with Engine(build_model({"kind": "noop"}), device="cpu", buffers=buffers) as engine:
        for i, data in enumerate(batches):
            got = engine.submit(WorkItem(index=100 + i, data=data, meta=("m", i)))
            # results come N-1 submissions later, never more than N in flight
            assert len(done) + len(got) == max(0, i + 1 - (buffers - 1))
            done += got
        done += engine.flush()
        assert engine.flush() == []
    assert [f.index for f in done] == [100 + i for i in range(len(batches))]
    assert [f.meta for f in done] == [("m", i) for i in range(len(batches))]
    assert [f.events for f in done] == sizes
    assert [f.buffer for f in done] == [i % buffers for i in range(len(batches))]
    for f, data in zip(done, batches, strict=True):
        np.testing.assert_allclose(f.output, _expected_noop(data), rtol=1e-5)
    _check_stage_order(done, buffers)


def test_release_once_after_h2d_and_pool_recycles():
    released: dict[int, list[float]] = {}
    lock = threading.Lock()
    done: list[Finished] = []
    with Engine(build_model({"kind": "synthetic", "compute_ms": 1}), device="cpu", buffers=3) as engine:
        for i in range(8):
            arr, give_back = engine.host_array((4, 2, 8), np.float32)
            arr[:] = i

            def release(i: int = i, give_back=give_back) -> None:
                with lock:
                    released.setdefault(i, []).append(now())
                give_back()

            done += engine.submit(WorkItem(index=i, data=arr, release=release))
        done += engine.flush()
        stats = engine.pool.stats
        assert stats.outstanding == 0
        assert stats.releases == 8
        assert stats.allocations <= 3 + 1  # one buffer per batch in flight, reused after
        assert stats.reuses == 8 - stats.allocations
    assert sorted(released) == list(range(8))
    for f in done:
        times = released[f.index]
        assert len(times) == 1
        assert times[0] >= f.t_h2d_end
        np.testing.assert_allclose(f.output, np.full(4, 16 * f.index))


def test_a_consumer_engine_keeps_every_host_buffer_its_run_can_hold():
    """Released host buffers are kept up to what a run holds at once (Q1 full, every
    parser slot, every engine buffer), so a long run never frees and reallocates
    them; and the engine keeps nothing per finished batch (a long run's memory
    must not grow with its length)."""
    from simstream.pipeline.config import consumer_config
    from simstream.pipeline.inference import build_engine, host_buffers_needed

    cfg = consumer_config(None, {"queue.maxsize": 5, "parser_threads": 3, "buffers": 2,
                                 "device": "cpu", "model": {"kind": "noop"}})
    assert host_buffers_needed(cfg) == 5 + 2 * 3 + 2 + 1
    fast = consumer_config(None, {"queue.maxsize": 5, "parser_threads": 3, "buffers": 2,
                                  "mode": "socket", "layout": "fast",
                                  "bind": ["tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"]})
    assert host_buffers_needed(fast) == 5 + 2 * 3 + 2 + 1 + 2  # and one per receiver
    with build_engine(cfg) as engine:
        assert engine.pool.max_free == 14
        held = [engine.host_array((2, 4), np.float32) for _ in range(14)]
        for _, release in held:
            release()
        assert len(engine.pool._free) == 14  # noqa: SLF001 - every one kept for reuse
        def sizes() -> dict[str, int]:
            return {k: len(v) for k, v in vars(engine).items()
                    if isinstance(v, list | dict | set | tuple) or hasattr(v, "maxlen")}

        size_before = sizes()
        for i in range(50):
            arr, release = engine.host_array((2, 4), np.float32)
            arr.fill(i)
            engine.submit(WorkItem(index=i, data=arr, release=release))
        engine.flush()
        assert sizes() == size_before  # nothing kept per batch
        assert engine.pool.stats.allocations == 14  # the 50 batches reused them


def test_warm_up_reserves_the_host_buffers_a_run_can_hold():
    """Warm-up allocates (pins, on CUDA) every host buffer the run can hold at once, with
    room for a whole message of its batch (a receiver reads message bytes, a little
    more than the batch's), so none is pinned on the run's clock; another size is
    still allocated when first met."""
    batch = 4 * 2 * 8192 * 4
    with Engine(build_model({"kind": "noop"}), device="cpu", buffers=2,
                host_buffers=6) as engine:
        engine.warmup((4, 2, 8192), np.float32, batches=2)
        stats = engine.pool.stats
        assert stats.allocations == stats.reserved == 6  # the warm-up batches used them
        [(size, count)] = stats.as_dict()["sizes"].items()
        assert count == 6 and int(size) >= batch + (64 << 10)
        held = [engine.host_array((4, 2, 8192), np.float32) for _ in range(3)]
        held += [engine.host_array((batch + 5000,), np.uint8) for _ in range(3)]  # messages
        assert engine.pool.stats.allocations == 6  # all six came from the reserve
        for _, release in held:
            release()
        engine.host_array((400, 2, 8192), np.float32)[1]()
        assert engine.pool.stats.allocations == 7
        engine.pool.reserve(batch, 6)  # the large one is dropped, one more allocated
        assert engine.pool.stats.allocations == engine.pool.stats.reserved == 8
        assert len(engine.pool._free) == 6  # noqa: SLF001
        engine.pool.reserve(batch, 6)
        assert engine.pool.stats.allocations == 8  # six free ones of that size: none more
    with Engine(build_model({"kind": "noop"}), device="cpu", buffers=2,
                host_buffers=6) as engine:
        engine.warmup((4, 2, 8), np.float32, batches=2, reserve=False)
        assert engine.pool.stats.allocations <= 2
        assert engine.pool.stats.reserved == 0


def test_a_reserve_stays_within_its_memory_budget():
    """A reserve never holds more than ``max_bytes`` (one buffer at least), and the
    warm-up's budget is a share of the memory the kernel reports available."""
    from simstream.pipeline.pinned import PinnedPool, reserve_budget

    pool = PinnedPool(pin=False, max_free=10)
    pool.reserve(1 << 20, 10, max_bytes=3 << 20)
    assert pool.stats.reserved == 2  # 2 x (1 MiB + 64 KiB) fit in 3 MiB, not 3
    pool = PinnedPool(pin=False, max_free=10)
    pool.reserve(1 << 20, 10, max_bytes=0)
    assert pool.stats.reserved == 1
    budget = reserve_budget()
    with open("/proc/meminfo") as fh:
        avail = next(int(x.split()[1]) * 1024 for x in fh if x.startswith("MemAvailable:"))
    assert budget is not None and 0 < budget <= avail


def test_a_full_pool_drops_the_buffer_released_longest_ago():
    """A pool holding max_free free buffers keeps a newly released one and drops the
    one released longest ago: a size in use is never allocated again because stale
    buffers of another size fill the pool."""
    from simstream.pipeline.pinned import PinnedPool

    pool = PinnedPool(pin=False, max_free=2)
    old = [pool.acquire((100,), np.uint8) for _ in range(2)]
    for _, release in old:
        release()  # two free buffers of a size no longer asked for
    for _ in range(5):
        got = [pool.acquire((1000,), np.uint8) for _ in range(2)]
        for _, release in got:
            release()
    assert pool.stats.allocations == 4  # 2 small + 2 large, the large ones reused
    assert pool.stats.reuses == 8
    assert all(buf.capacity == 1000 for buf in pool._free)  # noqa: SLF001


def test_pool_release_twice_raises():
    with Engine(build_model({"kind": "noop"}), device="cpu") as engine:
        _arr, release = engine.host_array((2, 3), np.float64)
        release()
        with pytest.raises(RuntimeError, match="twice"):
            release()


def test_partial_and_changing_batches():
    shapes = [(8, 1, 6, 5), (8, 1, 6, 5), (3, 1, 6, 5), (8, 1, 7, 5), (1, 1, 6, 5)]
    done: list[Finished] = []
    with Engine(build_model({"kind": "peaknet", "size": "tiny"}), device="cpu", buffers=2) as engine:
        for i, shape in enumerate(shapes):
            done += engine.submit(WorkItem(index=i, data=np.random.default_rng(i).random(shape)))
        done += engine.flush()
    assert [f.events for f in done] == [8, 8, 3, 8, 1]
    assert [f.output.shape for f in done] == [(8,), (8,), (3,), (8,), (1,)]
    for f, shape in zip(done, shapes, strict=True):
        assert np.all((f.output >= 0) & (f.output <= shape[2] * shape[3]))


class _Recorder(torch.nn.Module):
    """Remembers the dtype and device of what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, str]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.dtype, x.device.type))
        return x.reshape(x.shape[0], -1).sum(1)


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_dtype_conversion_happens_in_the_engine(compute_dtype):
    model = _Recorder()
    data = np.arange(12, dtype=np.float64).reshape(2, 6) / 7
    original = data.copy()
    with Engine(model, device="cpu", buffers=2, compute_dtype=compute_dtype) as engine:
        done = engine.submit(WorkItem(index=0, data=data)) + engine.flush()
    assert model.seen == [(compute_dtype, "cpu")]
    assert data.dtype == np.float64 and np.array_equal(data, original)
    # the result comes back as float32 even when computed in bf16 (numpy has no bf16)
    assert done[0].output.dtype == np.float32
    np.testing.assert_allclose(done[0].output, original.sum(1), rtol=2e-2)


class _Fails(torch.nn.Module):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise ValueError("boom in the model")
        return x.reshape(x.shape[0], -1).sum(1)


@pytest.mark.parametrize("buffers", [1, 2, 3])
def test_compute_error_propagates_and_everything_is_released(buffers):
    releases: list[int] = []
    engine = Engine(_Fails(at=3), device="cpu", buffers=buffers)
    with pytest.raises(StageError) as info:
        for i in range(10):
            engine.submit(WorkItem(index=i, data=np.ones((2, 4)), release=lambda i=i: releases.append(i)))
        engine.flush()
    assert info.value.stage == "compute"
    assert info.value.index == 2
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(StageError):
        engine.submit(WorkItem(index=99, data=np.ones((2, 4))))
    with pytest.raises(StageError):
        engine.flush()
    engine.close()
    assert sorted(releases) == list(range(len(releases)))
    assert len(releases) == len(set(releases)) >= 3


def test_release_error_propagates():
    def bad_release() -> None:
        raise OSError("cannot give it back")

    with Engine(build_model({"kind": "noop"}), device="cpu", buffers=2) as engine:
        with pytest.raises(StageError) as info:
            engine.submit(WorkItem(index=0, data=np.ones((1, 3)), release=bad_release))
            engine.flush()
        assert info.value.stage == "release"


def test_bad_arguments():
    model = build_model({"kind": "noop"})
    with pytest.raises(UsageError, match="buffers"):
        Engine(model, device="cpu", buffers=0)
    with pytest.raises(UsageError, match="device"):
        Engine(model, device="tpu")
    with pytest.raises(UsageError, match="compute_dtype"):
        Engine(model, device="cpu", compute_dtype=torch.int32)
    with Engine(model, device="cpu") as engine, pytest.raises(ValueError, match="shape"):
        engine.submit(WorkItem(index=0, data=np.float64(3.0)))  # type: ignore[arg-type]


def test_interval_helpers():
    def fin(index, buffer, h2d, compute):
        return Finished(index, None, 1, np.zeros(1), buffer, *h2d, *compute, compute[1], compute[1])

    done = [fin(0, 0, (0, 1), (1, 5)), fin(1, 1, (2, 3), (5, 9)), fin(2, 0, (9, 10), (10, 11))]
    assert union_seconds([(f.t_compute_start, f.t_compute_end) for f in done]) == 9
    assert union_seconds([(0, 2), (1, 3), (5, 6)]) == 4
    assert h2d_compute_overlaps(done) == [(1, 0, 1)]
    assert [iv.stream for iv in busy_intervals(done[:1])] == ["h2d", "compute", "d2h"]


@pytest.mark.slow
def test_cpu_h2d_overlaps_compute_of_other_buffer():
    """Real threads: H2D of batch k+1 runs while batch k computes (sleep-based compute
    releases the GIL). Margins: compute 80 ms against an H2D of a few ms, and only
    half of the pairs need to overlap, so a loaded 2-core machine still passes."""
    n = 10
    done: list[Finished] = []
    model = build_model({"kind": "synthetic", "compute_ms": 80})
    with Engine(model, device="cpu", buffers=2) as engine:
        for i in range(n):
            arr, release = engine.host_array((4, 1, 512, 512), np.float32)  # 4 MiB
            arr.fill(1.0)
            done += engine.submit(WorkItem(index=i, data=arr, release=release))
        done += engine.flush()
    h2d_ms = [(f.t_h2d_end - f.t_h2d_start) * 1e3 for f in done]
    assert min(h2d_ms) > 0
    pairs = [
        (b.index, a.index)
        for a, b in zip(done, done[1:], strict=False)
        if min(b.t_h2d_end, a.t_compute_end) > max(b.t_h2d_start, a.t_compute_start)
    ]
    assert len(pairs) >= (n - 1) // 2, (pairs, h2d_ms)
    # the compute stream is busy nearly all the time: no gap waiting for H2D
    wall = done[-1].t_compute_end - done[0].t_compute_start
    busy = union_seconds([(f.t_compute_start, f.t_compute_end) for f in done])
    assert busy / wall > 0.75


@pytest.mark.slow
@pytest.mark.parametrize(("compute_ms", "per_event", "events"), [(30.0, 0.0, 2), (5.0, 5.0, 4)])
def test_synthetic_compute_time_on_cpu(compute_ms, per_event, events):
    """The stage is occupied for the stated time: never less, at most a few ms more
    (scheduler wake-up on a loaded machine)."""
    model = build_model({"kind": "synthetic", "compute_ms": compute_ms, "compute_ms_per_event": per_event})
    target = compute_ms + per_event * events
    done: list[Finished] = []
    with Engine(model, device="cpu", buffers=2) as engine:
        for i in range(8):
            done += engine.submit(WorkItem(index=i, data=np.zeros((events, 8), np.float32)))
        done += engine.flush()
    took = sorted((f.t_compute_end - f.t_compute_start) * 1e3 for f in done)
    assert took[0] >= target
    assert took[len(took) // 2] <= target + 8.0


@given(
    events=st.integers(min_value=1, max_value=6),
    width=st.integers(min_value=1, max_value=50),
    step=st.integers(min_value=1, max_value=3),
    threads=st.integers(min_value=1, max_value=4),
)
def test_copy_into_matches_numpy_for_any_layout(events, width, step, threads):
    src = np.arange(events * width * 3, dtype=np.float64).reshape(events, 3, width)[:, :, ::step]
    dst = np.empty(src.shape, dtype=src.dtype)
    copy_into(dst, src, min_chunk_bytes=8, max_threads=threads)
    np.testing.assert_array_equal(dst, src)
    with pytest.raises(ValueError, match="copy_into"):
        copy_into(dst.astype(np.float32), src)


def test_read_only_and_strided_batches_are_accepted():
    base = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)
    read_only = base.copy()
    read_only.flags.writeable = False
    strided = base[:, :, ::2]
    with Engine(build_model({"kind": "noop"}), device="cpu", buffers=2) as engine:
        done = engine.submit(WorkItem(index=0, data=read_only))
        done += engine.submit(WorkItem(index=1, data=strided))
        done += engine.flush()
    np.testing.assert_allclose(done[0].output, _expected_noop(base))
    np.testing.assert_allclose(done[1].output, _expected_noop(strided))


class EngineMachine(RuleBasedStateMachine):
    """Any interleaving of submits (any batch size) and flushes: nothing lost, nothing
    reordered, never more than N batches in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.engine: Engine | None = None
        self.submitted: list[int] = []
        self.finished: list[Finished] = []

    @initialize(buffers=st.integers(min_value=1, max_value=4))
    def start(self, buffers):
        self.engine = Engine(build_model({"kind": "noop"}), device="cpu", buffers=buffers)

    @rule(events=st.integers(min_value=1, max_value=4))
    def submit(self, events):
        assert self.engine is not None
        index = len(self.submitted)
        data = np.full((events, 3), float(index), dtype=np.float32)
        self.submitted.append(events)
        self.finished += self.engine.submit(WorkItem(index=index, data=data))

    @rule()
    def flush(self):
        assert self.engine is not None
        self.finished += self.engine.flush()
        assert len(self.finished) == len(self.submitted)

    @invariant()
    def in_order_and_bounded(self):
        if self.engine is None:
            return
        assert [f.index for f in self.finished] == list(range(len(self.finished)))
        assert [f.events for f in self.finished] == self.submitted[: len(self.finished)]
        for f in self.finished:
            np.testing.assert_array_equal(f.output, np.full(f.events, 3.0 * f.index))
        assert len(self.submitted) - len(self.finished) <= self.engine.buffers - 1

    def teardown(self):
        if self.engine is not None:
            self.finished += self.engine.flush()
            self.engine.close()
            assert [f.index for f in self.finished] == list(range(len(self.submitted)))


EngineMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=12, deadline=None)
test_engine_state_machine = EngineMachine.TestCase


def test_done_hands_over_finished_batches_without_waiting() -> None:
    """``done()`` returns what has finished, in order, and never blocks: the loop calls
    it while Q1 is empty, so a burst's last batch is recorded when it ends."""
    with Engine(build_model({"kind": "synthetic", "compute_ms": 1}), device="cpu", buffers=3) as engine:
        assert engine.done() == []  # nothing in flight
        got: list[Finished] = []
        for i in range(2):
            arr, give_back = engine.host_array((2, 4), np.float32)
            arr[:] = i
            got += engine.submit(WorkItem(index=i, data=arr, release=give_back))
        assert got == []  # 3 buffers: both still held by submit
        deadline = now() + 30
        while len(got) < 2 and now() < deadline:
            got += engine.done()
        assert [f.index for f in got] == [0, 1]
        assert engine.flush() == [] and engine.done() == []
