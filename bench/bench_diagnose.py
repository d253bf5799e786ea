"""How long `simstream diagnose` takes on a 10-minute run's records.

Simulates a 10-minute run at about 100 batches/s (bursty producer: 2 s at
120 Hz, 0.4 s stalls; 6 ms compute, 2 buffers, parse in 2 receiver threads),
writes it as a run directory (emit log included), then times diagnose_run with
and without plots, best of N. Prints one table row per variant and the
machine.

    .venv/bin/python bench/bench_diagnose.py [--repeat 3] [--minutes 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from simstream.diagnose.report import diagnose_run
from simstream.diagnose.simulate import Scenario, simulate, write_run_dir


def machine() -> str:
    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--keep", type=Path, default=None, help="write the run directory here and keep it")
    args = ap.parse_args()

    sc = Scenario(name="bench-10min", duration_s=60.0 * args.minutes,
                  phases=[("burst", 2.0, 120.0), ("stall", 0.4, 0.0)], compute_ms=6.0, h2d_ms=2.0,
                  d2h_ms=0.5, parse_ms=6.0, parser_threads=2, nbytes=1 << 20, q1_maxsize=16,
                  sample_interval_ms=100.0)
    tmp = None
    if args.keep:
        d = args.keep
    else:
        tmp = tempfile.mkdtemp(prefix="bench-diagnose-")
        d = Path(tmp) / "run"
    try:
        t = time.perf_counter()
        res = simulate(sc)
        t_sim = time.perf_counter() - t
        t = time.perf_counter()
        write_run_dir(res, d)
        t_write = time.perf_counter() - t
        n = res.cols["t_arrival"].size
        size_mb = sum(p.stat().st_size for p in d.iterdir() if p.is_file()) / 1e6
        print(f"machine: {machine()}")
        print(f"run: {args.minutes:g} min simulated, {n} batches ({n / sc.duration_s:.0f}/s), "
              f"{size_mb:.0f} MB of records (simulate {t_sim:.2f} s, write {t_write:.2f} s)")
        print("| variant | best s | all s | verdict |")
        print("| --- | --- | --- | --- |")
        for plots in (False, True):
            times = []
            verdict = ""
            for _ in range(max(1, args.repeat)):
                t = time.perf_counter()
                rep = diagnose_run(d, plots=plots)
                times.append(time.perf_counter() - t)
                verdict = f"{rep['verdict']} ({rep['confidence']:.2f})"
            label = "with plots" if plots else "without plots (report + trace)"
            print(f"| {label} | {min(times):.2f} | {' '.join(f'{x:.2f}' for x in times)} | {verdict} |")
        # where the time goes: the pieces diagnose_run calls, timed within one pass each,
        # best pass of --repeat (the pieces of one pass add up to at most its total;
        # a piece is never set against another pass's total)
        from simstream.diagnose.evidence import compute_evidence
        from simstream.diagnose.load import load_run
        from simstream.diagnose.plots import write_plots
        from simstream.diagnose.report import build_report
        from simstream.diagnose.trace import write_trace

        passes = []
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            run = load_run(d)
            t1 = time.perf_counter()
            ev = compute_evidence(run)
            build_report(run, ev)
            t2 = time.perf_counter()
            write_trace(ev, d / "trace.json")
            t3 = time.perf_counter()
            write_plots(ev, d / "plots")
            t4 = time.perf_counter()
            passes.append((t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3))
        total, t_load, t_ev, t_trace, t_plots = min(passes)
        print(f"pieces (best of {len(passes)} passes, {total:.2f} s; each piece's share of that "
              f"pass): load {t_load:.2f} s ({t_load / total:.0%}), evidence+verdict {t_ev:.2f} s "
              f"({t_ev / total:.0%}), trace {t_trace:.2f} s ({t_trace / total:.0%}; "
              f"{(d / 'trace.json').stat().st_size / 1e6:.0f} MB), plots {t_plots:.2f} s "
              f"({t_plots / total:.0%}); every pass: "
              + ", ".join(f"{p[0]:.2f} (load {p[1]:.2f})" for p in passes))
        print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
