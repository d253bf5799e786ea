"""What `simstream run`'s progress display costs.

1. The sampler alone: ``RunProgress.sample()`` on a run directory of N
   messages (the first sample reads the whole files, later ones only what was
   appended), median of the later samples.
2. With ``--consumer S``: a random-mode consumer (``simstream consume --mode
   random --duration S``) run alone and with a RunProgress sampling its run
   directory every 0.5 s (a terminal's refresh; plain lines are 10x rarer) in
   this process, alternated in ``--rounds`` rounds; its processed samples/s
   with progress as a ratio of without, per round, and how long the sampling
   itself took (the progress display's whole cost, in the runner's process).

    .venv/bin/python bench/bench_progress.py [--messages 200000] [--consumer 5 --rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from simstream.records.contract import MESSAGE_COLUMNS, Q1_COLUMNS
from simstream.runner.progress import LIVE_INTERVAL_S, RunProgress

ROW = "{i},0,{i},8409400,1796536317.7559936,processed,\n"


def sampler_cost(n: int, later: int = 200) -> tuple[float, float]:
    """(first sample s, median later sample s) on a run directory of ``n`` messages."""
    d = Path(tempfile.mkdtemp(prefix="bench-progress-"))
    try:
        (d / "messages.csv").write_text(",".join(MESSAGE_COLUMNS) + "\n"
                                        + "".join(ROW.format(i=i) for i in range(n)))
        (d / "q1.csv").write_text(",".join(Q1_COLUMNS) + "\n" + "1.0,3,16\n" * (n // 4))
        (d / "emit.jsonl").write_text('{"rank": 0, "seq": 1, "outcome": "delivered"}\n' * n)
        p = RunProgress(d, planned_s=30, tty=False, stream=io.StringIO())
        t = time.perf_counter()
        p.sample()
        first = time.perf_counter() - t
        times = []
        for k in range(later):
            with (d / "messages.csv").open("a") as f:
                f.write("".join(ROW.format(i=n + 10 * k + j) for j in range(10)))
            t = time.perf_counter()
            s = p.sample()
            times.append(time.perf_counter() - t)
        assert s.processed == n + 10 * later
        return first, statistics.median(times)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def consume(seconds: float, out: Path, watched: bool) -> tuple[float, float]:
    """A random-mode consumer's samples/s (summary.json), with or without a
    RunProgress sampling its run directory meanwhile; and the seconds the samples
    took in all."""
    argv = [sys.executable, "-m", "simstream", "consume", "--mode", "random", "--device", "cpu",
            "--duration", str(seconds), "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spent = 0.0
    try:
        if watched:
            p = RunProgress(out, planned_s=seconds, emitter=False, stream=io.StringIO(), tty=False)
            while proc.poll() is None:
                t = time.perf_counter()
                p.sample()
                spent += time.perf_counter() - t
                time.sleep(LIVE_INTERVAL_S)
        proc.wait(timeout=seconds + 300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    s = json.loads((out / "summary.json").read_text())
    return float(s["throughput"]["samples_per_s"]), spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--consumer", type=float, default=0.0, metavar="SECONDS",
                    help="also run the consumer A/B, each run this long (0: skip)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    first, later = sampler_cost(args.messages)
    print(f"sampler: first sample over {args.messages} messages {first * 1e3:.1f} ms; "
          f"a later sample (10 new rows) {later * 1e6:.0f} us median; at one sample per "
          f"{LIVE_INTERVAL_S:g} s that is {later / LIVE_INTERVAL_S:.4%} of one core")
    if args.consumer <= 0:
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-progress-consume-"))
    try:
        print("| round | alone samples/s | watched samples/s | watched / alone | sampling took |")
        print("| --- | --- | --- | --- | --- |")
        ratios = []
        for r in range(args.rounds):
            # alternate the order, so a machine that speeds up or slows down does not favour one
            order = (False, True) if r % 2 == 0 else (True, False)
            got = {w: consume(args.consumer, tmp / f"r{r}-{int(w)}", w) for w in order}
            ratios.append(got[True][0] / got[False][0])
            print(f"| {r + 1} | {got[False][0]:.1f} | {got[True][0]:.1f} | {ratios[-1]:.3f} | "
                  f"{got[True][1] * 1e3:.1f} ms of the {args.consumer:g} s run |")
        print(f"median watched / alone: {statistics.median(ratios):.3f} over {args.rounds} rounds "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
