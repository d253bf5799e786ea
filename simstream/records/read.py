"""Readers of the run directory and the emit log (docs/formats.md) into numpy columns.

Every time stays as recorded (Unix seconds, float64); empty CSV cells become
NaN. Columns are found by header name, so column order does not matter.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from simstream.records.contract import EMIT_LOG_KEYS, GPU_STREAMS
from simstream.records.emitlog import parse_log_lines

__all__ = ["read_emit_columns", "read_gpu", "read_messages", "read_numeric_csv"]

_MESSAGE_TEXT = ("status", "reason")  # messages.csv's text columns
_EMIT_TEXT = ("phase", "faults", "outcome", "url", "at_close")  # the emit log's non-numeric keys


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


def read_messages(path: Path) -> dict[str, np.ndarray]:
    """messages.csv: the numeric columns (index, rank, seq, nbytes, t_arrival) as
    float64; ``status`` and ``reason`` are text the diagnosis does not need (the
    summary counts them), so they are skipped, quoted commas and all."""
    text = path.read_text().replace("\r", "")
    head, _, body = text.partition("\n")
    names = [h.strip() for h in head.strip().split(",")]
    cols = [i for i, n in enumerate(names) if n not in _MESSAGE_TEXT]
    body = body.strip("\n")
    if not body.strip():
        return {names[i]: np.empty(0) for i in cols}
    arr = np.loadtxt(io.StringIO(_fill_empty(body)), delimiter=",", usecols=cols, quotechar='"',
                     dtype=np.float64, ndmin=2)
    return {names[i]: np.ascontiguousarray(arr[:, k]) for k, i in enumerate(cols)}


def read_emit_columns(path: Path) -> dict[str, Any]:
    """emit.jsonl -> columns; a torn last line (emitter killed) is skipped."""
    recs = parse_log_lines(path.read_text().splitlines())

    def num(key: str) -> np.ndarray:
        # None (JSON null) becomes NaN in a float array
        return np.array([r.get(key) for r in recs], dtype=np.float64)

    out: dict[str, Any] = {k: num(k) for k in EMIT_LOG_KEYS if k not in _EMIT_TEXT}
    for k in ("phase", "outcome"):
        out[k] = np.asarray([str(r.get(k, "")) for r in recs], dtype=str)
    out["faults"] = [list(r.get("faults") or []) for r in recs]
    out["at_close"] = [r.get("at_close") for r in recs]
    return out


def read_gpu(path: Path) -> dict[str, np.ndarray]:
    """gpu.csv, its ``stream`` as the index of the name in GPU_STREAMS."""
    return read_numeric_csv(path, {"stream": {s: i for i, s in enumerate(GPU_STREAMS)}})
