"""How stable each hypothesis profile's verdict is, quiet and under CPU load.

    python bench/bench_verdicts.py --runs 20 --load 2
    python bench/bench_verdicts.py --runs 20 --load 2 --lanes 8 --cpus-per-lane 2 --json v.json
    python bench/bench_verdicts.py --runs 3 --load 0 --profile hypotheses/queue-bound

Runs every bundled hypothesis profile (or the ones named) ``--runs`` times end
to end on loopback (``simstream run``), once with no extra load and, with
``--load N``, once more with N unrelated CPU-bound processes spinning for the
whole series.

Lanes: ``--lanes K --cpus-per-lane C`` makes K small machines out of a bigger
host. Lane i is a process pinned (``os.sched_setaffinity``) to CPUs [C*i ..
C*i + C - 1] of this process's CPU set; everything it starts (the emitter, the
consumer, their threads, and its ``--load`` spinners) inherits that set, so a
lane with C = 2 is a 2-core machine with its own load. The lanes run at the
same time; each profile's runs are dealt round robin over them (lane i makes
runs i, i + K, ...), and the per-run records are merged into one tally per
profile and load. Without ``--cpus-per-lane`` the lanes are not pinned.

Per run it records the verdict, the confidence, the deciding shares (inference
loop busy, Q1 over 80 % full, the receiver side's busy share and the share of
its putting alone), the saturated loop's ratio (Q1 get overhead / the inference
stage, > 1 means ``queue``), the network cause, the lane and its CPUs, and the
wall time. It prints the machine, the lanes, the load average before and after,
a markdown table (profile, load, correct/N, verdicts seen, confidence
min/median, deciding shares, wall per run) and every run's verdict in order;
``--json`` writes all of it.

Profiles whose consumer runs on Ray (``consumer.queue.backend: ray``, or
``--queue-backend ray``) are skipped, and the output says so, when ``ray``
cannot be imported. Nothing here needs more than the repository and its core
dependencies.

Bounded: no run starts after ``--deadline-s`` (default: ``--minutes``); a lane
still busy ``--grace-s`` after that is killed (its process group), and what
its finished runs recorded is kept. The spinners are ended by id.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

EXPECTED = {
    "hypotheses/network-bound": "network",
    "hypotheses/bursty-network": "network",
    "hypotheses/parse-bound": "parse",
    "hypotheses/queue-bound": "queue",
    "hypotheses/queue-bound-ray": "queue",
    "hypotheses/consumer-bound": "consumer",
}

SPIN = "import time\nx = 0\nwhile time.time() < {stop}:\n    x = (x * 1103515245 + 12345) & 0xFFFFFFFF\n"


# --------------------------------------------------------------------------
# lanes: which CPUs, which runs


def lane_cpus(available: list[int], lanes: int, per_lane: int | None) -> list[list[int] | None]:
    """CPU set of each lane: the i-th block of ``per_lane`` CPUs of ``available`` (sorted);
    None for every lane when ``per_lane`` is None (not pinned). Raises ValueError when
    the blocks do not fit."""
    if lanes < 1:
        raise ValueError("--lanes must be >= 1")
    if per_lane is None:
        return [None] * lanes
    if per_lane < 1:
        raise ValueError("--cpus-per-lane must be >= 1")
    cpus = sorted(available)
    if lanes * per_lane > len(cpus):
        raise ValueError(f"{lanes} lanes x {per_lane} CPUs need {lanes * per_lane} CPUs; this process may "
                         f"use {len(cpus)} ({_cpu_list(cpus)})")
    return [cpus[i * per_lane:(i + 1) * per_lane] for i in range(lanes)]


def lane_runs(runs: int, lanes: int, lane: int) -> list[int]:
    """The run numbers (0-based) of one series that lane ``lane`` makes: round robin."""
    return list(range(lane, runs, lanes))


def _cpu_list(cpus: list[int] | None) -> str:
    return "any" if cpus is None else ",".join(str(c) for c in cpus)


def is_ray_profile(path: Path, backend: str | None) -> bool:
    """Whether the profile's consumer runs on Ray (its queue backend, or the override)."""
    if backend is not None:
        return backend == "ray"
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    q = ((data.get("consumer") or {}).get("queue") or {}) if isinstance(data, dict) else {}
    return isinstance(q, dict) and q.get("backend") == "ray"


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


# --------------------------------------------------------------------------
# one run, one lane


def one_run(profile: Path, out: Path, backend: str | None = None) -> dict[str, Any]:
    """One end-to-end run; its verdict and the shares it was decided on."""
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
            "q1_full": (ev.get("q1") or {}).get("share_over_80pct"),
            "upstream_busy": ev.get("upstream_busy_share"),
            "put_busy": ev.get("upstream_put_busy_share"), "q1_get_vs_inference": q_vs_inf,
            "wall_s": round(time.perf_counter() - t, 1)}


def _spinners(n: int, stop_at: float, cpus: list[int] | None) -> list[subprocess.Popen[bytes]]:
    procs = []
    for _ in range(n):
        p = subprocess.Popen([sys.executable, "-c", SPIN.format(stop=stop_at)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        if cpus is not None:
            with contextlib.suppress(OSError):  # it inherits the lane's set anyway
                os.sched_setaffinity(p.pid, cpus)
        procs.append(p)
    return procs


def _end(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def lane_main(spec: dict[str, Any]) -> None:
    """A lane's process: pin itself, then for each load and profile make its share of
    the runs, appending one JSON line per run to ``spec["out"]``."""
    cpus = spec["cpus"]
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    deadline, out = spec["deadline"], Path(spec["out"])
    lane = spec["lane"]
    # inside the parent's temporary directory, which goes with it even when this lane is killed
    with tempfile.TemporaryDirectory(prefix=f"lane{lane}-runs-", dir=Path(spec["out"]).parent) as tmp:
        for load in spec["loads"]:
            procs = _spinners(load, deadline + spec["grace_s"], cpus) if load else []
            try:
                for name, path in spec["profiles"]:
                    for i in lane_runs(spec["runs"], spec["lanes"], lane):
                        if time.time() > deadline:
                            break
                        la = os.getloadavg()[0]
                        rec = one_run(Path(path), Path(tmp) / f"{name.replace('/', '_')}-{load}-{i}",
                                      spec["backend"])
                        rec.update({"profile": name, "load_processes": load, "run": i, "lane": lane,
                                    "cpus": cpus, "load_average_at_start": round(la, 1)})
                        with out.open("a") as f:
                            f.write(json.dumps(rec) + "\n")
            finally:
                _end(procs)


# --------------------------------------------------------------------------
# the parent: start the lanes, bound them, merge


def run_lanes(specs: list[dict[str, Any]], hard_stop: float) -> list[str]:
    """Start every lane and wait for them; a lane still running at ``hard_stop`` is
    killed with its process group. Returns a note per lane that did not end by itself."""
    procs = []
    for s in specs:
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--lane-spec",
                                       json.dumps(s)], start_new_session=True, cwd=str(ROOT)))
    notes = []
    for s, p in zip(specs, procs, strict=True):
        try:
            rc = p.wait(max(hard_stop - time.time(), 1.0))
            if rc:
                notes.append(f"lane {s['lane']} exited with status {rc}")
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
            notes.append(f"lane {s['lane']} was still running {s['grace_s']:.0f} s past the deadline: killed")
    return notes


def _read_runs(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        if p.exists():
            out += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return out


def _span(xs: list[float]) -> tuple[float | None, float | None]:
    return (min(xs), max(xs)) if xs else (None, None)


def tally(name: str, load: int, got: list[dict[str, Any]]) -> dict[str, Any]:
    """One profile and load: how many runs got the expected verdict, and the ranges."""
    want = EXPECTED.get(name)
    got = sorted(got, key=lambda g: g.get("run", 0))

    def vals(k: str) -> list[float]:
        return [g[k] for g in got if isinstance(g.get(k), (int, float))]

    conf, walls = vals("confidence"), vals("wall_s")
    row: dict[str, Any] = {
        "profile": name, "load_processes": load, "expected": want, "runs": len(got),
        "correct": sum(g["verdict"] == want for g in got),
        "verdicts": {v: sum(g["verdict"] == v for g in got) for v in sorted({g["verdict"] for g in got})},
        "causes": sorted({g["cause"] for g in got if g.get("cause")}),
        "confidence_min": min(conf) if conf else None,
        "confidence_median": statistics.median(conf) if conf else None,
        "wall_s_median": statistics.median(walls) if walls else None,
    }
    for k in ("loop_busy", "q1_full", "upstream_busy", "put_busy", "q1_get_vs_inference"):
        row[f"{k}_min"], row[f"{k}_max"] = _span(vals(k))
    loads = vals("load_average_at_start")
    row["load_average_at_start_min"], row["load_average_at_start_max"] = _span(loads)
    row["runs_detail"] = got
    return row


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _range(r: dict[str, Any], k: str) -> str:
    lo, hi = r[f"{k}_min"], r[f"{k}_max"]
    return "-" if lo is None else f"{lo:.2f}-{hi:.2f}"


def _wall(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| profile | load | correct | verdicts seen | confidence min / median | loop busy | "
            "Q1 >80 % full | receiver side busy (putting alone) | Q1 get / inference | wall per run (median) |")
    lines = [head, "| --- | ---: | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        seen = ", ".join(f"{v} {n}" for v, n in r["verdicts"].items()) or "none"
        if r["causes"]:
            seen += f" (cause {', '.join(r['causes'])})"
        lines.append(
            f"| {r['profile'].removeprefix('hypotheses/')} | {r['load_processes']} | {r['correct']}/{r['runs']} | "
            f"{seen} | {_f(r['confidence_min'])} / {_f(r['confidence_median'])} | {_range(r, 'loop_busy')} | "
            f"{_range(r, 'q1_full')} | {_range(r, 'upstream_busy')} ({_range(r, 'put_busy')}) | "
            f"{_range(r, 'q1_get_vs_inference')} | {_wall(r['wall_s_median'])} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--lane-spec":
        lane_main(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="runs per profile and load")
    ap.add_argument("--load", type=int, default=2,
                    help="CPU-bound processes (per lane) for the loaded series (0: quiet only)")
    ap.add_argument("--loaded-only", action="store_true", help="skip the quiet series (needs --load > 0)")
    ap.add_argument("--profile", action="append", help="a bundled hypothesis profile (repeatable; default all)")
    ap.add_argument("--lanes", type=int, default=1, help="concurrent lanes (default 1)")
    ap.add_argument("--cpus-per-lane", type=int, default=None,
                    help="pin lane i to CPUs [C*i .. C*i+C-1] of this process's CPU set (default: not pinned)")
    ap.add_argument("--minutes", type=float, default=120.0, help="bound on the whole bench (see --deadline-s)")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="no run starts after this many seconds (default: --minutes)")
    ap.add_argument("--grace-s", type=float, default=300.0,
                    help="a lane still running this long after the deadline is killed (default 300)")
    ap.add_argument("--json", type=Path, default=None, help="write the table and every run here")
    ap.add_argument("--queue-backend", choices=["local", "process", "ray"], default=None,
                    help="override the profiles' consumer.queue.backend")
    a = ap.parse_args()
    if a.runs < 1 or a.load < 0:
        ap.error("--runs must be >= 1 and --load >= 0")
    if a.deadline_s is not None and a.deadline_s <= 0 or a.grace_s < 0:
        ap.error("--deadline-s must be > 0 and --grace-s >= 0")
    if a.loaded_only and not a.load:
        ap.error("--loaded-only needs --load > 0")
    loads = [a.load] if a.loaded_only else ([0, a.load] if a.load else [0])
    try:
        cpus = lane_cpus(sorted(os.sched_getaffinity(0)), a.lanes, a.cpus_per_lane)
    except ValueError as e:
        ap.error(str(e))
    from simstream.profile import bundled_profiles

    bundled = bundled_profiles()
    names = a.profile or list(EXPECTED)
    unknown = [n for n in names if n not in bundled or n not in EXPECTED]
    if unknown:
        print(f"bench_verdicts: unknown hypothesis profile(s): {', '.join(unknown)}", file=sys.stderr)
        sys.exit(2)
    skipped = []
    if not ray_available():
        skipped = [n for n in names if is_ray_profile(bundled[n], a.queue_backend)]
        names = [n for n in names if n not in skipped]
    t_start = time.time()
    deadline = t_start + (a.deadline_s if a.deadline_s is not None else 60 * a.minutes)
    la0 = os.getloadavg()
    print(f"# machine: {cpu_model()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable here); "
          f"load average {la0[0]:.1f} / {la0[1]:.1f} / {la0[2]:.1f} (1 / 5 / 15 min) at the start")
    print(f"# {a.runs} run(s) per profile and load; loads {loads} spinning "
          f"process(es) per lane; {a.lanes} lane(s): "
          + "; ".join(f"lane {i} CPUs {_cpu_list(c)}" for i, c in enumerate(cpus))
          + (f"; queue backend {a.queue_backend}" if a.queue_backend else ""))
    for n in skipped:
        print(f"# skipped {n}: its consumer runs on Ray and ray is not importable here")
    if not names:
        print("# nothing to run")
    print(flush=True)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if names:
        with tempfile.TemporaryDirectory(prefix="bench-verdicts-") as tmp:
            outs = [Path(tmp) / f"lane{i}.jsonl" for i in range(a.lanes)]
            specs = [{"lane": i, "lanes": a.lanes, "cpus": cpus[i], "runs": a.runs,
                      "loads": loads,
                      "profiles": [(n, str(bundled[n])) for n in names], "backend": a.queue_backend,
                      "deadline": deadline, "grace_s": a.grace_s, "out": str(outs[i])} for i in range(a.lanes)]
            notes = run_lanes(specs, deadline + a.grace_s)
            runs = _read_runs(outs)
        for load in loads:
            for n in names:
                rows.append(tally(n, load, [g for g in runs if g["profile"] == n and g["load_processes"] == load]))
    la1 = os.getloadavg()
    print(markdown(rows))
    print()
    for r in rows:
        print(f"{r['profile']} load {r['load_processes']}, every run (run: verdict confidence, lane): " + " / ".join(
            f"{g['run']}: {g['verdict']} {_f(g.get('confidence'))}, lane {g['lane']}" for g in r["runs_detail"]))
    for n in notes:
        print(f"# {n}")
    short = [r for r in rows if r["runs"] < a.runs]
    if short:
        print(f"# {len(short)} series made fewer than {a.runs} runs (deadline {deadline - t_start:.0f} s)")
    print(f"# load average {la1[0]:.1f} / {la1[1]:.1f} / {la1[2]:.1f} at the end; "
          f"{time.time() - t_start:.0f} s in all", flush=True)
    if a.json:
        a.json.write_text(json.dumps({
            "cpu": cpu_model(), "cpus": os.cpu_count(), "usable_cpus": sorted(os.sched_getaffinity(0)),
            "lanes": [{"lane": i, "cpus": c} for i, c in enumerate(cpus)], "runs_per_series": a.runs,
            "load_processes": a.load, "queue_backend": a.queue_backend, "skipped": skipped,
            "load_average_start": list(la0), "load_average_end": list(la1),
            "wall_s": round(time.time() - t_start, 1), "notes": notes, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
