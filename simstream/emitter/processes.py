"""``simstream emit`` with ``transport.processes`` > 1: one emitter process per share of ranks.

One Python process cannot keep many fast ranks fed (one event loop, one GIL
for encoding and sending). Here the parent starts ``processes`` child
emitters (``python -m simstream emit``, fresh interpreters: no fork of a
process with threads), each with its share of the rank ids
(:func:`simstream.emitter.split.split_ranks`) and its own part log, and:

- relays their output, each line prefixed with the child's ranks;
- forwards SIGINT/SIGTERM to them (they run in their own process group, so a
  terminal's Ctrl-C reaches them once, through the parent);
- stops the others (SIGINT: a clean stop, every attempt recorded) when one
  fails, and then fails itself with that child's status;
- merges the part logs into the one ``--log`` file while they run
  (:class:`simstream.emitter.merge.LogMerger`), counting every line.

Exit status as for one process: 0 done, 130 / 143 interrupted (SIGINT / SIGTERM), else the status of
the first child that failed (1: peer unreachable, 2: bad input), or 1 when
the merged log is missing lines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from simstream.emitter.merge import LogMerger, MergeReport
from simstream.emitter.split import Share, process_profile, split_cap, split_ranks
from simstream.profile import Profile, dump_profile

__all__ = ["PARENT_ENV", "Totals", "part_paths", "run_processes"]

#: set in every child: the parent's pid, which the child watches (it ends when the
#: parent is gone)
PARENT_ENV = "SIMSTREAM_EMIT_PARENT"

#: how often the parent merges the part logs and checks on its children (seconds)
POLL_S = 0.1

#: statuses of a child stopped by a forwarded signal (not a failure)
INTERRUPTED = (128 + signal.SIGINT, -signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM)


def part_paths(log_path: str | Path, processes: int) -> list[Path]:
    """Where process i writes its part of ``log_path``: ``LOG.part{i}`` beside it."""
    return [Path(f"{log_path}.part{i}") for i in range(processes)]


@dataclass
class Totals:
    """Running totals over the merged records (the parent's summary)."""

    ranks: set[int] = field(default_factory=set)
    outcomes: dict[str, int] = field(default_factory=lambda: {"delivered": 0, "cut": 0,
                                                               "lost": 0})
    nbytes: int = 0
    blocked_s: float = 0.0
    t_first: float | None = None
    t_last: float | None = None

    def add(self, rec: dict[str, Any]) -> None:
        self.ranks.add(int(rec["rank"]))
        out = str(rec["outcome"])
        self.outcomes[out] = self.outcomes.get(out, 0) + 1
        self.blocked_s += float(rec.get("blocked_s") or 0.0)
        if out == "delivered":
            self.nbytes += int(rec["nbytes"])
        t0, t1 = rec.get("t_first_byte"), rec.get("t_last_byte")
        if isinstance(t0, (int, float)):
            self.t_first = t0 if self.t_first is None else min(self.t_first, t0)
        if isinstance(t1, (int, float)):
            self.t_last = t1 if self.t_last is None else max(self.t_last, t1)

    def line(self, processes: int) -> str:
        span = (self.t_last - self.t_first) if self.t_first and self.t_last else 0.0
        rate = f" = {self.nbytes / span / 1e6:.1f} MB/s" if span > 0 else ""
        o = self.outcomes
        return (f"total: {len(self.ranks)} rank(s) in {processes} processes, delivered "
                f"{o['delivered']}, cut {o['cut']}, lost {o['lost']}; "
                f"{self.nbytes / 1e6:.1f} MB in {span:.2f} s (first to last byte){rate}; "
                f"blocked {self.blocked_s:.2f} s")


@dataclass
class _Child:
    share: Share
    proc: subprocess.Popen[bytes]
    relays: list[threading.Thread]
    returncode: int | None = None


def _relay(stream: IO[bytes], prefix: str, echo: Callable[[str, bool], None],
           err: bool) -> None:
    for raw in iter(stream.readline, b""):
        echo(prefix + raw.decode("utf-8", "replace").rstrip("\n"), err)
    stream.close()


def run_processes(p: Profile, log_path: str | None, *,
                  echo: Callable[[str, bool], None],
                  argv0: list[str] | None = None, epoch: int | None = None) -> int:
    """Run ``p`` as ``p.transport.processes`` emitter processes; the exit status.

    ``echo(line, err)`` prints a line (to stderr when ``err``). ``argv0``: how
    to start the CLI (default ``python -m simstream``). ``epoch``: the run's start
    id, given to every process so all ranks of one run share it (default: a new
    one). Raises OSError if the log or a part cannot be written.
    """
    from simstream.emitter.engine import new_epoch

    epoch = new_epoch() if epoch is None else epoch
    tp = p.transport
    n = tp.processes
    shares = split_ranks(tp.ranks, n, tp.rank_offset)
    argv0 = argv0 or [sys.executable, "-m", "simstream"]
    if p.network.bandwidth_scope == "aggregate":
        caps = [p.network.bandwidth_mbps] + [
            ph.network.bandwidth_mbps for ph in p.timeline.phases if ph.network is not None]
        if any(c is not None for c in caps):
            shown = ", ".join(f"{c:g} -> {split_cap(c, n):g}" for c in caps if c is not None)
            echo(f"emit: aggregate bandwidth cap split evenly over {n} processes (Mbit/s: "
                 f"{shown}); processes cannot share one token bucket", True)
    totals = Totals()
    with tempfile.TemporaryDirectory(prefix="simstream-emit-") as tmp:
        parts = part_paths(log_path, n) if log_path else [
            Path(tmp) / f"part{i}.jsonl" for i in range(n)]
        # without --log the parts are still merged: the totals are counted from them
        merger = LogMerger(parts, log_path or os.devnull, on_line=totals.add)
        children: list[_Child] = []
        state = {"signal": 0, "stopping": False}

        def forward(sig: int) -> None:
            for c in children:
                if c.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        c.proc.send_signal(sig)

        def on_signal(sig: int, frame: FrameType | None) -> None:
            state["signal"] = state["signal"] or sig
            forward(sig)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for share, part in zip(shares, parts, strict=True):
                prof = Path(tmp) / f"process{share.index}.yaml"
                prof.write_text(dump_profile(process_profile(p, share, n)), encoding="utf-8")
                argv = [*argv0, "emit", "--profile", str(prof), "--log", str(part),
                        "--no-progress", "--epoch", str(epoch)]
                proc = subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    env=dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_ENV: str(os.getpid())}),
                    process_group=0)  # a terminal's Ctrl-C reaches it through us, once
                prefix = f"[{share.label}] "
                relays = [threading.Thread(target=_relay, args=(s, prefix, echo, e),
                                           daemon=True)
                          for s, e in ((proc.stdout, False), (proc.stderr, True))]
                for t in relays:
                    t.start()
                children.append(_Child(share, proc, relays))
                if state["signal"]:
                    forward(state["signal"])
            failed = _wait(children, merger, state, forward)
        finally:
            # never leave a child behind, whatever went wrong here
            for c in children:
                if c.proc.poll() is None:
                    c.proc.kill()
                    c.proc.wait()
            for s, h in old.items():
                signal.signal(s, h)
        report = merger.finish()
        for c in children:
            for t in c.relays:
                t.join(timeout=5.0)
        code = _verdict(children, failed, report, state["signal"], echo)
        if log_path:
            if report.complete:
                for part in parts:
                    part.unlink(missing_ok=True)
            echo(f"emit log: {log_path} ({report.lines} lines merged from {n} processes"
                 + ("" if report.complete else f"; part logs kept: {parts[0]}...") + ")",
                 False)
    echo(totals.line(n), False)
    return code


def _wait(children: list[_Child], merger: LogMerger, state: dict[str, Any],
          forward: Callable[[int], None]) -> _Child | None:
    """Merge while the children run; stop the rest when one fails. The first to fail."""
    failed: _Child | None = None
    while True:
        for i, c in enumerate(children):
            if c.returncode is None:
                rc = c.proc.poll()
                if rc is not None:
                    c.returncode = rc
                    merger.mark_complete(i)
                    if rc != 0 and rc not in INTERRUPTED and failed is None:
                        failed = c
                        if not state["stopping"]:
                            state["stopping"] = True
                            forward(signal.SIGINT)
        merger.poll()
        if all(c.returncode is not None for c in children):
            return failed
        time.sleep(POLL_S)


def _verdict(children: list[_Child], failed: _Child | None, report: MergeReport,
             sig: int, echo: Callable[[str, bool], None]) -> int:
    for problem in report.problems():
        echo(f"emit: {problem}", True)
    if failed is not None:
        echo(f"error: emitter process {failed.share.index} ({failed.share.label}) exited with "
             f"status {failed.returncode}; the other processes were stopped", True)
        rc = failed.returncode or 1
        return rc if rc > 0 else 1
    if not report.complete:
        echo("error: the merged emit log is missing lines of the part logs", True)
        return 1
    if sig or any(c.returncode in INTERRUPTED and c.returncode != 0 for c in children):
        echo("emit: interrupted", True)
        return 128 + (sig or signal.SIGINT)
    return 0
