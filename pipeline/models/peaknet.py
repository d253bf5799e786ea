"""A PeakNet-like segmentation network: ConvNeXt-V2 backbone, BiFPN neck, segmentation head.

Mirrors the shape of the model production runs (PeakNet: ConvNeXt-V2 + BiFPN +
a head giving per-pixel logits at input resolution) so that a benchmark spends
its time in the same kinds of kernels: depthwise 7x7 convolutions, LayerNorm,
pointwise MLPs with GRN, multi-scale fusion and bilinear upsampling.

Any input height and width is accepted: the batch is zero-padded to a multiple
of the backbone's total stride and the logits are cropped back.

Sizes (``size``): tiny (tests on CPU), small (ConvNeXt-V2 atto-like), base
(nano-like), production (ConvNeXt-V2 tiny: dims 96-192-384-768, depths 3-3-9-3,
BiFPN 256 channels x 2 layers). Any of ``dims``, ``depths``, ``bifpn_channels``,
``bifpn_layers`` overrides the preset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import ModelError, load_weights

SIZES: dict[str, dict[str, object]] = {
    "tiny": {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "bifpn_channels": 16, "bifpn_layers": 1},
    "small": {"dims": [40, 80, 160, 320], "depths": [2, 2, 6, 2], "bifpn_channels": 64, "bifpn_layers": 2},
    "base": {"dims": [80, 160, 320, 640], "depths": [2, 2, 8, 2], "bifpn_channels": 128, "bifpn_layers": 2},
    "production": {
        "dims": [96, 192, 384, 768],
        "depths": [3, 3, 9, 3],
        "bifpn_channels": 256,
        "bifpn_layers": 2,
    },
}


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt-V2) on (B, H, W, C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class Block(nn.Module):
    """ConvNeXt-V2 block: depthwise 7x7, LayerNorm, Linear 4x, GELU, GRN, Linear, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """Backbone; returns one feature map per stage, strides 4, 8, 16, ..."""

    def __init__(self, in_channels: int, dims: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        self.downsample = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))]
        )
        for i in range(1, len(dims)):
            self.downsample.append(
                nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList([nn.Sequential(*[Block(d) for _ in range(n)]) for d, n in zip(dims, depths, strict=True)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for down, stage in zip(self.downsample, self.stages, strict=True):
            x = stage(down(x))
            feats.append(x)
        return feats


class SeparableConv(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 + BatchNorm + SiLU, the BiFPN node convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pointwise(self.depthwise(x))))


def _resize(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if x.shape[-2:] == size:
        return x
    return F.interpolate(x, size=size, mode="nearest")


def _down(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return _resize(F.max_pool2d(x, kernel_size=3, stride=2, padding=1), size)


class BiFPNLayer(nn.Module):
    """One BiFPN layer: top-down then bottom-up paths with fast normalised weighted fusion."""

    def __init__(self, channels: int, levels: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.levels = levels
        self.eps = eps
        self.w_td = nn.Parameter(torch.ones(levels - 1, 2))
        self.w_bu = nn.Parameter(torch.ones(levels - 1, 3))
        self.conv_td = nn.ModuleList([SeparableConv(channels) for _ in range(levels - 1)])
        self.conv_bu = nn.ModuleList([SeparableConv(channels) for _ in range(levels - 1)])

    def _weights(self, w: torch.Tensor) -> torch.Tensor:
        w = F.relu(w)
        return w / (w.sum() + self.eps)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        n = self.levels
        td = list(feats)
        for i in range(n - 2, -1, -1):  # coarse to fine
            w = self._weights(self.w_td[i])
            td[i] = self.conv_td[i](w[0] * feats[i] + w[1] * _resize(td[i + 1], feats[i].shape[-2:]))
        out = list(td)
        for i in range(1, n):  # fine to coarse
            down = _down(out[i - 1], feats[i].shape[-2:])
            if i < n - 1:
                w = self._weights(self.w_bu[i - 1])
                fused = w[0] * feats[i] + w[1] * td[i] + w[2] * down
            else:  # the coarsest level has no top-down node of its own
                w = self._weights(self.w_bu[i - 1][:2])
                fused = w[0] * feats[i] + w[1] * down
            out[i] = self.conv_bu[i - 1](fused)
        return out


class PeakNet(nn.Module):
    """ConvNeXt-V2 + BiFPN + segmentation head; (B, C, H, W) -> logits (B, classes, H, W)."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        dims: Sequence[int],
        depths: Sequence[int],
        bifpn_channels: int,
        bifpn_layers: int,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stride = 4 * 2 ** (len(dims) - 1)
        self.backbone = ConvNeXtV2(in_channels, dims, depths)
        self.lateral = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(d, bifpn_channels, 1), nn.BatchNorm2d(bifpn_channels)) for d in dims]
        )
        self.bifpn = nn.Sequential(*[BiFPNLayer(bifpn_channels, len(dims)) for _ in range(bifpn_layers)])
        self.head = nn.Sequential(
            nn.Conv2d(bifpn_channels, bifpn_channels, 3, padding=1),
            nn.BatchNorm2d(bifpn_channels),
            nn.ReLU(),
            nn.Conv2d(bifpn_channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PeakNet expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.stride, (-width) % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = [lat(f) for lat, f in zip(self.lateral, self.backbone(x), strict=True)]
        feats = self.bifpn(feats)
        fused = feats[0]
        for f in feats[1:]:
            fused = fused + F.interpolate(f, size=fused.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(fused)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]

    def reduce(self, logits: torch.Tensor) -> torch.Tensor:
        """Per event, the number of pixels predicted as peak (class 1): (B,) int64."""
        if self.num_classes == 1:
            peak = logits[:, 0] > 0
        else:
            peak = logits.argmax(dim=1) == 1
        return peak.sum(dim=(1, 2))


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _positive_ints(name: str, value: object, count: int | None = None) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise ModelError(f"model.{name}: expected a list of positive integers, got {value!r}")
    if count is not None and len(value) != count:
        raise ModelError(f"model.{name}: expected {count} entries (one per stage), got {len(value)}")
    return [int(v) for v in value]


def build_peaknet(
    *,
    size: str = "tiny",
    dims: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    bifpn_channels: int | None = None,
    bifpn_layers: int | None = None,
    in_channels: int = 1,
    num_classes: int = 2,
    seed: int = 0,
    weights_path: str | Path | None = None,
) -> PeakNet:
    """A PeakNet of ``size`` (tiny|small|base|production) with overrides; random weights
    drawn from ``seed`` unless ``weights_path`` names a state dict. Raises ModelError."""
    if size not in SIZES:
        raise ModelError(f"model.size: {size!r} is not one of {', '.join(SIZES)}")
    preset = SIZES[size]
    dims_ = _positive_ints("dims", list(dims) if dims is not None else preset["dims"])
    if len(dims_) < 2:
        raise ModelError(f"model.dims: need at least 2 stages, got {len(dims_)}")
    depths_ = _positive_ints("depths", list(depths) if depths is not None else preset["depths"], len(dims_))
    channels = bifpn_channels if bifpn_channels is not None else preset["bifpn_channels"]
    layers = bifpn_layers if bifpn_layers is not None else preset["bifpn_layers"]
    for name, value in (
        ("bifpn_channels", channels),
        ("bifpn_layers", layers),
        ("in_channels", in_channels),
        ("num_classes", num_classes),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelError(f"model.{name}: expected a positive integer, got {value!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PeakNet(
            in_channels=in_channels,
            num_classes=num_classes,
            dims=dims_,
            depths=depths_,
            bifpn_channels=int(channels),  # type: ignore[call-overload]
            bifpn_layers=int(layers),  # type: ignore[call-overload]
        )
        model.apply(_init)
    if weights_path is not None:
        load_weights(model, weights_path, f"peaknet size={size} dims={dims_} depths={depths_}")
    return model.eval()
