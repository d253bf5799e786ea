"""The summary stage: the run facts summary.json holds besides the records' own
(docs/formats.md), shared by the in-process and the Ray runner."""

from __future__ import annotations

from typing import Any

from .config import ConsumerConfig

__all__ = ["device_facts", "summary_extra"]


def summary_extra(cfg: ConsumerConfig, *, t_start: float, t_end: float, end_reason: str,
                  device: str, device_description: str, q1_stats: Any, reordered: int,
                  receiver: dict[str, Any] | None, starvation_warnings: int,
                  clock_error_s: float, ray_address: str | None) -> dict[str, Any]:
    """The run facts summary.json holds besides the records' own (docs/formats.md)."""
    socket = cfg.mode == "socket"
    return {
        "wall_s": t_end - t_start,
        "t_start": t_start,
        "t_end": t_end,
        "end_reason": end_reason,
        "device": device,
        "device_description": device_description,
        "mode": cfg.mode,
        "transport": cfg.transport if socket else None,
        "url": cfg.url if socket else None,
        "urls": cfg.urls if socket else None,
        "role": cfg.role if socket else None,
        "parse_in": cfg.parse_in,
        "queue_backend": cfg.queue.backend,
        "ray_address": ray_address,
        "buffers": cfg.buffers,
        "model": dict(cfg.model),
        "backpressure_events": q1_stats.backpressure_events,
        "q1": {**q1_stats.as_dict(), "reordered": reordered},
        "receiver": receiver,
        "starvation_warnings": starvation_warnings,
        "clock_error_s": clock_error_s,
        "config": cfg.model_dump(mode="json"),
    }


def device_facts(engine: Any) -> tuple[str, str]:
    """(device, its description) of an engine, for the summary; an engine without a
    describable device (a test double) gives its str twice."""
    device: Any = getattr(engine, "device", "?")
    try:
        from .device import describe  # torch

        return str(device), describe(device)
    except Exception:
        return str(device), str(device)
