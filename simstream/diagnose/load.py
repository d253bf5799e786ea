"""Read a run directory (docs/formats.md) into numpy columns.

Only the measurements are read: ``summary.json``, ``batches.csv``,
``messages.csv``, ``q1.csv``, ``gpu.csv``, ``quarantine/`` and, when present,
``emit.jsonl``. ``profile.yaml`` is never opened: the diagnosis must stand on
what was measured, not on what was asked for.

Every time stays as recorded (Unix seconds, float64); empty CSV cells become
NaN. Columns are found by header name, so column order does not matter.

Raises NotARunDir (a UsageError: exit status 2 on the command line) when the
directory lacks ``summary.json`` or ``batches.csv``, naming what is missing.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simstream.errors import UsageError

__all__ = ["REQUIRED_FILES", "NotARunDir", "RunData", "load_run", "read_numeric_csv"]

REQUIRED_FILES = ("summary.json", "batches.csv")

BATCH_COLUMNS = (
    "index", "rank", "seq", "events", "nbytes", "t_arrival", "t_parse_start", "t_parse_end",
    "t_q1_put_start", "t_q1_put_end", "t_q1_get_start", "t_q1_get_end", "buffer",
    "t_h2d_start", "t_h2d_end", "t_compute_start", "t_compute_end", "t_d2h_start", "t_d2h_end",
)
STREAMS = ("h2d", "compute", "d2h")



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

    @property
    def n_batches(self) -> int:
        return int(self.batches["t_arrival"].size)

    @property
    def has_seq(self) -> bool:
        """True when messages carry simstream sequence numbers."""
        seq = self.batches.get("seq")
        return seq is not None and bool(np.isfinite(seq).any())


def _fill_empty(body: str) -> str:
    """Write NaN into empty cells (plain str.replace: far faster than a regex)."""
    body = body.replace(",,", ",nan,").replace(",,", ",nan,")
    body = body.replace(",\n", ",nan\n").replace("\n,", "\nnan,")
    if body.endswith(","):
        body += "nan"
    if body.startswith(","):
        body = "nan" + body
    return body


def read_numeric_csv(path: Path, rename: dict[str, dict[str, float]] | None = None) -> dict[str, np.ndarray]:
    """A CSV of numbers with a header -> {column: float64 array}; empty cells -> NaN.

    ``rename`` maps a column to {text: number} for the few text columns (e.g.
    gpu.csv's ``stream``). Raises ValueError on a malformed file.
    """
    text = path.read_text().replace("\r", "")
    head, _, body = text.partition("\n")
    names = [h.strip() for h in head.strip().split(",")]
    body = body.strip("\n")
    if not body.strip():
        return {n: np.empty(0) for n in names}
    for col, mapping in (rename or {}).items():
        if col not in names:
            continue
        if names.index(col) != 0:
            raise ValueError(f"{path.name}: text column {col!r} must come first")
        body = "\n" + body
        for word, code in mapping.items():
            body = body.replace(f"\n{word},", f"\n{code},")
        body = body[1:]
    body = _fill_empty(body)
    arr = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64, ndmin=2)
    if arr.shape[1] != len(names):
        raise ValueError(f"{path.name}: {arr.shape[1]} columns but the header names {len(names)}")
    return {n: np.ascontiguousarray(arr[:, i]) for i, n in enumerate(names)}


def _read_messages(path: Path) -> dict[str, np.ndarray]:
    """messages.csv: the numeric columns (index, rank, seq, nbytes, t_arrival) as
    float64; ``status`` and ``reason`` are text the diagnosis does not need (the
    summary counts them), so they are skipped, quoted commas and all."""
    text = path.read_text().replace("\r", "")
    head, _, body = text.partition("\n")
    names = [h.strip() for h in head.strip().split(",")]
    cols = [i for i, n in enumerate(names) if n not in ("status", "reason")]
    body = body.strip("\n")
    if not body.strip():
        return {names[i]: np.empty(0) for i in cols}
    arr = np.loadtxt(io.StringIO(_fill_empty(body)), delimiter=",", usecols=cols, quotechar='"',
                     dtype=np.float64, ndmin=2)
    return {names[i]: np.ascontiguousarray(arr[:, k]) for k, i in enumerate(cols)}


def _read_emit(path: Path) -> dict[str, Any]:
    """emit.jsonl -> columns; a torn last line (emitter killed) is skipped."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    try:
        recs = json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        recs = []
        for ln in lines:
            try:
                recs.append(json.loads(ln))
            except json.JSONDecodeError:
                continue

    def num(key: str) -> np.ndarray:
        # None (JSON null) becomes NaN in a float array
        return np.array([r.get(key) for r in recs], dtype=np.float64)

    return {
        "rank": num("rank"),
        "seq": num("seq"),
        "t_sched": num("t_sched"),
        "t_first_byte": num("t_first_byte"),
        "t_last_byte": num("t_last_byte"),
        "nbytes": num("nbytes"),
        "wire_bytes": num("wire_bytes"),
        "events": num("events"),
        "blocked_s": num("blocked_s"),
        "hwm_wait_s": num("hwm_wait_s"),
        "socket_wait_s": num("socket_wait_s"),
        "phase": np.asarray([str(r.get("phase", "")) for r in recs], dtype=str),
        "faults": [list(r.get("faults") or []) for r in recs],
        "outcome": np.asarray([str(r.get("outcome", "")) for r in recs], dtype=str),
    }


def load_run(root: str | Path) -> RunData:
    """Read a run directory. Raises NotARunDir naming the missing files."""
    root = Path(root)
    if not root.is_dir():
        raise NotARunDir(f"{root}: not a directory")
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        inside = sorted(p.name for p in root.iterdir()
                        if p.is_dir() and all((p / n).is_file() for n in REQUIRED_FILES))
        hint = f" (it holds run directories: {', '.join(inside)})" if inside else ""
        raise NotARunDir(f"{root} is not a run directory: missing {', '.join(missing)}{hint}")
    try:
        summary = json.loads((root / "summary.json").read_text())
    except json.JSONDecodeError as e:
        raise NotARunDir(f"{root / 'summary.json'}: not valid JSON ({e})") from None
    if not isinstance(summary, dict):
        raise NotARunDir(f"{root / 'summary.json'}: not a JSON object")
    try:
        batches = read_numeric_csv(root / "batches.csv")
    except ValueError as e:
        raise NotARunDir(f"{root / 'batches.csv'}: unreadable ({e})") from None
    lacking = [c for c in ("t_arrival", "t_compute_start", "t_compute_end") if c not in batches]
    if lacking:
        raise NotARunDir(f"{root / 'batches.csv'}: missing columns {', '.join(lacking)}")
    n = batches["t_arrival"].size
    for c in BATCH_COLUMNS:
        batches.setdefault(c, np.full(n, np.nan))

    sources: dict[str, Any] = {"summary": True, "batches": True}
    run = RunData(root=root, summary=summary, batches=batches, sources=sources)
    for name, attr, reader in (
        ("messages.csv", "messages", _read_messages),
        ("q1.csv", "q1", read_numeric_csv),
        ("gpu.csv", "gpu", lambda p: read_numeric_csv(p, {"stream": {s: i for i, s in enumerate(STREAMS)}})),
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
    emit = root / "emit.jsonl"
    if emit.is_file() and emit.stat().st_size > 0:
        run.emit = _read_emit(emit)
        sources["emit_log"] = bool(run.emit["t_sched"].size)
        if not run.emit["t_sched"].size:
            run.emit = None
    else:
        sources["emit_log"] = False
    qdir = root / "quarantine"
    run.quarantined_files = len(list(qdir.glob("*.bin"))) if qdir.is_dir() else 0
    sources["quarantine"] = qdir.is_dir()
    sources["sequence_numbers"] = run.has_seq
    return run
