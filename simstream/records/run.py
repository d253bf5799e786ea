"""The run directory's writer (docs/formats.md): what every stage measured, and the accounting.

Files: ``messages.csv`` (one row per received message), ``batches.csv`` (one row
per processed batch), ``q1.csv`` (occupancy samples), ``gpu.csv`` (busy intervals
per stream), ``quarantine/`` (undecodable messages) and, at the end,
``summary.json``. Rows are flushed as they are written, so a long run keeps only
running totals (and a bounded sample of each stage's times, for the medians) in memory and a reader (the runner waiting for the consumer to go
quiet) sees progress. Times are Unix seconds on ``simstream.clock.now()``.

The accounting (``SequenceLedger``) is a pure function of the arrivals' per-stream
sequence numbers, a stream being one (rank, epoch): an emitter that restarts (a
killed host started again) sends from sequence 0 under a new epoch, a new stream,
so its messages are never taken for duplicates of its earlier life's; messages
without an epoch (a real LCLStreamer's, an older emitter's) are one stream per rank:
- lost: per stream, sequence numbers below the highest seen that never arrived;
- duplicated: arrivals of an already seen (rank, epoch, seq);
- reordered: arrivals with a seq lower than the highest seen so far for that
  stream that were not duplicates (a late arrival fills a gap).
All three are None when no message carried a sequence number.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import json
import logging
import math
import random
import statistics
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from simstream.records.contract import (
    BATCH_COLUMNS,
    BUSY_FIGURES,
    GPU_COLUMNS,
    GPU_STREAMS,
    MESSAGE_COLUMNS,
    Q1_COLUMNS,
    Q1_HIGH_SHARE,
    QUARANTINE_DIR,
    QUARANTINE_HEAD_BYTES,
    RUN_CSV_COLUMNS,
    STARVATION_UTILISATION,
    SUMMARY_JSON,
    SUMMARY_STAGE_KEYS,
)

log = logging.getLogger("pipeline.records")

# quarantine/ keeps at most this many messages and bytes; beyond, messages are still
# counted (summary.json, messages.csv rows with their reasons) but not saved
QUARANTINE_MAX_FILES = 1000
QUARANTINE_MAX_BYTES = 64 << 20
# a sequence number more than this far above its rank's highest (or, for a rank's
# first arrival, above 0) is out of the window: counted apart, kept out of
# lost/reordered (one forged 2^62 must not make every later arrival "reordered")
SEQ_WINDOW = 1 << 24
# disk space held back at the start and given up just before summary.json is
# written, so a full disk still gets its summary
SUMMARY_RESERVE_BYTES = 256 << 10

__all__ = [
    "BATCH_COLUMNS",
    "GPU_COLUMNS",
    "MESSAGE_COLUMNS",
    "QUARANTINE_HEAD_BYTES",
    "Q1_COLUMNS",
    "BatchTimes",
    "Reservoir",
    "RunRecords",
    "SequenceLedger",
    "UnionTracker",
]


class _Gaps:
    """Disjoint half-open integer intervals [a, b), sorted; the missing seqs of one rank."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.total = 0

    def add(self, a: int, b: int) -> None:
        # only ever called with a above every stored interval
        if b <= a:
            return
        if self.ends and self.ends[-1] == a:
            self.ends[-1] = b
        else:
            self.starts.append(a)
            self.ends.append(b)
        self.total += b - a

    def remove(self, x: int) -> bool:
        """Take x out; True if it was missing."""
        i = bisect.bisect_right(self.starts, x) - 1
        if i < 0 or x >= self.ends[i]:
            return False
        a, b = self.starts[i], self.ends[i]
        self.total -= 1
        if a == x and b == x + 1:
            del self.starts[i], self.ends[i]
        elif a == x:
            self.starts[i] = x + 1
        elif b == x + 1:
            self.ends[i] = x
        else:
            self.ends[i] = x
            self.starts.insert(i + 1, x + 1)
            self.ends.insert(i + 1, b)
        return True


class SequenceLedger:
    """Lost / duplicated / reordered from per-stream sequence numbers, a stream being
    one (rank, epoch) (module docstring).

    Memory grows with the number of gaps and streams, not of messages. Sequence
    numbers start at 0 in every stream, so seqs below a stream's first arrival count
    as lost.
    """

    def __init__(self, window: int = SEQ_WINDOW) -> None:
        # keyed by (rank, epoch), in the order the streams first arrived
        self._max: dict[tuple[int, int | None], int] = {}
        self._gaps: dict[tuple[int, int | None], _Gaps] = {}
        self.window = window
        self.duplicated = 0
        self.reordered = 0
        self.with_seq = 0
        self.without_seq = 0
        self.out_of_window = 0

    def see(self, rank: int | None, seq: int | None, epoch: int | None = None) -> str:
        """Account one arrival; returns ``new``, ``duplicate``, ``reordered``,
        ``out_of_window`` (more than ``window`` above the stream's highest) or
        ``unknown``. ``epoch``: the emitter's start id, None when the message has none."""
        if rank is None or seq is None or seq < 0:
            self.without_seq += 1
            return "unknown"
        self.with_seq += 1
        key = (rank, epoch)
        top = self._max.get(key, -1)
        if seq - top > self.window:
            self.out_of_window += 1
            return "out_of_window"
        gaps = self._gaps.setdefault(key, _Gaps())
        if seq > top:
            gaps.add(top + 1, seq)
            self._max[key] = seq
            return "new"
        if gaps.remove(seq):
            self.reordered += 1
            return "reordered"
        self.duplicated += 1
        return "duplicate"

    @property
    def has_seq(self) -> bool:
        return self.with_seq > 0

    @property
    def lost(self) -> int:
        return sum(g.total for g in self._gaps.values())

    def counts(self) -> dict[str, int | None]:
        if not self.has_seq:
            return {"lost": None, "duplicated": None, "reordered": None}
        return {"lost": self.lost, "duplicated": self.duplicated, "reordered": self.reordered}

    def ranks(self) -> dict[str, dict[str, Any]]:
        """rank -> ``max_seq`` (of the rank's latest stream: the epoch that arrived
        last), ``lost`` (over all its epochs) and ``epochs``: one entry per epoch
        seen, in the order they first arrived (``epoch``, ``max_seq``, ``lost``);
        empty when the rank's messages carry no epoch."""
        out: dict[str, dict[str, Any]] = {}
        for (r, e), top in self._max.items():  # streams in first-arrival order
            row = out.setdefault(str(r), {"max_seq": top, "lost": 0, "epochs": []})
            lost = self._gaps[(r, e)].total
            row["max_seq"] = top
            row["lost"] += lost
            if e is not None:
                row["epochs"].append({"epoch": e, "max_seq": top, "lost": lost})
        return {r: out[r] for r in sorted(out, key=int)}


class UnionTracker:
    """Length of the union of intervals fed in (mostly) start order, O(1) memory."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start: float | None = None
        self._end: float | None = None

    def add(self, start: float, end: float) -> None:
        if self._end is None or start > self._end:
            if self._end is not None and self._start is not None:
                self.total += self._end - self._start
            self._start, self._end = start, end
        else:
            self._end = max(self._end, end)
            self._start = min(self._start, start) if self._start is not None else start

    def value(self) -> float:
        if self._end is None or self._start is None:
            return self.total
        return self.total + (self._end - self._start)


class LateUnion:
    """Length of the union of intervals that arrive out of start order, as a buffered
    pipeline finishes them (batch k+1's H2D may start before batch k's compute).
    The latest ``window`` intervals are held and merged exactly; older ones are folded
    into a running total, lowest start first. An interval that starts before what was
    already folded counts only from there (the pipeline's reordering is far shorter
    than the window). O(window) memory, O(log window) per interval amortised."""

    def __init__(self, window: int = 256) -> None:
        self.window = window
        self.total = 0.0
        self._start: float | None = None  # the folded interval still open
        self._end: float | None = None
        self._pending: list[tuple[float, float]] = []

    def add(self, start: float, end: float) -> None:
        if end <= start:
            return
        self._pending.append((start, end))
        if len(self._pending) > self.window:
            self._pending.sort()
            half = self.window // 2
            for s, e in self._pending[:half]:
                self._fold(s, e)
            del self._pending[:half]

    def _fold(self, start: float, end: float) -> None:
        if self._end is not None and self._start is not None:
            start = max(start, self._start)
            if end <= start:
                return
            if start <= self._end:
                self._end = max(self._end, end)
                return
            self.total += self._end - self._start
        self._start, self._end = start, end

    def value(self) -> float:
        total, cs, ce = self.total, self._start, self._end
        for s, e in sorted(self._pending):
            if ce is not None and cs is not None:
                s = max(s, cs)
                if e <= s:
                    continue
                if s <= ce:
                    ce = max(ce, e)
                    continue
                total += ce - cs
            cs, ce = s, e
        return total + (ce - cs if ce is not None and cs is not None else 0.0)


@dataclass
class BatchTimes:
    """What the host side knows about one batch before the engine sees it."""

    index: int
    rank: int | None
    seq: int | None
    events: int
    nbytes: int
    t_arrival: float
    t_parse_start: float | None = None
    t_parse_end: float | None = None
    t_q1_put_start: float | None = None
    t_q1_put_end: float | None = None
    t_q1_get_start: float | None = None
    t_q1_get_end: float | None = None


class Reservoir:
    """A uniform sample of at most ``cap`` floats from a stream (Algorithm R), for
    medians in bounded memory: exact until ``cap`` values, an unbiased sample after.
    ``rng`` is injected so a run's figures are reproducible."""

    def __init__(self, cap: int = 1 << 16, rng: random.Random | None = None) -> None:
        self.cap = cap
        self.values = array("d")
        self.seen = 0
        self.rng = rng or random.Random(0)

    def append(self, v: float) -> None:
        self.seen += 1
        if len(self.values) < self.cap:
            self.values.append(v)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.cap:
                self.values[j] = v

    def __iter__(self) -> Iterator[float]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _last_time(*times: float | None) -> float:
    """The first of ``times`` that is known (the latest stage a batch went through)."""
    return next(t for t in times if t is not None)


def _median_ms(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.median(vals) * 1000.0 if vals else None


class RunRecords:
    """Writes the run directory and keeps the running totals for summary.json.

    Thread-safe: the receiver, parser, Q1 sampler and inference threads all report
    here. ``close(extra)`` writes summary.json and returns it.

    ``streams``: several receivers number their messages in stripes (receiver i of
    n gives its k-th message index ``k * n + i``); each receiver's arrivals reach
    the sequence ledger in its own arrival order. ``batch_done``'s ``device`` names
    the inference device (actor) of a batch; the GPU busy fraction is the mean over
    devices of each one's busy share.
    """

    def __init__(self, out_dir: str | Path, streams: int = 1, *,
                 quarantine_max_files: int = QUARANTINE_MAX_FILES,
                 quarantine_max_bytes: int = QUARANTINE_MAX_BYTES,
                 seq_window: int = SEQ_WINDOW) -> None:
        if streams < 1:
            raise ValueError(f"streams {streams} is not >= 1")
        self.streams = streams
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.qdir = self.dir / QUARANTINE_DIR
        self.qdir.mkdir(exist_ok=True)
        self.quarantine_max_files = quarantine_max_files
        self.quarantine_max_bytes = quarantine_max_bytes
        self.quarantine_saved = 0
        self.quarantine_saved_bytes = 0
        self.quarantine_not_saved = 0
        # the first write that failed (ENOSPC...): bulky files stop, counting goes on
        self.disk_error: str | None = None
        self.disk_errors = 0
        self._broken: set[str] = set()
        self._reserve = self.dir / ".summary-reserve"
        try:
            with self._reserve.open("wb") as f:
                f.truncate(0)
                f.write(b"\0" * SUMMARY_RESERVE_BYTES)
        except OSError as e:
            self._disk_failed(f"reserving space for summary.json: {e}")
            self._reserve.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._files: dict[str, IO[str]] = {}
        self._writers = {}
        for fname, cols in RUN_CSV_COLUMNS.items():
            name = fname.removesuffix(".csv")
            fh = (self.dir / fname).open("w", newline="", buffering=1 << 16)
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(cols)
            fh.flush()
            self._files[name] = fh
            self._writers[name] = w
        self.ledger = SequenceLedger(seq_window)
        self._pending_seq: dict[int, tuple[int | None, int | None, int | None]] = {}
        # message index -> epoch, until its messages.csv row is written
        self._epoch_of: dict[int, int] = {}
        self._next_seq = list(range(streams))  # per stream, the next index to account
        self.received = 0
        self.processed = 0
        self.quarantined = 0
        self.reasons: Counter[str] = Counter()
        self.batches = 0
        self.samples = 0
        self.bytes = 0
        self.first_arrival: float | None = None
        self.last_arrival: float | None = None
        self.last_finish: float | None = None
        self.first_finish: float | None = None
        self._compute_union: dict[int, UnionTracker] = {}
        self._any_union: dict[int, LateUnion] = {}  # H2D, compute or D2H
        self._wait_union = LateUnion()  # the loop's waits on an empty Q1
        self._gets = 0
        self._compute_sum = 0.0
        self._stage: dict[str, Reservoir] = {
k: Reservoir() for k in SUMMARY_STAGE_KEYS}
        self._q1 = {"samples": 0, "sum": 0.0, "empty": 0, "under_30": 0, "over_80": 0, "maxsize": 0}
        self._closed = False
        #: what runs the inference stage ("cpu", "cuda:0"), set by the consumer once
        #: known: progress lines name it
        self.device: str | None = None

    # -- per message -------------------------------------------------------------------
    def arrival(self, t_arrival: float) -> None:
        """Every received message, before its fate is known."""
        with self._lock:
            self.received += 1
            if self.first_arrival is None:
                self.first_arrival = t_arrival
            self.last_arrival = t_arrival

    def sequence(self, index: int, rank: int | None, seq: int | None,
                 epoch: int | None = None) -> None:
        """Account message ``index``'s (rank, seq, epoch) once known (decoded, or None
        when it could not be). Parsers finish out of order; the ledger is fed in arrival
        (index) order so "reordered" means reordered on the wire, not by parsing.
        Called before the message's ``quarantine`` or ``batch_done``, whose
        messages.csv row then carries the epoch."""
        with self._lock:
            self._pending_seq[index] = (rank, seq, epoch)
            if epoch is not None:
                self._epoch_of[index] = epoch
            stream = index % self.streams
            nxt = self._next_seq[stream]
            while nxt in self._pending_seq:
                r, s, e = self._pending_seq.pop(nxt)
                self.ledger.see(r, s, e)
                nxt += self.streams
            self._next_seq[stream] = nxt

    def _flush_sequences(self) -> None:
        # indices never accounted (dropped at a stop) leave holes: feed the rest in order
        for i in sorted(self._pending_seq):
            r, s, e = self._pending_seq[i]
            self.ledger.see(r, s, e)
        self._pending_seq.clear()

    def quarantine(
        self,
        index: int,
        payload: bytes | bytearray | memoryview | None,
        reason: str,
        *,
        nbytes: int,
        t_arrival: float,
        rank: int | None = None,
        seq: int | None = None,
    ) -> None:
        """Count an undecodable message and save it as quarantine/NNNNNN.bin + .json.

        ``payload`` may be None (an oversize body never read) or longer than what is
        kept (the first QUARANTINE_HEAD_BYTES of an oversize message). Past
        ``quarantine_max_files`` messages or ``quarantine_max_bytes``, or once a write
        failed (a full disk), the message is counted with its reason but not saved.
        """
        reason = reason if len(reason) <= 500 else reason[:497] + "..."
        size = 0 if payload is None else min(len(memoryview(payload).cast("B")), QUARANTINE_HEAD_BYTES)
        with self._lock:
            self.quarantined += 1
            self.reasons[reason.split(":")[0]] += 1
            self._row("messages", (index, rank, seq, nbytes, t_arrival, "quarantined", reason,
                                   self._epoch_of.pop(index, None)))
            save = (self.disk_error is None
                    and self.quarantine_saved < self.quarantine_max_files
                    and self.quarantine_saved_bytes + size <= self.quarantine_max_bytes)
            if save:
                self.quarantine_saved += 1
                self.quarantine_saved_bytes += size
            else:
                self.quarantine_not_saved += 1
        if not save:
            return
        head = b"" if payload is None else bytes(memoryview(payload).cast("B")[:QUARANTINE_HEAD_BYTES])
        meta = {
            "reason": reason, "nbytes": int(nbytes), "saved_bytes": len(head),
            "t_arrival": t_arrival, "rank": rank, "seq": seq,
        }
        files = (self.qdir / f"{index:06d}.bin", self.qdir / f"{index:06d}.json")
        try:
            files[0].write_bytes(head)
            files[1].write_text(json.dumps(meta) + "\n")
        except OSError as e:
            for f in files:
                with contextlib.suppress(OSError):
                    f.unlink(missing_ok=True)
            with self._lock:
                self.quarantine_saved -= 1
                self.quarantine_saved_bytes -= size
                self.quarantine_not_saved += 1
                self._disk_failed(f"quarantine/{files[0].name}: {e}")

    def _disk_failed(self, what: str) -> None:
        self.disk_errors += 1
        if self.disk_error is None:
            self.disk_error = what
            log.error("cannot write the run directory (%s): counting goes on, bulky files "
                      "stop; summary.json is still written", what)

    # -- per batch ---------------------------------------------------------------------
    def batch_done(self, host: BatchTimes, fin: Any, device: int = 0) -> None:
        """One processed batch: ``host`` its host-side times, ``fin`` the engine's Finished,
        ``device`` the inference device (actor) number that ran it.

        ``fin``'s times may be None for a stage the consumer does not have (a consumer
        without a GPU copy: no h2d/d2h): the cells stay empty, the stage is not counted,
        and the batch finishes at the end of its last recorded stage."""
        with self._lock:
            self.processed += 1
            self.batches += 1
            self.samples += int(fin.events)
            self.bytes += int(host.nbytes)
            self._row("messages", (host.index, host.rank, host.seq, host.nbytes, host.t_arrival,
                                   "processed", "", self._epoch_of.pop(host.index, None)))
            self._row("batches", (
                host.index, host.rank, host.seq, fin.events, host.nbytes, host.t_arrival,
                host.t_parse_start, host.t_parse_end, host.t_q1_put_start, host.t_q1_put_end,
                host.t_q1_get_start, host.t_q1_get_end, fin.buffer, fin.t_h2d_start, fin.t_h2d_end,
                fin.t_compute_start, fin.t_compute_end, fin.t_d2h_start, fin.t_d2h_end,
            ))
            for stream, a, b in zip(GPU_STREAMS, (fin.t_h2d_start, fin.t_compute_start,
                                                  fin.t_d2h_start),
                                    (fin.t_h2d_end, fin.t_compute_end, fin.t_d2h_end),
                                    strict=True):
                if a is not None and b is not None:
                    self._row("gpu", (stream, fin.buffer, host.index, a, b, device))
                    self._any_union.setdefault(device, LateUnion()).add(a, b)
            self._add_wait(host)
            if fin.t_compute_start is not None and fin.t_compute_end is not None:
                union = self._compute_union.get(device)
                if union is None:
                    union = self._compute_union[device] = UnionTracker()
                union.add(fin.t_compute_start, fin.t_compute_end)
                self._compute_sum += fin.t_compute_end - fin.t_compute_start
            done = _last_time(fin.t_d2h_end, fin.t_compute_end, fin.t_h2d_end,
                              host.t_q1_get_end, host.t_parse_end, host.t_arrival)
            if self.first_finish is None:
                self.first_finish = done
            self.last_finish = done if self.last_finish is None else max(self.last_finish, done)
            st = self._stage
            for key, a, b in (
                ("parse", host.t_parse_start, host.t_parse_end),
                ("q1_put", host.t_q1_put_start, host.t_q1_put_end),
                ("q1_wait", host.t_q1_put_end, host.t_q1_get_end),
                ("q1_get", host.t_q1_get_start, host.t_q1_get_end),
                ("h2d", fin.t_h2d_start, fin.t_h2d_end),
                ("compute", fin.t_compute_start, fin.t_compute_end),
                ("d2h", fin.t_d2h_start, fin.t_d2h_end),
                ("latency", host.t_arrival, done),
            ):
                if a is not None and b is not None:
                    st[key].append(b - a)

    def _add_wait(self, host: BatchTimes) -> None:
        """The loop's wait on an empty Q1 for this batch: from its get's start until
        the batch was put (or the get returned), from the first arrival on."""
        gs, ge = host.t_q1_get_start, host.t_q1_get_end
        if gs is None or ge is None:
            return
        self._gets += 1
        pe = host.t_q1_put_end
        end = ge if pe is None else min(pe, ge)
        start = gs if self.first_arrival is None else max(gs, self.first_arrival)
        if end > start:
            self._wait_union.add(start, end)

    # -- Q1 samples --------------------------------------------------------------------
    def q1_sample(self, t: float, depth: int, maxsize: int) -> None:
        with self._lock:
            self._row("q1", (t, depth, maxsize))
            q = self._q1
            q["samples"] += 1
            q["sum"] += depth / maxsize
            q["maxsize"] = maxsize
            if depth == 0:
                q["empty"] += 1
            if depth < STARVATION_UTILISATION * maxsize:
                q["under_30"] += 1
            if depth > Q1_HIGH_SHARE * maxsize:
                q["over_80"] += 1

    def _row(self, name: str, row: Iterable[Any]) -> None:
        if name in self._broken:
            return
        try:
            self._writers[name].writerow([_cell(v) for v in row])
            self._files[name].flush()
        except OSError as e:
            self._broken.add(name)
            self._disk_failed(f"{name}.csv: {e}")

    # -- the end -----------------------------------------------------------------------
    def gpu_busy_fraction(self) -> float | None:
        if self.first_arrival is None or self.last_finish is None:
            return None
        wall = self.last_finish - self.first_arrival
        if wall <= 0 or not self._compute_union:
            return None
        return statistics.fmean(u.value() for u in self._compute_union.values()) / wall

    def _active(self) -> float | None:
        if self.first_arrival is None or self.last_finish is None:
            return None
        wall = self.last_finish - self.first_arrival
        return wall if wall > 0 else None

    def busy(self) -> dict[str, float | None]:
        """The busy figures (simstream.records.contract.BUSY_FIGURES) so far."""
        wall = self._active()
        out: dict[str, float | None] = dict.fromkeys(BUSY_FIGURES)
        if wall is None:
            return out
        if self._gets:
            out["loop_busy"] = max(0.0, 1.0 - self._wait_union.value() / wall)
        if self._any_union:
            out["device_busy"] = statistics.fmean(
                u.value() for u in self._any_union.values()) / wall
        out["device_compute_busy"] = self.gpu_busy_fraction()
        return out

    def gpu_busy_by_device(self) -> dict[str, float] | None:
        """Each device's compute busy share of the run (first arrival to last finish)."""
        if self.first_arrival is None or self.last_finish is None:
            return None
        wall = self.last_finish - self.first_arrival
        if wall <= 0:
            return None
        return {str(d): u.value() / wall for d, u in sorted(self._compute_union.items())}

    def snapshot(self) -> dict[str, Any]:
        """Live figures for progress lines (cheap)."""
        with self._lock:
            q = self._q1
            return {
                "received": self.received, "processed": self.processed,
                "quarantined": self.quarantined, "batches": self.batches, "samples": self.samples,
                "bytes": self.bytes, "gpu_busy": self.gpu_busy_fraction(), **self.busy(),
                "device": self.device,
                "q1_mean": q["sum"] / q["samples"] if q["samples"] else None,
            }

    def close(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Write summary.json (``extra`` adds run facts: wall_s, device, mode, config, Q1
        counters...) and close the files. Returns the summary."""
        with self._lock:
            if self._closed:
                raise RuntimeError("records already closed")
            self._closed = True
            self._flush_sequences()
            for name, f in self._files.items():
                try:
                    f.close()
                except OSError as e:
                    self._disk_failed(f"{name}.csv: {e}")
                    with contextlib.suppress(OSError):
                        f.close()
            wall = float(extra.get("wall_s") or 0.0)
            active = (
                self.last_finish - self.first_arrival
                if self.last_finish is not None and self.first_arrival is not None else None
            )
            span = active if active and active > 0 else wall
            q = self._q1
            problems = self._accounting_problems()
            summary: dict[str, Any] = {
                "received": self.received,
                "processed": self.processed,
                "quarantined": self.quarantined,
                **self.ledger.counts(),
                "accounting_ok": not problems,
                "accounting_problems": problems,
                "seq_out_of_window": self.ledger.out_of_window,
                "messages_with_seq": self.ledger.with_seq,
                "messages_without_seq": self.ledger.without_seq,
                "quarantine_reasons": dict(self.reasons),
                "quarantine_saved": self.quarantine_saved,
                "quarantine_not_saved": self.quarantine_not_saved,
                "disk_error": self.disk_error,
                "disk_errors": self.disk_errors,
                "batches": self.batches,
                "samples": self.samples,
                "bytes": self.bytes,
                "first_arrival": self.first_arrival,
                "last_arrival": self.last_arrival,
                "last_finish": self.last_finish,
                "active_s": active,
                "throughput": {
                    "batches_per_s": self.batches / span if span else None,
                    "samples_per_s": self.samples / span if span else None,
                    "mb_per_s": self.bytes / 1e6 / span if span else None,
                },
                "gpu_busy_fraction": self.gpu_busy_fraction(),
                "gpu_busy_by_device": self.gpu_busy_by_device(),
                **self.busy(),
                "compute_s": self._compute_sum,
                "stage_median_ms": {k: _median_ms(v) for k, v in self._stage.items()},
                "q1": {
                    "samples": q["samples"],
                    "maxsize": q["maxsize"] or None,
                    "mean_occupancy": q["sum"] / q["samples"] if q["samples"] else None,
                    "share_empty": q["empty"] / q["samples"] if q["samples"] else None,
                    "share_under_30": q["under_30"] / q["samples"] if q["samples"] else None,
                    "share_over_80": q["over_80"] / q["samples"] if q["samples"] else None,
                },
                "per_rank": self.ledger.ranks(),
            }
            for k, v in extra.items():
                if k == "q1" and isinstance(v, Mapping):
                    summary["q1"].update(v)
                else:
                    summary[k] = v
            text = json.dumps(summary, indent=2, default=str)
            self._reserve.unlink(missing_ok=True)
            tmp = self.dir / (SUMMARY_JSON + ".tmp")
            try:
                tmp.write_text(text + "\n")
                tmp.replace(self.dir / SUMMARY_JSON)
            except OSError as e:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                raise RuntimeError(
                    f"cannot write {self.dir / SUMMARY_JSON}: {e}"
                    + (f" (first write error: {self.disk_error})" if self.disk_error else "")
                ) from None
            return summary

    def _accounting_problems(self) -> list[str]:
        """Why the figures do not add up (empty when they do)."""
        out = []
        if self.received != self.processed + self.quarantined:
            out.append(f"received {self.received} != processed {self.processed} + "
                       f"quarantined {self.quarantined}")
        seen = self.ledger.with_seq + self.ledger.without_seq
        if seen != self.received:
            out.append(f"{seen} messages reached the sequence accounting, {self.received} "
                       f"were received")
        if self.ledger.out_of_window:
            out.append(f"{self.ledger.out_of_window} sequence numbers more than "
                       f"{self.ledger.window} above their rank's highest (forged or corrupt)")
        return out
