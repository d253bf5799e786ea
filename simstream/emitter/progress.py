"""What the emitter shows while it runs, and the summary when it ends.

On a terminal: a live rich table (messages, MB/s, phase, queue and blocked
time per rank). Elsewhere (a log file, the runner): one summary line every
``interval_s`` seconds. Either way a final summary: delivered/cut/lost per
rank, bytes, MB/s and total blocked time.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import IO, Any

import trio

from simstream import clock
from simstream.emitter.engine import EmitResult, RankStats

__all__ = ["Progress", "summary_lines"]


class Progress:
    """Feed it every record (``on_record``) and run ``await progress.run()`` beside the engine.

    ``stats``: the engine's live per-rank totals. ``tty``: force the live table on or
    off (default: whether ``stream`` is a terminal). ``now``: the clock for rates.
    """

    def __init__(self, stats: list[RankStats], *, sndhwm: int, stream: IO[str] | None = None,
                 tty: bool | None = None, interval_s: float = 5.0,
                 now: Callable[[], float] = clock.now) -> None:
        self.stats = stats
        self.sndhwm = sndhwm
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.now = now
        self.t_start = now()
        # (time, cumulative payload bytes) over the last few seconds, for a current MB/s
        self._window: deque[tuple[float, int]] = deque(maxlen=64)
        self._bytes = 0

    def on_record(self, record: dict[str, Any]) -> None:
        if record["outcome"] == "delivered":
            self._bytes += int(record["nbytes"])
        self._window.append((self.now(), self._bytes))

    def rate_mb_s(self, horizon_s: float = 2.0) -> float:
        """Payload MB/s (10^6 bytes) over the last ``horizon_s`` seconds."""
        t = self.now()
        old = [(ti, b) for ti, b in self._window if t - ti <= horizon_s]
        if len(old) < 2:
            return 0.0
        (t0, b0), (t1, b1) = old[0], old[-1]
        return (b1 - b0) / max(t1 - t0, 1e-9) / 1e6

    def line(self) -> str:
        """One summary line (the non-terminal display)."""
        el = self.now() - self.t_start
        tot = _totals(self.stats)
        phases = ",".join(sorted({s.phase for s in self.stats if s.phase})) or "-"
        queued = sum(s.queued for s in self.stats)
        cap = self.sndhwm * len(self.stats)
        return (f"emit {el:7.1f}s  msgs {tot['delivered']} (cut {tot['cut']}, lost "
                f"{tot['lost']})  {self.rate_mb_s():8.1f} MB/s  phase {phases}  "
                f"queued {queued}/{cap}  blocked {tot['blocked_s']:.2f}s")

    def table(self) -> Any:
        from rich.table import Table

        t = Table(title=f"simstream emit  {self.now() - self.t_start:6.1f} s  "
                        f"{self.rate_mb_s():8.1f} MB/s", expand=False)
        for col in ("rank", "phase", "delivered", "cut", "lost", "MB", "queued", "blocked s"):
            t.add_column(col, justify="right")
        for s in self.stats[:32]:  # a screenful; totals below cover the rest
            t.add_row(str(s.rank), s.phase or "-", str(s.delivered), str(s.cut), str(s.lost),
                      f"{s.nbytes / 1e6:.1f}", f"{s.queued}/{self.sndhwm}", f"{s.blocked_s:.2f}")
        if len(self.stats) > 32:
            tot = _totals(self.stats)
            t.add_row("all", "", str(tot["delivered"]), str(tot["cut"]), str(tot["lost"]),
                      f"{tot['nbytes'] / 1e6:.1f}", "", f"{tot['blocked_s']:.2f}")
        return t

    async def run(self) -> None:
        """Refresh until cancelled (4 Hz on a terminal, every interval_s otherwise)."""
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream)
            with Live(self.table(), console=console, refresh_per_second=4,
                      transient=True) as live:
                while True:
                    await trio.sleep(0.25)
                    live.update(self.table())
        else:
            while True:
                await trio.sleep(self.interval_s)
                print(self.line(), file=self.stream, flush=True)


def _totals(stats: list[RankStats]) -> dict[str, float]:
    return {
        "delivered": sum(s.delivered for s in stats),
        "cut": sum(s.cut for s in stats),
        "lost": sum(s.lost for s in stats),
        "nbytes": sum(s.nbytes for s in stats),
        "wire_bytes": sum(s.wire_bytes for s in stats),
        "blocked_s": sum(s.blocked_s for s in stats),
    }


def summary_lines(result: EmitResult) -> list[str]:
    """The final summary: one line per rank (at most 16, then totals) and a total line."""
    el = max(result.elapsed_s, 1e-9)
    out = []
    for s in result.ranks[:16]:
        out.append(f"rank {s.rank} {s.url}: delivered {s.delivered}, cut {s.cut}, lost {s.lost}; "
                   f"{s.nbytes / 1e6:.1f} MB, {s.nbytes / el / 1e6:.1f} MB/s; "
                   f"blocked {s.blocked_s:.2f} s")
    if len(result.ranks) > 16:
        out.append(f"... {len(result.ranks) - 16} more ranks")
    tot = _totals(result.ranks)
    out.append(f"total: {len(result.ranks)} rank(s), delivered {tot['delivered']}, cut "
               f"{tot['cut']}, lost {tot['lost']}; {tot['nbytes'] / 1e6:.1f} MB in {el:.2f} s = "
               f"{tot['nbytes'] / el / 1e6:.1f} MB/s; blocked {tot['blocked_s']:.2f} s"
               + ("; interrupted" if result.interrupted else ""))
    tail = [(s.rank, seq, where) for s in result.ranks for seq, where in s.tail]
    if tail:
        shown = ", ".join(f"rank {r} seq {q} ({w})" for r, q, w in tail[:16])
        more = f", ... {len(tail) - 16} more" if len(tail) > 16 else ""
        out.append(f"lost_at_tail {len(tail)}: still queued or being written when the "
                   f"stream closed (transport.close abrupt): {shown}{more}")
    return out
