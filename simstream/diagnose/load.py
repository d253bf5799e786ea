"""Read a run directory (docs/formats.md) into numpy columns.

The readers live in simstream.records (the contract); this adds the checks a
diagnosis needs. Only the measurements are read: ``summary.json``, ``batches.csv``,
``messages.csv``, ``q1.csv``, ``gpu.csv``, ``quarantine/`` and, when present,
``emit.jsonl``. ``profile.yaml`` is never opened: the diagnosis must stand on
what was measured, not on what was asked for.

Raises NotARunDir (a UsageError: exit status 2 on the command line) when the
directory lacks ``batches.csv``, naming what is missing. A directory without
``summary.json`` is a run that was cut short (its consumer killed): the summary's
counts are rebuilt from ``messages.csv``, ``batches.csv`` and ``q1.csv``, and
``RunData.cut_short`` says so.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simstream.errors import UsageError
from simstream.records.contract import (
    BATCH_COLUMNS,
    BATCHES_CSV,
    EMIT_LOG,
    EMIT_LOG_HOSTS,
    GPU_CSV,
    GPU_STREAMS,
    MESSAGES_CSV,
    Q1_CSV,
    QUARANTINE_DIR,
    SUMMARY_JSON,
)
from simstream.records.read import read_emit_columns, read_gpu, read_messages, read_numeric_csv

__all__ = ["REQUIRED_FILES", "NotARunDir", "RunData", "load_run", "read_numeric_csv"]

REQUIRED_FILES = (SUMMARY_JSON, BATCHES_CSV)
STREAMS = GPU_STREAMS


class NotARunDir(UsageError):
    """The directory is not a consumer run directory (a required file is missing)."""


@dataclass
class RunData:
    """One run directory's measurements. Times in Unix seconds (float64)."""

    root: Path
    summary: dict[str, Any]
    batches: dict[str, np.ndarray]
    messages: dict[str, np.ndarray] | None = None
    q1: dict[str, np.ndarray] | None = None
    gpu: dict[str, np.ndarray] | None = None
    emit: dict[str, Any] | None = None
    quarantined_files: int = 0
    sources: dict[str, Any] = field(default_factory=dict)
    cut_short: bool = False  # no summary.json: rebuilt from the CSV files

    @property
    def n_batches(self) -> int:
        return int(self.batches["t_arrival"].size)

    @property
    def has_seq(self) -> bool:
        """True when messages carry simstream sequence numbers."""
        seq = self.batches.get("seq")
        return seq is not None and bool(np.isfinite(seq).any())


def load_run(root: str | Path) -> RunData:
    """Read a run directory. Raises NotARunDir naming the missing files."""
    root = Path(root)
    if not root.is_dir():
        raise NotARunDir(f"{root}: not a directory")
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    cut_short = missing == [SUMMARY_JSON]
    if missing and not cut_short:
        inside = sorted(p.name for p in root.iterdir()
                        if p.is_dir() and all((p / n).is_file() for n in REQUIRED_FILES))
        hint = f" (it holds run directories: {', '.join(inside)})" if inside else ""
        raise NotARunDir(f"{root} is not a run directory: missing {', '.join(missing)}{hint}")
    summary: Any = {}
    if not cut_short:
        try:
            summary = json.loads((root / SUMMARY_JSON).read_text())
        except json.JSONDecodeError as e:
            raise NotARunDir(f"{root / SUMMARY_JSON}: not valid JSON ({e})") from None
    if not isinstance(summary, dict):
        raise NotARunDir(f"{root / SUMMARY_JSON}: not a JSON object")
    try:
        batches = read_numeric_csv(root / BATCHES_CSV)
    except ValueError as e:
        raise NotARunDir(f"{root / BATCHES_CSV}: unreadable ({e})") from None
    lacking = [c for c in ("t_arrival", "t_compute_start", "t_compute_end") if c not in batches]
    if lacking:
        raise NotARunDir(f"{root / BATCHES_CSV}: missing columns {', '.join(lacking)}")
    n = batches["t_arrival"].size
    for c in BATCH_COLUMNS:
        batches.setdefault(c, np.full(n, np.nan))

    sources: dict[str, Any] = {"summary": True, "batches": True}
    run = RunData(root=root, summary=summary, batches=batches, sources=sources, cut_short=cut_short)
    for name, attr, reader in (
        (MESSAGES_CSV, "messages", read_messages),
        (Q1_CSV, "q1", read_numeric_csv),
        (GPU_CSV, "gpu", read_gpu),
    ):
        p = root / name
        key = name.split(".")[0]
        if p.is_file():
            try:
                setattr(run, attr, reader(p))
                sources[key] = True
            except (ValueError, OSError) as e:
                sources[key] = f"unreadable: {e}"
        else:
            sources[key] = False
    emit = root / EMIT_LOG
    hosts = sorted(root.glob(EMIT_LOG_HOSTS))
    if not emit.exists() and hosts:
        # one log per emitter host (the compose testbed): merged once, in time order
        from simstream.emitter.merge import merge_logs

        merge_logs(hosts, emit)
        sources["emit_log_hosts"] = [h.name for h in hosts]
    if emit.is_file() and emit.stat().st_size > 0:
        run.emit = read_emit_columns(emit)
        sources["emit_log"] = bool(run.emit["t_sched"].size)
        if not run.emit["t_sched"].size:
            run.emit = None
    else:
        sources["emit_log"] = False
    qdir = root / QUARANTINE_DIR
    run.quarantined_files = len(list(qdir.glob("*.bin"))) if qdir.is_dir() else 0
    sources["quarantine"] = qdir.is_dir()
    sources["sequence_numbers"] = run.has_seq
    if cut_short:
        run.summary = rebuild_summary(run)
        sources["summary"] = ("missing: the run was cut short; counts rebuilt from messages.csv, "
                              "batches.csv and q1.csv")
    return run


def _statuses(path: Path) -> dict[str, int]:
    import csv

    counts: dict[str, int] = {}
    with contextlib.suppress(OSError), path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            st = row.get("status") or ""
            counts[st] = counts.get(st, 0) + 1
    return counts


def rebuild_summary(run: RunData) -> dict[str, Any]:
    """What summary.json would have said, from the rows the consumer flushed before it
    stopped (a torn last row is not counted)."""
    b = run.batches
    st = _statuses(run.root / MESSAGES_CSV)
    received = sum(st.values())

    def fin(a: np.ndarray) -> np.ndarray:
        return a[np.isfinite(a)]

    arr = fin(b["t_arrival"])
    d2h = fin(b["t_d2h_end"])
    out: dict[str, Any] = {
        "cut_short": True,
        "end_reason": "cut short (no summary.json)",
        "received": received,
        "processed": st.get("processed", 0),
        "quarantined": st.get("quarantined", 0),
        "accounting_ok": False,
        "accounting_problems": ["the run was cut short: counts rebuilt from the CSV files"],
        "batches": int(b["t_arrival"].size),
        "samples": int(np.nansum(b["events"])),
        "bytes": int(np.nansum(b["nbytes"])),
        "first_arrival": float(arr.min()) if arr.size else None,
        "last_arrival": float(arr.max()) if arr.size else None,
        "last_finish": float(d2h.max()) if d2h.size else None,
    }
    if run.q1 is not None and "depth" in run.q1 and run.q1["depth"].size:
        depth, size = run.q1["depth"], run.q1.get("maxsize")
        if size is not None and np.all(size > 0):
            out["q1"] = {"samples": int(depth.size), "maxsize": int(size.max()),
                         "mean_occupancy": float(np.mean(depth / size))}
    return out
