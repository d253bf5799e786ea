"""How stable each hypothesis profile's verdict is, quiet and under CPU load.

    python bench/bench_verdicts.py --runs 20 --load 2
    python bench/bench_verdicts.py --runs 3 --load 0 --profile hypotheses/queue-bound

Runs every bundled hypothesis profile (or the ones named) ``--runs`` times end
to end on loopback (``simstream run``), once with no extra load and, with
``--load N``, once more with N unrelated CPU-bound processes spinning for the
whole series. Prints one line per profile and load: the verdict it should get,
how many runs got it, every verdict seen, the confidence range, and the
deciding busy shares (inference loop, parser threads) with their range, so a
profile that sits near a cut-off shows it, the saturated loop's deciding
ratio (Q1 get overhead / the inference stage's share of the loop, > 1 means
``queue``) and the median wall time of a run, then every run's verdict and
confidence in run order. ``--queue-backend ray`` runs the consumer's queue (and,
as the profile says, its actors) on a local Ray, as ``simstream run
--queue-backend`` does. ``--json`` writes the same table.

"Quiet" means no load of ours: on a shared machine other work still runs;
the load average at the start and end of each series is printed with it.
Every run is bounded (``--minutes`` for the whole bench); the load processes
are ended by id when their series ends.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

EXPECTED = {
    "hypotheses/network-bound": "network",
    "hypotheses/bursty-network": "network",
    "hypotheses/parse-bound": "parse",
    "hypotheses/queue-bound": "queue",
    "hypotheses/queue-bound-ray": "queue",
    "hypotheses/consumer-bound": "consumer",
}


def _spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def _one_run(profile: Path, out: Path, backend: str | None = None) -> dict[str, Any]:
    from simstream.runner.core import run_profile

    t = time.perf_counter()
    try:
        result = run_profile(profile, out,
                             consumer_args=["--queue-backend", backend] if backend else None)
    except Exception as e:  # a run that fails is counted as such, not hidden
        return {"verdict": f"error: {type(e).__name__}", "error": str(e)[:300], "confidence": None,
                "wall_s": round(time.perf_counter() - t, 1)}
    ev = result.report.get("evidence") or {}
    lt = ev.get("loop_time_s") or {}
    # the saturated loop's deciding margin: Q1 get overhead over the inference stage's share
    q_vs_inf = (round(lt["q1_get_overhead"] / lt["inference"], 2)
                if lt.get("q1_get_overhead") is not None and lt.get("inference") else None)
    return {"verdict": result.report["verdict"], "cause": result.report.get("cause"),
            "confidence": result.report["confidence"], "loop_busy": ev.get("loop_busy_share"),
            "upstream_busy": ev.get("upstream_busy_share"), "q1_get_vs_inference": q_vs_inf,
            "wall_s": round(time.perf_counter() - t, 1)}


def _series(name: str, profile: Path, runs: int, load: int, deadline: float,
            backend: str | None = None) -> dict[str, Any]:
    procs = [mp.Process(target=_spin, args=(deadline,), daemon=True) for _ in range(load)]
    for p in procs:
        p.start()
    load_before = os.getloadavg()[0]
    got: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-verdicts-") as tmp:
            for i in range(runs):
                if time.time() > deadline:
                    break
                got.append(_one_run(profile, Path(tmp) / f"run{i}", backend))
    finally:
        for p in procs:
            p.terminate()
            p.join(5)
    want = EXPECTED.get(name)
    conf = [g["confidence"] for g in got if g.get("confidence") is not None]
    loops = [g["loop_busy"] for g in got if g.get("loop_busy") is not None]
    ups = [g["upstream_busy"] for g in got if g.get("upstream_busy") is not None]
    qvi = [g["q1_get_vs_inference"] for g in got if g.get("q1_get_vs_inference") is not None]
    walls = [g["wall_s"] for g in got]
    return {
        "profile": name, "load_processes": load, "expected": want, "runs": len(got),
        "correct": sum(g["verdict"] == want for g in got),
        "verdicts": {v: sum(g["verdict"] == v for g in got) for v in sorted({g["verdict"] for g in got})},
        "confidence_min": min(conf) if conf else None, "confidence_median": statistics.median(conf) if conf else None,
        "loop_busy_min": min(loops) if loops else None, "loop_busy_max": max(loops) if loops else None,
        "upstream_busy_max": max(ups) if ups else None,
        "q1_get_vs_inference_min": min(qvi) if qvi else None, "q1_get_vs_inference_max": max(qvi) if qvi else None,
        "wall_s_median": statistics.median(walls) if walls else None,
        "load_average_before": round(load_before, 1), "load_average_after": round(os.getloadavg()[0], 1),
        "runs_detail": got,
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--load", type=int, default=2, help="CPU-bound processes for the loaded series (0: quiet only)")
    ap.add_argument("--profile", action="append", help="a bundled hypothesis profile (repeatable; default all)")
    ap.add_argument("--minutes", type=float, default=120.0, help="bound on the whole bench")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--queue-backend", choices=["local", "process", "ray"], default=None,
                    help="override the profiles' consumer.queue.backend")
    a = ap.parse_args()
    if a.runs < 1 or a.load < 0:
        ap.error("--runs must be >= 1 and --load >= 0")
    from simstream.profile import bundled_profiles

    bundled = bundled_profiles()
    names = a.profile or list(EXPECTED)
    unknown = [n for n in names if n not in bundled or n not in EXPECTED]
    if unknown:
        print(f"bench_verdicts: unknown hypothesis profile(s): {', '.join(unknown)}", file=sys.stderr)
        sys.exit(2)
    deadline = time.time() + 60 * a.minutes
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs; {a.runs} run(s) per profile and load"
          + (f"; queue backend {a.queue_backend}" if a.queue_backend else ""))
    print(f"{'profile':28s} {'load':>4s} {'correct':>8s}  {'confidence min/med':>18s}  "
          f"{'loop busy min-max':>17s} {'parsers max':>11s}  {'get/inf min-max':>15s} {'wall med':>8s}  "
          f"{'load avg':>9s}  verdicts")
    rows = []
    for load in ([0, a.load] if a.load else [0]):
        for name in names:
            r = _series(name, bundled[name], a.runs, load, deadline, a.queue_backend)
            rows.append(r)
            print(f"{name:28s} {load:4d} {r['correct']:>3d}/{r['runs']:<4d}  "
                  f"{_fmt(r['confidence_min']):>8s}/{_fmt(r['confidence_median']):<9s}  "
                  f"{_fmt(r['loop_busy_min']):>8s}-{_fmt(r['loop_busy_max']):<8s} {_fmt(r['upstream_busy_max']):>11s}  "
                  f"{_fmt(r['q1_get_vs_inference_min']):>7s}-{_fmt(r['q1_get_vs_inference_max']):<7s} "
                  f"{_fmt(r['wall_s_median']):>8s}  "
                  f"{r['load_average_before']:>4.1f}/{r['load_average_after']:<4.1f}  {r['verdicts']}", flush=True)
            print(f"{'':28s} every run: " + " / ".join(
                f"{g['verdict']} {_fmt(g.get('confidence'))}" for g in r["runs_detail"]), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu_model(), "cpus": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
