"""The run's progress display: figures read from a run directory's files as the
consumer and the emitter append to them, on a fake clock; plain lines where the
stream is not a terminal, a line refreshed in place where it is."""

from __future__ import annotations

import io
import time
from pathlib import Path

from simstream.records.contract import MESSAGE_COLUMNS, Q1_COLUMNS
from simstream.runner.progress import FileTail, ProgressSample, RunProgress, progress_line


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def _messages(out: Path, start: int, n: int, status: str = "processed") -> None:
    reason = "codec: bad" if status == "quarantined" else ""
    _append(out / "messages.csv", "".join(
        f"{i},0,{i},100,1.0,{status},{reason}\n" for i in range(start, start + n)))


def _run_dir(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    (out / "messages.csv").write_text(",".join(MESSAGE_COLUMNS) + "\n")
    (out / "q1.csv").write_text(",".join(Q1_COLUMNS) + "\n")
    return out


def test_file_tail_counts_only_complete_lines(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    tail = FileTail(f)
    assert tail.read() == b"" and tail.lines == 0  # no file yet
    f.write_text("a\nb\npart")
    assert tail.read() == b"a\nb\n" and tail.lines == 2 and tail.last == b"b"
    _append(f, "ial\n")
    assert tail.read() == b"partial\n" and tail.lines == 3 and tail.last == b"partial"
    assert tail.read() == b"" and tail.lines == 3


def test_sample_reads_sent_processed_quarantined_q1_and_rate(tmp_path: Path) -> None:
    out = _run_dir(tmp_path)
    clock = Clock()
    p = RunProgress(out, planned_s=30, stream=io.StringIO(), tty=False, now=clock)
    s = p.sample()
    assert (s.sent, s.emitter_s, s.processed, s.quarantined, s.q1_depth) == (None, None, 0, 0, None)
    assert "run 0 s, emitter not started" in p.line(s) and "Q1 -" in p.line(s)

    (out / "emit.jsonl").write_text('{"seq": 0}\n' * 12)
    _messages(out, 0, 8)
    _messages(out, 8, 2, "quarantined")
    _append(out / "q1.csv", "1.0,2,16\n1.1,4,16\n")
    clock.t += 2.0
    s = p.sample()
    assert (s.sent, s.processed, s.quarantined, s.q1_depth, s.q1_maxsize) == (12, 8, 2, 4, 16)
    assert s.emitter_s == 0.0 and s.rate_per_s == 5.0  # 10 messages in 2 s
    clock.t += 3.0
    _messages(out, 10, 30)
    s = p.sample()
    assert s.emitter_s == 3.0 and s.processed == 38 and s.rate_per_s == 8.0  # 40 in 5 s
    line = p.line(s)
    assert line.startswith("run 5 s, emitter 3 s of 30 s planned")
    assert "sent 12  processed 38  quarantined 2  Q1 4/16 (25%)  8.0 msg/s" in line
    # the rate is taken over the last few seconds, not the whole run
    p.emitter_done()  # the runner saw the emitter exit 3 s after its log appeared
    assert p.line().startswith("run 5 s, emitter done after 3 s of 30 s planned, draining  sent 12")
    for _ in range(20):  # nothing for 20 s
        clock.t += 1.0
        assert p.sample().processed == 38
    assert p.sample().rate_per_s == 0.0
    clock.t += 1.0
    _messages(out, 40, 10)
    assert p.sample().rate_per_s == 2.0  # 10 in the last 5 s


def test_lines_for_random_mode_and_a_message_bounded_run() -> None:
    s = ProgressSample(elapsed_s=7.4, emitter_s=None, emitter_done_s=None, sent=None, processed=70, quarantined=0,
                       q1_depth=16, q1_maxsize=16, rate_per_s=None)
    line = progress_line(s, planned_s=10, label="random mode", emitter=False)
    assert line == "random mode: run 7 s of 10 s planned  processed 70  quarantined 0  " \
                   "Q1 16/16 (100%)  - msg/s"
    s2 = ProgressSample(elapsed_s=3, emitter_s=1, emitter_done_s=None, sent=5, processed=4, quarantined=0,
                        q1_depth=None, q1_maxsize=None, rate_per_s=2.0)
    assert progress_line(s2, planned_text="until 500 messages per rank").startswith(
        "run 3 s, emitter 1 s (until 500 messages per rank)  sent 5")


def _wait(cond: object, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_plain_lines_periodically_then_a_last_one(tmp_path: Path) -> None:
    out = _run_dir(tmp_path)
    stream = io.StringIO()
    with RunProgress(out, planned_s=1, stream=stream, tty=False, interval_s=0.02) as p:
        assert _wait(lambda: p.lines_written >= 2)
        _messages(out, 0, 3)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and all(ln.startswith("run ") for ln in lines)
    assert lines[-1].endswith("(done)") and "processed 3" in lines[-1]
    assert "\r" not in stream.getvalue()
    n = p.lines_written
    p.stop()  # a second stop writes nothing
    assert p.lines_written == n


def test_live_line_is_refreshed_and_cleared_on_a_terminal(tmp_path: Path) -> None:
    out = _run_dir(tmp_path)
    _messages(out, 0, 5)

    class Term(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Term()
    t0 = time.monotonic()
    with RunProgress(out, planned_s=1, stream=stream) as p:
        assert p.tty
        assert _wait(lambda: "processed 5" in stream.getvalue())
    assert time.monotonic() - t0 < 10  # the live display stops promptly
    text = stream.getvalue()
    assert "\r" in text or "\x1b[" in text  # redrawn in place, not appended
    assert text.rstrip("\n").splitlines()[-1].endswith("(done)")
