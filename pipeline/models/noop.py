"""The model that does (almost) nothing: it measures the executor, not a network."""

from __future__ import annotations

import torch


class NoopModel(torch.nn.Module):
    """Returns, per event, the sum of its first ``probe`` values: (B,) float32.

    Reading a few values keeps a real data dependency on the H2D'd batch at no
    measurable cost.
    """

    def __init__(self, *, probe: int = 16) -> None:
        super().__init__()
        if probe < 1:
            raise ValueError(f"probe must be >= 1, got {probe}")
        self.probe = int(probe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)[:, : self.probe].float().sum(1)

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        return out
