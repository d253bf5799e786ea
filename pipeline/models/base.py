"""What every model module shares: the error type and loading a weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simstream.errors import UsageError


class ModelError(UsageError):
    """The model configuration or weights file is wrong; the message says which key or file."""


_WRAPPERS = ("state_dict", "model_state_dict", "model")


def load_weights(model: torch.nn.Module, path: str | Path, what: str) -> None:
    """Load a state dict from ``path`` into ``model`` (strict: every key and shape).

    Accepts a bare state dict or one wrapped under state_dict / model_state_dict /
    model, with or without DistributedDataParallel's ``module.`` prefix. Raises
    ModelError naming the file and the first mismatches.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model.weights_path: {path} does not exist or is not a file")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"model.weights_path: {path} is not a torch state dict ({exc})") from exc
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model.weights_path: {path} holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape (e.g. {'; '.join(mismatched[:2])})")
        raise ModelError(f"model.weights_path: {path} does not fit {what}: " + ", ".join(parts))
    model.load_state_dict(state, strict=True)
