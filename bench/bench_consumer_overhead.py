"""Consumer overhead on CPU: how much of the wall time is not the model's compute.

    .venv/bin/python bench/bench_consumer_overhead.py [--batches 200] [--compute-ms 10]
        [--modes random,socket] [--repeats 3] [--device cpu|cuda]

The default profile's batches (8 x 1 x 512 x 512 float32) through the ``synthetic``
model (a known compute time per batch, default 10 ms), device cpu, 2 buffers, Q1
local, parse in 2 receiver threads. Three measurements, in one process:

- baseline: a bare loop calling the same synthetic model on one batch, N times
  (what the compute costs with nothing around it: its own sleep overshoot);
- random mode: ``run_consumer`` on in-process batches (no socket, no parse);
- socket mode: ``run_consumer`` fed over zmq on loopback by a child process that
  pushes pre-encoded HDF5 messages (``simstream.payload`` pool) as fast as it can,
  so the full path runs: receive, parse into host memory, Q1, engine, records.

For each run, in that one run: wall = first arrival to last D2H end, compute =
union of compute intervals (batches.csv), overhead = 1 - compute / wall (the GPU
busy fraction's complement); and the wall per batch against the bare loop's.
The consumer keeps the compute stage busy if overhead <= 10 %. Prints a markdown
table and the machine; medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from simstream.clock import now
from simstream.pipeline.config import consumer_config
from simstream.pipeline.consumer import run_consumer
from simstream.pipeline.models import build_model
from simstream.runner.procs import free_port

PUSHER = """
import sys, zmq
from simstream.payload import MessageFactory
from simstream.profile import Source
url, n = sys.argv[1], int(sys.argv[2])
src = Source(total_events=None, pool=8, content="random")
f = MessageFactory(src, rank=0)
ctx = zmq.Context(); s = ctx.socket(zmq.PUSH); s.setsockopt(zmq.SNDHWM, 5)
s.setsockopt(zmq.LINGER, 10000); s.connect(url)
for seq in range(n):
    s.send(f.message(seq).payload, copy=False)
s.close(); ctx.term()
"""


def machine() -> str:
    cpu = cpu_model()
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")


def bare_loop(n: int, compute_ms: float, device: str) -> dict[str, float]:
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    model = build_model({"kind": "synthetic", "compute_ms": compute_ms}).to(dev)
    x = torch.zeros((8, 1, 512, 512), device=dev)
    with torch.inference_mode():
        model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = now()
        for _ in range(n):
            model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        wall = now() - t0
    return {"wall_s": wall, "per_batch_ms": wall / n * 1000}


def consumer_run(mode: str, n: int, compute_ms: float, out: Path, device: str) -> dict[str, Any]:
    section = {"device": device, "model": {"kind": "synthetic", "compute_ms": compute_ms},
               "mode": mode, "count": n, "log_every_batches": 10**9}
    pusher = None
    if mode == "socket":
        url = f"tcp://127.0.0.1:{free_port()}"
        section["bind"] = url
    cfg = consumer_config(section=section)
    ready = threading.Event()
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(run_consumer(cfg, out, ready=ready)))
    t.start()
    if not ready.wait(120):
        raise RuntimeError("consumer did not start")
    if mode == "socket":
        pusher = subprocess.Popen([sys.executable, "-c", PUSHER, url, str(n)])
    t.join(600)
    if pusher is not None:
        pusher.wait(60)
    import csv

    with (out / "batches.csv").open() as f:
        rows = list(csv.DictReader(f))
    spans = sorted((float(r["t_compute_start"]), float(r["t_compute_end"])) for r in rows)
    union, cur = 0.0, None
    for a, b in spans:
        if cur is None or a > cur[1]:
            if cur:
                union += cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    if cur:
        union += cur[1] - cur[0]
    first = min(float(r["t_arrival"]) for r in rows)
    last = max(float(r["t_d2h_end"]) for r in rows)
    wall = last - first
    return {"wall_s": wall, "compute_s": union, "overhead": 1 - union / wall,
            "per_batch_ms": wall / len(rows) * 1000, "processed": result["processed"],
            "busy_summary": result["gpu_busy_fraction"],
            "q1_mean": result["q1"]["mean_occupancy"] or 0.0,
            "q1_empty": result["q1"]["share_empty"] or 0.0,
            "parse_ms": result["stage_median_ms"]["parse"] or 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--compute-ms", type=float, default=10.0)
    ap.add_argument("--modes", default="random,socket")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    n = args.batches
    base = [bare_loop(n, args.compute_ms, args.device) for _ in range(args.repeats)]
    base_ms = statistics.median(b["per_batch_ms"] for b in base)
    print(f"machine: {machine()}")
    if args.device == "cuda":
        print(f"gpu: {torch.cuda.get_device_name()}")
    print(f"batches {n} of 8x1x512x512 float32, synthetic compute {args.compute_ms} ms, "
          f"device {args.device}, 2 buffers, Q1 local, parse in 2 receiver threads; median of {args.repeats}\n")
    print("| run | wall per batch (ms) | compute busy | overhead outside compute | vs bare loop "
          "| Q1 mean occupancy | Q1 empty | parse median (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| bare loop (baseline) | {base_ms:.2f} | - | - | - | - | - | - |")
    for mode in args.modes.split(","):
        runs = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as d:
                r = consumer_run(mode, n, args.compute_ms, Path(d), args.device)
            if r["processed"] != n:
                raise SystemExit(f"{mode}: processed {r['processed']} of {n}")
            runs.append(r)
        per = statistics.median(r["per_batch_ms"] for r in runs)
        ovh = statistics.median(r["overhead"] for r in runs)
        print(f"| consumer, {mode} mode | {per:.2f} | {(1 - ovh) * 100:.1f} % | {ovh * 100:.1f} % "
              f"| {(per - base_ms) / per * 100:+.1f} % "
              f"| {statistics.median(r['q1_mean'] for r in runs) * 100:.0f} % "
              f"| {statistics.median(r['q1_empty'] for r in runs) * 100:.0f} % "
              f"| {statistics.median(r['parse_ms'] for r in runs):.2f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
