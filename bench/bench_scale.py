"""Scale-out end to end: throughput vs emitter ranks, receiver actors and inference
actors, with the consumer on Ray as production lays it out, and what stops it.

    .venv/bin/python bench/bench_scale.py [--cases 1x1x1,2x2x1,4x4x1,8x4x1]
        [--model synthetic:20 | peaknet:production] [--batch 8] [--shape 1,512,512] [--duration 15]
        [--device auto] [--ray-cpus N] [--q1-items ref,value] [--layouts production,fast]
        [--json FILE]

A case ``RxKxA`` is R emitter ranks (in R emitter processes, distinct rank ids),
spread over K addresses, one receiver actor bound to each, and A inference
actors (one GPU each when the device is cuda). Every case is one
``simstream run`` of a generated profile: uncompressed HDF5 batches of
``--batch`` x ``--shape`` float32 sent as fast as the emitters can (no rate, no
cap), Q1 as 8 Ray shard actors of 32 batches in all, for ``--duration``
seconds. The run's own diagnosis names the limit (network = the producers and
the link cannot keep the consumer fed; parse; queue; consumer = the model, i.e.
the GPU when on one).

Figures per case, from the run directory: samples/s processed, the GPU (compute)
busy share averaged over inference actors, Q1 mean occupancy, the emitters'
blocked share, the verdict. The baseline of the same run: the consumer in random
mode (batches made in host memory, no network, one engine, no Ray) with the same
model: ``vs random`` is a case's samples/s over it. Every case is bounded by
``--duration`` plus the runner's own margins.

``--layouts`` (``consumer.layout``, default production): ``fast`` runs the same
cases with no receiver or shard actors, each inference actor binding its share of
the K addresses and receiving for itself into an in-process Q1 (so K >= A); a
comma-separated list runs every case once per layout.

``--q1-items`` (``ray.q1_items``, production's layout only): how a batch crosses the Q1 shards, ``ref``
(production's ObjectRef mode, the default) or ``value`` (the whole batch through
the shard actor); a comma-separated list runs every case once per value, one
after the other, against the same baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from simstream.profile import dump_profile, find_profile, load_profile  # noqa: E402
from simstream.runner.core import run_profile  # noqa: E402


def machine() -> str:
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return (f"{cpu_model()}, {os.cpu_count()} cores{gpu}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


PEAKNET_SIZES = ("tiny", "small", "base", "production")


def parse_model(spec: str) -> dict[str, Any]:
    """``synthetic:MS`` (a fixed compute time per batch) or ``peaknet:SIZE``. The
    size is required: the model's own default is the tiny test size, which once ran
    here unnoticed under a table that said production. Raises ValueError."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        try:
            return {"kind": "synthetic", "compute_ms": float(arg or 20)}
        except ValueError:
            raise ValueError(f"--model {spec!r}: synthetic:MS takes a number of ms") from None
    if kind == "peaknet":
        if arg not in PEAKNET_SIZES:
            raise ValueError(f"--model {spec!r}: peaknet needs its size, peaknet:SIZE with "
                             f"SIZE one of {', '.join(PEAKNET_SIZES)}")
        return {"kind": "peaknet", "size": arg}
    raise ValueError(f"--model {spec!r}: synthetic:MS or peaknet:SIZE")


def describe_model(model: dict[str, Any]) -> str:
    """The model as a table names it: ``PeakNet production``, ``synthetic 20 ms``."""
    if model["kind"] == "peaknet":
        return f"PeakNet {model['size']}"
    return f"synthetic {model['compute_ms']:g} ms per batch"


def profile_for(args: argparse.Namespace, ranks: int, receivers: int, actors: int,
                mode: str, items: str = "ref", layout: str = "production") -> Any:
    base = load_profile(find_profile("steady"))
    urls = [f"tcp://127.0.0.1:{20000 + i}" for i in range(receivers)]  # the runner picks ports
    consumer: dict[str, Any] = {
        "model": parse_model(args.model), "device": args.device, "buffers": 2,
        "parser_threads": 2, "rcvhwm": 16,
        "queue": {"maxsize": 32, "backend": "ray" if mode == "socket" else "local",
                  "shards": 8, "poll_interval_ms": 1},
        "ray": {"num_cpus": args.ray_cpus, "inference_actors": actors, "q1_items": items},
        "layout": layout if mode == "socket" else "production",
        "random": {"batch_size": args.batch, "shape": args.shape, "dtype": "float32"},
    }
    return base.with_overrides({
        "name": f"scale-{ranks}x{receivers}x{actors}", "source.batch_size": args.batch,
        "source.shape": args.shape, "source.content": "random", "source.compression": "none",
        "source.pool": 4, "source.total_events": None,
        "transport.url": urls[0], "transport.urls": urls if receivers > 1 else None,
        "transport.ranks": ranks, "transport.processes": ranks, "transport.sndhwm": 5,
        "timeline": {"phases": [{"name": "flat-out", "rate_hz": None}]},
        "stop": {"messages": None, "duration_s": args.duration},
        "consumer": consumer,
    }, skip_none=False)


def run_case(args: argparse.Namespace, workdir: Path, ranks: int, receivers: int, actors: int,
             mode: str = "socket", items: str = "ref", layout: str = "production"
             ) -> dict[str, Any]:
    prof = profile_for(args, ranks, receivers, actors, mode, items, layout)
    name = ("random" if mode == "random" else f"{ranks}x{receivers}x{actors}-{items}"
            if layout == "production" else f"{ranks}x{receivers}x{actors}-fast")
    path = workdir / f"{name}.yaml"
    path.write_text(dump_profile(prof))
    out = workdir / name
    res = run_profile(path, out, mode=mode, duration_s=args.duration)
    s = json.loads((out / "summary.json").read_text())
    rep = res.report or {}
    ev = rep.get("evidence", {})
    em = ev.get("emitter") or {}
    row = {
        "case": name, "ranks": ranks, "receivers": receivers, "actors": actors, "mode": mode,
        "layout": layout if mode == "socket" else None,
        "q1_items": items if mode == "socket" and layout == "production" else None,
        "received": s["received"], "processed": s["processed"], "lost": s["lost"],
        "samples_per_s": s["throughput"]["samples_per_s"],
        "mb_per_s": s["throughput"]["mb_per_s"],
        "gpu_busy": s["gpu_busy_fraction"], "gpu_busy_by_device": s.get("gpu_busy_by_device"),
        "q1_mean": s["q1"].get("mean_occupancy"),
        "emitter_blocked_share": em.get("blocked_share"),
        "verdict": rep.get("verdict"), "confidence": rep.get("confidence"),
        "device": s.get("device_description"), "out": str(out),
        # host buffers: how many were pinned at warm-up (reserved), any pinned during
        # the run, and the time all pinning took
        "host_pool": s.get("host_pool"),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="1x1x1,2x2x1,4x4x1,8x4x1",
                    help="RANKSxRECEIVERSxACTORS, comma separated")
    ap.add_argument("--model", default="synthetic:20",
                    help="synthetic:MS or peaknet:SIZE (tiny, small, base, production)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shape", default="1,512,512")
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ray-cpus", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    ap.add_argument("--q1-items", default="ref",
                    help="ray.q1_items per run: ref, value or both (ref,value)")
    ap.add_argument("--layouts", default="production",
                    help="consumer.layout per run: production, fast or both (production,fast)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    layouts = args.layouts.split(",")
    if not layouts or any(x not in ("production", "fast") for x in layouts):
        ap.error(f"--layouts {args.layouts!r}: production, fast or a comma-separated list")
    items = args.q1_items.split(",")
    if not items or any(i not in ("ref", "value") for i in items):
        ap.error(f"--q1-items {args.q1_items!r}: ref, value or a comma-separated list of them")
    args.shape = [int(x) for x in args.shape.split(",")]
    try:
        model = parse_model(args.model)
    except ValueError as e:
        ap.error(str(e))
    cases = []
    for c in args.cases.split(","):
        try:
            r, k, a = (int(x) for x in c.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--cases: {c!r} is not RANKSxRECEIVERSxACTORS") from None
        if min(r, k, a) < 1 or k > r:
            raise SystemExit(f"--cases: {c!r} needs 1 <= receivers <= ranks and actors >= 1")
        if "fast" in layouts and k < a:
            raise SystemExit(f"--cases: {c!r}: the fast layout needs an address per actor")
        cases.append((r, k, a))
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        workdir = args.out or Path(d)
        workdir.mkdir(parents=True, exist_ok=True)
        base = run_case(args, workdir, 1, 1, 1, mode="random")
        runs = [(lay, i) for lay in layouts
                for i in (items if lay == "production" else items[:1])]
        rows = [run_case(args, workdir, r, k, a, items=i, layout=lay)
                for r, k, a in cases for lay, i in runs]
    nbytes = args.batch * 4
    for x in args.shape:
        nbytes *= x
    print(f"Machine: {machine()}\n")
    print(f"Batches of {args.batch} x {tuple(args.shape)} float32 ({nbytes / 1e6:.1f} MB), "
          f"model {describe_model(model)}, device {args.device}, {args.duration:g} s per case, "
          "emitters flat out (no rate, no cap).\n")
    print(f"Baseline, random mode (no network, no Ray): {base['samples_per_s']:.1f} samples/s, "
          f"GPU busy {100 * (base['gpu_busy'] or 0):.0f} %.\n")
    print("| ranks | receivers | inference actors | layout (Q1 items) | samples/s | MB/s | "
          "vs random | GPU busy (per actor) | Q1 mean | emitters blocked | limit (diagnosis) |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |")
    for r in rows:
        per = r["gpu_busy_by_device"] or {}
        busy = ", ".join(f"{100 * v:.0f} %" for v in per.values()) or "-"
        blocked = r["emitter_blocked_share"]
        how = r["layout"] + (f" ({r['q1_items']})" if r["q1_items"] else "")
        print(f"| {r['ranks']} | {r['receivers']} | {r['actors']} | {how} | "
              f"{r['samples_per_s']:.1f} | "
              f"{r['mb_per_s']:.0f} | {r['samples_per_s'] / base['samples_per_s']:.2f} | {busy} | "
              f"{100 * (r['q1_mean'] or 0):.0f} % | "
              f"{'-' if blocked is None else f'{100 * blocked:.0f} %'} | "
              f"{r['verdict']} ({r['confidence']}) |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "model": model, "baseline": base,
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
