"""Merging the part logs of several emitter processes into one emit log.

Each emitter process writes its own emit log (a *part*), one JSON line per
attempt in the order its attempts ended. The merged log keeps that contract
(docs/formats.md) across processes: every line of every part, verbatim, in
the order the attempts ended.

An attempt's end time is its ``t_last_byte``, else its ``t_first_byte``, else
its ``t_sched`` (Unix seconds). A lost record is written when the loss is
noticed, which can be after those times, so each part's key is the running
maximum of the end times of its lines: non-decreasing, hence a merge by key
keeps each part's own order exactly and orders lines of different parts by
time.

The merge runs while the processes still write (``poll``), so a reader
following the merged log (the runner's kernel-shaping timeline) sees records as
they come: a line is released once every part still being written has reached
its key (a watermark), and the rest when the parts are complete (``finish``).
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["LogMerger", "MergeReport", "end_time", "merge_logs"]


def end_time(record: dict[str, Any]) -> float:
    """When an attempt ended, as far as its record says (Unix seconds)."""
    for key in ("t_last_byte", "t_first_byte", "t_sched"):
        v = record.get(key)
        if isinstance(v, (int, float)):
            return float(v)
    return float("-inf")


@dataclass
class _Part:
    path: Path
    fh: IO[bytes] | None = None
    rest: bytes = b""
    lines: deque[tuple[float, bytes]] = field(default_factory=deque)
    last_key: float = float("-inf")
    read: int = 0  # complete lines read
    written: int = 0  # of them written to the merged log
    complete: bool = False  # its writer has exited and every byte was read
    partial: bytes = b""  # an unterminated last line (its writer was killed)

    def pull(self) -> None:
        """Read what was appended since the last call; keep an unterminated tail."""
        if self.fh is None:
            try:
                self.fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()
            except FileNotFoundError:
                return  # the process has not opened its log yet
        data = self.fh.read()
        if not data:
            return
        buf = self.rest + data
        *whole, self.rest = buf.split(b"\n")
        for raw in whole:
            line = raw.rstrip(b"\r")
            if not line.strip():
                continue
            self.read += 1
            try:
                key = end_time(json.loads(line))
            except (ValueError, TypeError, AttributeError):
                key = self.last_key  # kept in place, verbatim; counted like any line
            self.last_key = max(self.last_key, key)
            self.lines.append((self.last_key, line))

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


@dataclass
class MergeReport:
    """What a merge did: lines read and written per part, unterminated tails dropped."""

    parts: list[Path]
    read: list[int]
    written: list[int]
    partial: list[int]  # 1 where a part ended in an unterminated line (not merged)

    @property
    def lines(self) -> int:
        return sum(self.written)

    @property
    def complete(self) -> bool:
        """Every complete line of every part is in the merged log, none twice."""
        return self.read == self.written

    def problems(self) -> list[str]:
        out = []
        for path, r, w, cut in zip(self.parts, self.read, self.written, self.partial,
                                   strict=True):
            if r != w:
                out.append(f"{path}: {r} lines read but {w} merged")
            if cut:
                out.append(f"{path}: ends in an unterminated line (its process was killed "
                           f"while writing): that incomplete record is not merged")
        return out


class LogMerger:
    """Merge growing part logs into ``out`` (a path, created/truncated, or a binary stream).

    ``poll()`` merges what can be placed already; ``mark_complete(i)`` says part
    ``i``'s writer has exited; ``finish()`` merges the rest and returns the
    :class:`MergeReport`. ``on_line(record)`` (optional) sees every merged
    record that parses, e.g. for totals. Raises OSError if ``out`` cannot be
    written.
    """

    def __init__(self, parts: list[Path], out: str | Path | IO[bytes], *,
                 on_line: Any = None) -> None:
        self._parts = [_Part(Path(p)) for p in parts]
        if isinstance(out, (str, Path)):
            self._out: IO[bytes] = open(out, "wb")  # noqa: SIM115 - closed in finish()
            self._owns = True
        else:
            self._out = out
            self._owns = False
        self._on_line = on_line
        self._closed = False

    def mark_complete(self, index: int) -> None:
        part = self._parts[index]
        part.pull()
        part.complete = True

    def poll(self) -> int:
        """Read every part and write the lines whose place is certain; returns how many."""
        for part in self._parts:
            if not part.complete:
                part.pull()
        open_keys = [p.last_key if p.read else float("-inf")
                     for p in self._parts if not p.complete]
        watermark = min(open_keys) if open_keys else float("inf")
        n = self._release(watermark)
        if n:
            self._out.flush()
        return n

    def finish(self) -> MergeReport:
        """Every part is complete: merge all that is left, close, and say what was merged."""
        for i in range(len(self._parts)):
            if not self._parts[i].complete:
                self.mark_complete(i)
        self._release(float("inf"))
        for part in self._parts:
            part.partial = part.rest
            part.close()
        if not self._closed:
            self._out.flush()
            if self._owns:
                self._out.close()
            self._closed = True
        return MergeReport(
            parts=[p.path for p in self._parts],
            read=[p.read for p in self._parts],
            written=[p.written for p in self._parts],
            partial=[1 if p.partial.strip() else 0 for p in self._parts],
        )

    def _release(self, watermark: float) -> int:
        # heads of every part, smallest key first; ties go to the lower part index
        heap = [(p.lines[0][0], i) for i, p in enumerate(self._parts) if p.lines]
        heapq.heapify(heap)
        n = 0
        while heap and heap[0][0] <= watermark:
            _, i = heapq.heappop(heap)
            part = self._parts[i]
            _, line = part.lines.popleft()
            self._out.write(line + b"\n")
            part.written += 1
            n += 1
            if self._on_line is not None:
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None  # merged verbatim all the same; only the totals skip it
                if isinstance(rec, dict):
                    self._on_line(rec)
            if part.lines:
                heapq.heappush(heap, (part.lines[0][0], i))
        return n


def merge_logs(parts: list[Path], out: str | Path | IO[bytes]) -> MergeReport:
    """Merge complete part logs into ``out`` at once (see :class:`LogMerger`)."""
    return LogMerger(parts, out).finish()
