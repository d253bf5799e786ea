"""What ``simstream run`` and ``investigate`` show while a run is under way.

The figures come from the run directory's files, which the consumer and the
emitter append to as they go (each row is flushed when written): the emit log
(messages sent), messages.csv (each received message once its fate is known:
processed or quarantined) and q1.csv (Q1 depth samples). Reading them costs
the consumer nothing: no counter it keeps is shared, no lock is taken.

On a terminal: one line, refreshed in place (rich). Elsewhere (a file, a pipe,
a test): a plain line every ``interval_s`` seconds and one when the run's
programs are done. Progress goes to stderr; stdout keeps the results.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from simstream.records.contract import EMIT_LOG, MESSAGES_CSV, Q1_CSV
from simstream.runner.procs import FileTail

__all__ = ["FileTail", "ProgressSample", "RunProgress", "progress_line"]

#: plain lines (not a terminal): one every this many seconds
PLAIN_INTERVAL_S = 5.0
#: a terminal's line: read the files this often
LIVE_INTERVAL_S = 0.5
#: the rate is taken over about this long
RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class ProgressSample:
    elapsed_s: float  # since the run directory was made
    # since the emitter started (its log appeared); None before that, or without one
    emitter_s: float | None
    # how long the emitter ran, once it has exited (the run then drains); else None
    emitter_done_s: float | None
    sent: int | None  # emit log lines; None without an emitter (random mode)
    processed: int
    quarantined: int
    q1_depth: int | None
    q1_maxsize: int | None
    rate_per_s: float | None  # processed + quarantined per second, lately


class RunProgress:
    """Reads a run directory's progress (``sample``) and shows it until the
    ``with`` block ends.

    ``planned_s``: the planned duration of the emitter's sending, or with
    ``emitter=False`` (random mode) of the consumer's run (None when it ends on a
    message count, ``planned_text`` then says what it is). ``label``: put before each
    line (investigate's "random mode"). ``tty``: a live line (default: whether
    ``stream`` is a terminal). ``now``: the clock (tests pass a fake one).
    """

    def __init__(self, out: Path, *, planned_s: float | None = None, planned_text: str = "",
                 emitter: bool = True, label: str = "", stream: IO[str] | None = None, tty: bool | None = None,
                 interval_s: float = PLAIN_INTERVAL_S,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.out = Path(out)
        self.planned_s = planned_s
        self.planned_text = planned_text
        self.label = label
        self.emitter = emitter
        self._t_emit: float | None = None
        self._emit_s: float | None = None  # how long the emitter ran, once it is done
        self.stream = stream or sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.interval_s = interval_s
        self.now = now
        self.t0 = now()
        self._emit = FileTail(self.out / EMIT_LOG)
        self._messages = FileTail(self.out / MESSAGES_CSV)
        self._q1 = FileTail(self.out / Q1_CSV)
        self._quarantined = 0
        self._recent: deque[tuple[float, int]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: object | None = None
        self.lines_written = 0

    # -- reading -----------------------------------------------------------------------
    def sample(self) -> ProgressSample:
        t = self.now()
        self._emit.read()
        self._quarantined += self._messages.read().count(b",quarantined,")
        self._q1.read()
        done = max(0, self._messages.lines - 1)  # the header
        depth = maxsize = None
        parts = self._q1.last.split(b",")
        if self._q1.lines > 1 and len(parts) == 3:
            with contextlib.suppress(ValueError):  # a torn row: the next sample has it
                depth, maxsize = int(float(parts[1])), int(float(parts[2]))
        rec = self._recent
        rec.append((t, done))
        while len(rec) > 2 and t - rec[1][0] >= RATE_WINDOW_S:
            rec.popleft()
        rate = (done - rec[0][1]) / (t - rec[0][0]) if t > rec[0][0] else None
        sent = None
        if self.emitter and (self._t_emit is not None or self._emit.path.exists()):
            sent = self._emit.lines
            if self._t_emit is None:
                self._t_emit = t
        return ProgressSample(elapsed_s=t - self.t0, sent=sent,
                              emitter_s=None if self._t_emit is None else t - self._t_emit,
                              emitter_done_s=self._emit_s,
                              processed=done - self._quarantined, quarantined=self._quarantined,
                              q1_depth=depth, q1_maxsize=maxsize, rate_per_s=rate)

    def line(self, s: ProgressSample | None = None) -> str:
        return progress_line(s or self.sample(), planned_s=self.planned_s,
                             planned_text=self.planned_text, label=self.label,
                             emitter=self.emitter)

    def emitter_done(self) -> None:
        """The emitter has exited: from now on the run drains what is in flight."""
        if self._t_emit is not None and self._emit_s is None:
            self._emit_s = self.now() - self._t_emit

    # -- showing -----------------------------------------------------------------------
    def __enter__(self) -> RunProgress:
        self.t0 = self.now()
        if self.tty:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            con = Console(file=self.stream)
            live = Live(Text(""), console=con, transient=True, auto_refresh=False,
                        redirect_stdout=_isatty(sys.stdout), redirect_stderr=False)
            live.start()
            self._live = live
            self._thread = threading.Thread(target=self._show_live, args=(live, Text),
                                            name="run-progress", daemon=True)
        else:
            self._thread = threading.Thread(target=self._show_plain, name="run-progress",
                                            daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """End the display (idempotent); a last plain line says where the run stood."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        if self._live is not None:
            self._live.stop()  # type: ignore[attr-defined]
            self._live = None
        self._write(self.line() + " (done)")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.lines_written += 1
        except (OSError, ValueError):
            pass  # a closed or broken stream: progress is not worth failing a run for

    def _show_plain(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write(self.line())

    def _show_live(self, live: object, text: Callable[[str], object]) -> None:
        while True:
            live.update(text(self.line()), refresh=True)  # type: ignore[attr-defined]
            if self._stop.wait(LIVE_INTERVAL_S):
                return


def progress_line(s: ProgressSample, *, planned_s: float | None = None,
                  planned_text: str = "", label: str = "", emitter: bool = True) -> str:
    """One progress line, e.g. ``run 14 s, emitter 12 s of 30 s planned  sent 1000
    processed 990  quarantined 0  Q1 3/16 (19%)  83.1 msg/s``."""
    plan = (f" of {planned_s:g} s planned" if planned_s
            else f" ({planned_text})" if planned_text else "")
    if not emitter:
        when = f"run {s.elapsed_s:.0f} s{plan}"
    elif s.emitter_s is None:
        when = f"run {s.elapsed_s:.0f} s, emitter not started"
    elif s.emitter_done_s is not None:
        when = f"run {s.elapsed_s:.0f} s, emitter done after {s.emitter_done_s:.0f} s{plan}, draining"
    else:
        when = f"run {s.elapsed_s:.0f} s, emitter {s.emitter_s:.0f} s{plan}"
    parts = [f"{label}: {when}" if label else when]
    if s.sent is not None:
        parts.append(f"sent {s.sent}")
    parts.append(f"processed {s.processed}")
    parts.append(f"quarantined {s.quarantined}")
    if s.q1_depth is not None and s.q1_maxsize:
        parts.append(f"Q1 {s.q1_depth}/{s.q1_maxsize} ({s.q1_depth / s.q1_maxsize:.0%})")
    else:
        parts.append("Q1 -")
    parts.append("- msg/s" if s.rate_per_s is None else f"{s.rate_per_s:.1f} msg/s")
    return "  ".join(parts)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
