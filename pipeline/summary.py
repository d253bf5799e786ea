"""The summary stage: the run facts summary.json holds besides the records' own
(docs/formats.md), shared by the in-process and the Ray runner."""

from __future__ import annotations

from typing import Any

from .config import ConsumerConfig

__all__ = ["device_facts", "host_pool_stats", "merge_host_pools", "summary_extra"]


def summary_extra(cfg: ConsumerConfig, *, t_start: float, t_end: float, end_reason: str,
                  device: str, device_description: str, q1_stats: Any, reordered: int,
                  receiver: dict[str, Any] | None, starvation_warnings: int,
                  clock_error_s: float, ray_address: str | None,
                  host_pool: dict[str, Any] | None = None) -> dict[str, Any]:
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
        "host_pool": host_pool,
        "config": cfg.model_dump(mode="json"),
    }


def host_pool_stats(engine: Any) -> dict[str, Any] | None:
    """The engine's host buffer pool counters (``PoolStats.as_dict``), or None for an
    engine without one (a test double)."""
    stats: Any = getattr(getattr(engine, "pool", None), "stats", None)
    return stats.as_dict() if hasattr(stats, "as_dict") else None


def merge_host_pools(pools: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Several engines' ``host_pool`` records summed (sizes by size), or None when
    none had one."""
    have = [p for p in pools if p]
    if not have:
        return None
    out: dict[str, Any] = {k: sum(p[k] for p in have) for k in have[0] if k != "sizes"}
    out["alloc_s"] = round(out["alloc_s"], 6)
    sizes: dict[str, int] = {}
    for p in have:
        for k, v in p["sizes"].items():
            sizes[k] = sizes.get(k, 0) + v
    out["sizes"] = sizes
    return out


def device_facts(engine: Any) -> tuple[str, str]:
    """(device, its description) of an engine, for the summary; an engine without a
    describable device (a test double) gives its str twice."""
    device: Any = getattr(engine, "device", "?")
    try:
        from .device import describe  # torch

        return str(device), describe(device)
    except Exception:
        return str(device), str(device)
