"""The emit log: one JSON line per message attempt, exactly as docs/formats.md says.

Written as attempts end, flushed every ``flush_every`` records or
``flush_interval_s`` seconds (whichever comes first), so a killed run keeps
almost all of it and memory stays bounded whatever the run's length.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from simstream.records.contract import EMIT_LOG_KEYS, EMIT_OUTCOMES

__all__ = ["LOG_KEYS", "OUTCOMES", "EmitLog", "parse_log_lines", "read_log"]

#: the contract's keys, in the order they are written
LOG_KEYS = EMIT_LOG_KEYS
OUTCOMES = EMIT_OUTCOMES


class EmitLog:
    """Append-only JSON-lines writer for emit records.

    ``path``: a file path (created/truncated; with ``append`` created or appended
    to: a restarted emitter keeps its earlier life's records) or an open text stream. Raises
    OSError if the file cannot be opened; ValueError for a record whose keys or
    outcome break the contract (a programming error, caught in tests).
    """

    def __init__(self, path: str | Path | IO[str], *, flush_every: int = 64,
                 flush_interval_s: float = 0.5, append: bool = False) -> None:
        if isinstance(path, (str, Path)):
            if append:
                _end_torn_line(Path(path))
            self._fh: IO[str] = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
            self._owns = True
        else:
            self._fh = path
            self._owns = False
        self._flush_every = flush_every
        self._flush_interval_s = flush_interval_s
        self._unflushed = 0
        self._last_flush = time.monotonic()
        self.records = 0
        self.closed = False

    def write(self, record: dict[str, Any]) -> None:
        if self.closed:
            raise ValueError("emit log is closed")
        if tuple(record) != LOG_KEYS:
            missing = set(LOG_KEYS) - set(record)
            extra = set(record) - set(LOG_KEYS)
            raise ValueError(f"emit record keys differ from the contract: "
                             f"missing {sorted(missing)}, extra {sorted(extra)}")
        if record["outcome"] not in OUTCOMES:
            raise ValueError(f"outcome {record['outcome']!r} is not one of {OUTCOMES}")
        self._fh.write(json.dumps(record, separators=(", ", ": ")) + "\n")
        self.records += 1
        self._unflushed += 1
        if (self._unflushed >= self._flush_every
                or time.monotonic() - self._last_flush >= self._flush_interval_s):
            self.flush()

    def flush(self) -> None:
        if self.closed:
            return
        self._fh.flush()
        self._unflushed = 0
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        if self._owns:
            self._fh.close()
        self.closed = True

    def __enter__(self) -> EmitLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end_torn_line(path: Path) -> None:
    """Before appending: a last line without its newline (the earlier writer was
    killed mid-write) gets one, so it stays one torn line and the next record starts
    whole on its own line."""
    try:
        with open(path, "rb+") as fh:
            fh.seek(0, 2)
            if fh.tell() == 0:
                return
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
    except FileNotFoundError:
        return


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of an emit log (a partial last line from a killed run is skipped)."""
    with open(path, encoding="utf-8") as fh:
        return parse_log_lines(fh.read().splitlines())


def parse_log_lines(lines: list[str]) -> list[dict[str, Any]]:
    """The records of emit-log lines; blank lines and a torn line (its emitter was
    killed mid-write) are skipped. Parses all lines in one call when they are whole."""
    lines = [ln for ln in lines if ln.strip()]
    try:
        return json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        pass
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return out
