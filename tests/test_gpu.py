"""The CUDA path of the executor: order, pinned pool, staging, overlap of H2D and
compute across buffers (from CUDA-event times), H2D bandwidth from pinned memory,
clock alignment, error propagation, synthetic calibration.

Runs only where torch sees a CUDA device; written for an H200 (any recent card
with a few GiB free passes: sizes are 256 MiB at most).
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from simstream.clock import now
from simstream.pipeline.engine import Engine, Finished, StageError, WorkItem, union_seconds
from simstream.pipeline.models import build_model
from simstream.pipeline.pinned import is_pinned

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device: torch.cuda.is_available() is False"
    ),
]


def _run(engine: Engine, batches: list[np.ndarray], releases: list | None = None) -> list[Finished]:
    done: list[Finished] = []
    for i, data in enumerate(batches):
        release = None
        if releases is not None:
            def release(i: int = i) -> None:
                releases.append((i, now()))
        done += engine.submit(WorkItem(index=i, data=data, release=release, meta=i))
    return done + engine.flush()


@pytest.mark.parametrize("buffers", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint16])
def test_order_outputs_and_buffer_dependencies(buffers, dtype):
    rng = np.random.default_rng(buffers)
    sizes = [4, 4, 2, 4, 1, 3, 4]
    batches = [(rng.random((b, 1, 33, 17)) * 1000).astype(dtype) for b in sizes]
    with Engine(build_model({"kind": "noop"}), device="cuda", buffers=buffers) as engine:
        done = _run(engine, batches)
        tol = 2 * engine.clock_error_s + 1e-5
    assert [f.index for f in done] == list(range(len(sizes)))
    assert [f.events for f in done] == sizes
    assert [f.buffer for f in done] == [i % buffers for i in range(len(sizes))]
    for f, data in zip(done, batches, strict=True):
        expected = data.reshape(len(data), -1)[:, :16].astype(np.float64).sum(1)
        np.testing.assert_allclose(f.output, expected, rtol=1e-5)
        assert f.t_h2d_start <= f.t_h2d_end <= f.t_compute_start + tol
        assert f.t_compute_start <= f.t_compute_end <= f.t_d2h_start + tol
        assert f.t_d2h_start <= f.t_d2h_end
    for earlier, later in zip(done, done[buffers:], strict=False):
        assert later.t_h2d_start >= earlier.t_d2h_end - tol


def test_pinned_pool_hands_out_pinned_reusable_memory():
    with Engine(build_model({"kind": "noop"}), device="cuda") as engine:
        arr, release = engine.host_array((4, 1, 64, 64), np.float32)
        assert is_pinned(arr) and engine.pool.owns(arr)
        address = arr.ctypes.data
        release()
        with pytest.raises(RuntimeError, match="twice"):
            release()
        again, release_again = engine.host_array((3, 1, 64, 64), np.float32)  # a partial batch fits
        assert again.ctypes.data == address
        assert engine.pool.stats.allocations == 1 and engine.pool.stats.reuses == 1
        release_again()
        assert not is_pinned(np.zeros((4, 1, 64, 64), np.float32))


def test_pinned_input_needs_no_staging_and_pageable_input_is_staged():
    with Engine(build_model({"kind": "noop"}), device="cuda", buffers=2) as engine:
        batches = []
        for i in range(4):
            arr, give_back = engine.host_array((2, 1, 128, 128), np.float32)
            arr[:] = i
            batches.append((arr, give_back))
        allocated = engine.pool.stats.allocations
        done: list[Finished] = []
        for i, (arr, give_back) in enumerate(batches):
            done += engine.submit(WorkItem(index=i, data=arr, release=give_back))
        done += engine.flush()
        assert engine.pool.stats.allocations == allocated  # no staging buffer was needed
        assert engine.pool.stats.outstanding == 0
        pageable = [np.full((2, 1, 128, 128), 10.0 + i) for i in range(4)]
        done += _run(engine, pageable)
        assert engine.pool.stats.allocations <= allocated + 2  # one staging buffer per buffer
    assert [float(f.output[0]) for f in done] == [16.0 * i for i in range(4)] + [16.0 * (10 + i) for i in range(4)]


def test_release_once_after_h2d_and_times_on_the_host_clock():
    releases: list[tuple[int, float]] = []
    t_before = now()
    with Engine(build_model({"kind": "synthetic", "compute_ms": 2}), device="cuda", buffers=3) as engine:
        done = _run(engine, [np.ones((4, 1, 256, 256), np.float32) for _ in range(8)], releases)
        error = engine.clock_error_s
    t_after = now()
    assert error < 1e-3
    assert sorted(i for i, _ in releases) == list(range(8))
    released_at = dict(releases)
    for f in done:
        assert released_at[f.index] >= f.t_h2d_end - 2 * error
        for t in (f.t_h2d_start, f.t_h2d_end, f.t_compute_start, f.t_compute_end, f.t_d2h_start, f.t_d2h_end):
            assert t_before - error <= t <= t_after + error


class _Recorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, str]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.dtype, x.device.type))
        return x.reshape(x.shape[0], -1).sum(1)


def test_float64_is_converted_on_the_device():
    model = _Recorder()
    data = np.arange(24, dtype=np.float64).reshape(2, 12) / 3
    with Engine(model, device="cuda", buffers=2) as engine:
        done = _run(engine, [data])
    assert model.seen == [(torch.float32, "cuda")]
    np.testing.assert_allclose(done[0].output, data.sum(1), rtol=1e-5)


class _Fails(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            raise ValueError("boom in the model")
        return x.sum()


def test_errors_propagate_and_items_are_released():
    releases: list[tuple[int, float]] = []
    engine = Engine(_Fails(), device="cuda", buffers=2)
    with pytest.raises(StageError) as info:
        _run(engine, [np.ones((2, 8), np.float32) for _ in range(6)], releases)
    assert info.value.stage == "compute" and info.value.index == 2
    with pytest.raises(StageError):
        engine.flush()
    engine.close()
    assert sorted(i for i, _ in releases) == [0, 1, 2]


def test_h2d_overlaps_compute_of_the_other_buffer():
    """CUDA-event times: while batch k computes, batch k+1's H2D runs on its own stream."""
    n, compute_ms = 12, 20.0
    done: list[Finished] = []
    with Engine(build_model({"kind": "synthetic", "compute_ms": compute_ms}), device="cuda", buffers=2) as engine:
        engine.warmup((8, 1, 1024, 2048), np.float32)
        # batches are decoded before they are submitted (the parse stage's work), so
        # the host fills them all first and the loop measures the engine alone
        batches = [engine.host_array((8, 1, 1024, 2048), np.float32) for _ in range(n)]  # 64 MiB each
        for i, (arr, _release) in enumerate(batches):
            arr.fill(float(i))
        for i, (arr, release) in enumerate(batches):
            done += engine.submit(WorkItem(index=i, data=arr, release=release))
        done += engine.flush()
    overlapping = [
        (a.index, b.index)
        for a, b in zip(done, done[1:], strict=False)
        if min(b.t_h2d_end, a.t_compute_end) - max(b.t_h2d_start, a.t_compute_start) > 0
    ]
    assert len(overlapping) >= 0.8 * (n - 1), overlapping
    wall = done[-1].t_compute_end - done[0].t_compute_start
    busy = union_seconds([(f.t_compute_start, f.t_compute_end) for f in done])
    gaps_ms = [round((b.t_compute_start - a.t_compute_end) * 1e3, 2) for a, b in zip(done, done[1:], strict=False)]
    assert busy / wall > 0.9, (busy, wall, gaps_ms)
    took = [(f.t_compute_end - f.t_compute_start) * 1e3 for f in done]
    assert abs(statistics.median(took) - compute_ms) < 0.15 * compute_ms, took


def test_engine_h2d_reaches_the_pinned_bandwidth():
    shape = (16, 1, 2048, 2048)  # 256 MiB float32
    nbytes = int(np.prod(shape)) * 4
    host = torch.empty(shape, dtype=torch.float32, pin_memory=True)
    dev = torch.empty(shape, dtype=torch.float32, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    baseline = []
    for _ in range(6):
        start.record()
        dev.copy_(host, non_blocking=True)
        end.record()
        end.synchronize()
        baseline.append(nbytes / (start.elapsed_time(end) / 1e3))
    del dev
    base_bw = statistics.median(baseline[1:])
    done: list[Finished] = []
    with Engine(build_model({"kind": "noop"}), device="cuda", buffers=2) as engine:
        engine.warmup(shape, np.float32)
        for i in range(6):
            arr, release = engine.host_array(shape, np.float32)
            done += engine.submit(WorkItem(index=i, data=arr, release=release))
        done += engine.flush()
    engine_bw = statistics.median(nbytes / (f.t_h2d_end - f.t_h2d_start) for f in done)
    assert engine_bw >= 0.8 * base_bw, (engine_bw / 1e9, base_bw / 1e9)


def test_synthetic_calibration_on_the_gpu():
    model = build_model({"kind": "synthetic", "compute_ms": 10, "compute_ms_per_event": 1})
    with Engine(model, device="cuda", buffers=2) as engine:
        done = _run(engine, [np.zeros((4, 16), np.float32) for _ in range(6)])
    assert model.calibration["method"] == "torch.cuda._sleep"
    took = [(f.t_compute_end - f.t_compute_start) * 1e3 for f in done]
    assert abs(statistics.median(took) - 14.0) < 0.15 * 14.0, took


def test_tiny_peaknet_bf16_on_the_gpu():
    model = build_model({"kind": "peaknet", "size": "tiny"})
    data = np.random.default_rng(0).random((2, 1, 128, 96))
    with Engine(model, device="cuda", buffers=2, autocast_bf16=True) as engine:
        done = _run(engine, [data, data[:1]])
    assert [f.output.shape for f in done] == [(2,), (1,)]
    assert ((done[0].output >= 0) & (done[0].output <= 128 * 96)).all()
