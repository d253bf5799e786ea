"""Models the consumer can run, built from the profile's ``consumer.model`` mapping.

``build_model({"kind": ..., **options})`` looks ``kind`` up in ``REGISTRY`` (one
module per model: ``peaknet``, ``synthetic``, ``noop``) and passes the other keys
as keyword arguments. Each model may define ``reduce(output) -> (B, ...)``: the
small per-event result the engine copies back (D2H) instead of the full output.

Errors in the mapping (unknown kind or key, bad value, a weights file that does
not fit) raise ``ModelError``, a ``UsageError``: one line, exit status 2.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .base import ModelError
from .noop import NoopModel
from .peaknet import build_peaknet
from .synthetic import SyntheticModel

# kind -> builder; the builder's keyword-only parameters are the allowed keys
REGISTRY: dict[str, Callable[..., torch.nn.Module]] = {
    "peaknet": build_peaknet,
    "synthetic": SyntheticModel,
    "noop": NoopModel,
}


def build_model(cfg: Mapping[str, Any]) -> torch.nn.Module:
    """The model ``cfg`` describes (``cfg["kind"]`` a key of REGISTRY). Raises ModelError."""
    if not isinstance(cfg, Mapping):
        raise ModelError(f"model: expected a mapping with a 'kind' key, got {type(cfg).__name__}")
    options = dict(cfg)
    kind = options.pop("kind", None)
    if kind not in REGISTRY:
        raise ModelError(f"model.kind: {kind!r} is not one of {', '.join(REGISTRY)}")
    builder = REGISTRY[kind]
    params = inspect.signature(builder).parameters
    allowed = sorted(n for n, p in params.items() if p.kind == p.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ModelError(
            f"model: unknown key(s) {', '.join(unknown)} for kind {kind!r} (allowed: {', '.join(allowed)})"
        )
    try:
        return builder(**options)
    except ModelError:
        raise
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model ({kind}): {exc}") from exc


__all__ = ["REGISTRY", "ModelError", "build_model"]
