"""Models: PeakNet shapes at odd sizes, weights round trip and clear errors, the
registry's key checks, noop and synthetic basics, bf16 autocast through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simstream.clock import now
from simstream.errors import UsageError
from simstream.pipeline.engine import Engine, WorkItem
from simstream.pipeline.models import REGISTRY, ModelError, build_model
from simstream.pipeline.models.peaknet import SIZES, PeakNet


@pytest.fixture(scope="module")
def tiny() -> PeakNet:
    model = build_model({"kind": "peaknet", "size": "tiny"})
    assert isinstance(model, PeakNet)
    return model


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (2, 1, 128, 96), (1, 1, 65, 33), (3, 1, 31, 17)])
def test_tiny_peaknet_logits_at_input_resolution(tiny, shape):
    with torch.inference_mode():
        logits = tiny(torch.randn(shape))
        counts = tiny.reduce(logits)
    assert logits.shape == (shape[0], 2, shape[2], shape[3])
    assert torch.isfinite(logits).all()
    assert counts.shape == (shape[0],)
    assert counts.dtype == torch.int64
    assert ((counts >= 0) & (counts <= shape[2] * shape[3])).all()


def test_peaknet_options():
    model = build_model(
        {"kind": "peaknet", "size": "tiny", "in_channels": 3, "num_classes": 1, "dims": [4, 8, 16],
         "depths": [1, 2, 1], "bifpn_channels": 8, "bifpn_layers": 2}
    )
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 40, 24))
    assert logits.shape == (2, 1, 40, 24)
    assert model.reduce(logits).shape == (2,)
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        model(torch.randn(2, 1, 40, 24))


def test_production_preset_matches_convnextv2_tiny():
    assert SIZES["production"]["dims"] == [96, 192, 384, 768]
    assert SIZES["production"]["depths"] == [3, 3, 9, 3]
    model = build_model({"kind": "peaknet", "size": "production"})
    stage_depths = [len(stage) for stage in model.backbone.stages]
    assert stage_depths == [3, 3, 9, 3]
    assert 25e6 < sum(p.numel() for p in model.parameters()) < 40e6


def test_seeded_weights():
    a = build_model({"kind": "peaknet", "size": "tiny", "seed": 1}).state_dict()
    b = build_model({"kind": "peaknet", "size": "tiny", "seed": 1}).state_dict()
    c = build_model({"kind": "peaknet", "size": "tiny", "seed": 2}).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_building_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model({"kind": "peaknet", "size": "tiny"})
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "ddp"])
def test_weights_round_trip(tmp_path, tiny, wrap):
    trained = build_model({"kind": "peaknet", "size": "tiny", "seed": 7})
    state = trained.state_dict()
    if wrap == "state_dict":
        state = {"state_dict": state, "epoch": 3}
    elif wrap == "ddp":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "w.pt"
    torch.save(state, path)
    loaded = build_model({"kind": "peaknet", "size": "tiny", "seed": 0, "weights_path": str(path)})
    x = torch.randn(1, 1, 64, 48)
    with torch.inference_mode():
        assert torch.equal(loaded(x), trained(x))
        assert not torch.equal(tiny(x), trained(x))


def test_weights_of_another_size_is_a_clear_error(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(build_model({"kind": "peaknet", "size": "small"}).state_dict(), path)
    with pytest.raises(ModelError, match=r"small\.pt does not fit peaknet size=tiny.*another shape"):
        build_model({"kind": "peaknet", "size": "tiny", "weights_path": str(path)})


def test_missing_and_garbage_weights_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        build_model({"kind": "peaknet", "weights_path": str(tmp_path / "nope.pt")})
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a torch state dict"):
        build_model({"kind": "peaknet", "weights_path": str(garbage)})
    listy = tmp_path / "list.pt"
    torch.save([1, 2, 3], listy)
    with pytest.raises(ModelError, match="no state dict"):
        build_model({"kind": "peaknet", "weights_path": str(listy)})
    partial = tmp_path / "partial.pt"
    state = build_model({"kind": "peaknet", "size": "tiny"}).state_dict()
    state.pop(next(iter(state)))
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, partial)
    with pytest.raises(ModelError, match="1 missing.*1 unexpected"):
        build_model({"kind": "peaknet", "weights_path": str(partial)})


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"kind": "resnet"}, r"model\.kind: 'resnet' is not one of peaknet, synthetic, noop"),
        ({}, r"model\.kind: None"),
        ({"kind": "synthetic", "compute": 3}, r"unknown key\(s\) compute for kind 'synthetic'"),
        ({"kind": "synthetic", "compute_ms": -1}, r"must be >= 0"),
        ({"kind": "peaknet", "size": "huge"}, r"model\.size: 'huge'"),
        ({"kind": "peaknet", "dims": [8, 16], "depths": [1]}, r"model\.depths: expected 2 entries"),
        ({"kind": "peaknet", "dims": [8, -1]}, r"model\.dims: expected a list of positive integers"),
        ({"kind": "peaknet", "num_classes": 0}, r"model\.num_classes"),
        ({"kind": "noop", "probe": 0}, r"probe must be >= 1"),
    ],
)
def test_bad_configs_are_usage_errors(cfg, message):
    with pytest.raises(ModelError, match=message) as info:
        build_model(cfg)
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_registry_names():
    assert set(REGISTRY) == {"peaknet", "synthetic", "noop"}


def test_noop_and_synthetic_outputs():
    x = torch.arange(2 * 40, dtype=torch.float32).reshape(2, 40)
    for cfg in ({"kind": "noop"}, {"kind": "synthetic", "compute_ms": 0}):
        model = build_model(cfg)
        out = model.reduce(model(x))
        torch.testing.assert_close(out, x[:, :16].sum(1))
    synthetic = build_model({"kind": "synthetic", "compute_ms": 2, "compute_ms_per_event": 0.5})
    assert synthetic.duration_ms(8) == 6.0


def test_bf16_autocast_through_the_engine(tiny):
    data = np.random.default_rng(0).random((2, 1, 64, 96)).astype(np.float32)
    with Engine(tiny, device="cpu", buffers=2, autocast_bf16=True) as engine:
        done = engine.submit(WorkItem(index=0, data=data)) + engine.flush()
    assert done[0].output.shape == (2,)
    assert ((done[0].output >= 0) & (done[0].output <= 64 * 96)).all()


@pytest.mark.slow
def test_synthetic_calibration_on_cpu():
    """The model alone holds for the stated time: never less, and its own overhead a few
    ms at most. A busy machine only adds time (a late wake-up), so the fastest of the
    calls measures the model and the slowest are the machine (the engine-level check is
    in test_engine, the CUDA one in test_gpu)."""
    model = build_model({"kind": "synthetic", "compute_ms": 15, "compute_ms_per_event": 2.5})
    x = torch.zeros(4, 32)
    took = []
    for _ in range(6):
        t0 = now()
        model(x)
        took.append((now() - t0) * 1e3)
    took.sort()
    assert took[0] >= 25.0
    assert took[0] <= 25.0 + 8.0, took
