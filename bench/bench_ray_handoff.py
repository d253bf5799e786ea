"""The hand-off through Q1 on Ray, alone: CPU seconds per batch and batches/s for each
way a batch can cross the shard actors (``ray.q1_items``).

    .venv/bin/python bench/bench_ray_handoff.py [--shapes 8x1x512x512,16x1x1920x1920]
        [--n 150,8] [--rounds 2] [--shards 8] [--maxsize 8] [--ray-cpus 2] [--json FILE]

For each shape, one producer actor puts ``n`` batches (``Q1Item`` of float32, as a
receiver actor does after parsing; one source buffer reused, as the receiver's
host pool does) into a Q1 of ``--shards`` Ray shard actors, and one consumer
actor gets them and copies each into a buffer of its own (standing in for the
inference actor's copy to the device, the same in every mode). Modes:

- ``value``: the whole item through the shard actor (serialised on the put, held
  in the shard, serialised again on the get);
- ``ref``: the producer puts the array into the object store once and the item
  carries its reference (production's ObjectRef mode); the getter resolves it
  (numpy's zero-copy read).

Figures per mode: batches/s (wall of the consumer's loop), and CPU seconds per
batch of every process of the Ray instance this benchmark starts (its raylet and
object store, the shard, producer and consumer actors), read from ``/proc`` via
psutil before and after each pass: unlike the wall, the CPU per batch holds on a
loaded machine. Modes alternate over ``--rounds`` passes (value, ref, value,
ref...); the table gives each pass. Every loop is bounded by ``n``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

MODES = ("value", "ref")


def _cpu_of_tree() -> dict[int, float]:
    """user + system CPU seconds of every descendant process of this one, by pid."""
    import psutil

    out: dict[int, float] = {}
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


class Producer:
    def __init__(self, shards: list[Any], capacity: int, items: str) -> None:
        from simstream.pipeline.q1 import RayQ1

        self.q1 = RayQ1.view(shards, capacity, 1.0, items)

    def run(self, shape: tuple[int, ...], n: int) -> float:
        import numpy as np

        from simstream.pipeline.context import Q1Item
        from simstream.pipeline.records import BatchTimes

        buf = np.random.default_rng(0).random(shape, dtype=np.float32)
        t0 = time.process_time()
        for i in range(n):
            buf.flat[0] = i  # the receiver's pool hands the same buffer back
            self.q1.put(Q1Item(BatchTimes(i, 0, i, shape[0], buf.nbytes, 0.0), data=buf),
                        timeout_s=600)
        return time.process_time() - t0


class Consumer:
    def __init__(self, shards: list[Any], capacity: int, items: str) -> None:
        from simstream.pipeline.q1 import RayQ1

        self.q1 = RayQ1.view(shards, capacity, 1.0, items)

    def run(self, shape: tuple[int, ...], n: int) -> dict[str, Any]:
        import numpy as np

        dst = np.empty(shape, np.float32)
        got, bad = 0, 0
        t0, c0 = time.perf_counter(), time.process_time()
        while got < n:
            item = self.q1.get(60.0)
            if item is None:
                break
            np.copyto(dst, item.data)
            bad += int(dst.flat[0] != item.host.index)
            got += 1
            del item
        return {"got": got, "bad": bad, "wall_s": time.perf_counter() - t0,
                "consumer_cpu_s": time.process_time() - c0}


def one_pass(ray: Any, shape: tuple[int, ...], n: int, items: str, shards: int,
             maxsize: int) -> dict[str, Any]:
    from simstream.pipeline.q1 import RayQ1

    q1 = RayQ1(maxsize, shards, 1.0, items=items)
    prod_cls = ray.remote(num_cpus=0)(Producer)
    cons_cls = ray.remote(num_cpus=0)(Consumer)
    prod = prod_cls.remote(q1.actors, q1.capacity, items)
    cons = cons_cls.remote(q1.actors, q1.capacity, items)
    ray.get([prod.__ray_ready__.remote(), cons.__ray_ready__.remote()])
    try:
        before = _cpu_of_tree()
        p_ref = prod.run.remote(shape, n)
        res = ray.get(cons.run.remote(shape, n), timeout=900)
        res["producer_cpu_s"] = ray.get(p_ref, timeout=60)
        after = _cpu_of_tree()
    finally:
        for a in (prod, cons):
            ray.kill(a)
        q1.close()
    nbytes = 4
    for x in shape:
        nbytes *= x
    res.update({"items": items, "shape": list(shape), "n": n, "mb": nbytes / 1e6,
                "ray_cpu_s": _cpu_delta(before, after)})
    res["batches_per_s"] = res["got"] / res["wall_s"]
    res["ray_cpu_s_per_batch"] = res["ray_cpu_s"] / max(res["got"], 1)
    print(json.dumps(res), file=sys.stderr, flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="8x1x512x512,16x1x1920x1920")
    ap.add_argument("--n", default="150,8", help="batches per pass, one per shape")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--maxsize", type=int, default=8)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    ns = [int(x) for x in args.n.split(",")]
    if len(ns) != len(shapes) or min(ns) < 1 or args.rounds < 1:
        ap.error("--n: one positive count per shape; --rounds >= 1")
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING",
             _system_config={"worker_niceness": 0})
    print(f"ray {ray.__version__} started in {time.perf_counter() - t0:.1f} s (not counted)",
          file=sys.stderr)
    rows = []
    try:
        for shape, n in zip(shapes, ns, strict=True):
            for _ in range(args.rounds):
                for items in MODES:
                    rows.append(one_pass(ray, shape, n, items, args.shards, args.maxsize))
    finally:
        ray.shutdown()
    mach = (f"{cpu_model()}, {os.cpu_count()} cores, load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end, Python "
            f"{platform.python_version()}, ray {ray.__version__}")
    print(f"Machine: {mach}\n")
    print("| batch | MB | Q1 items | batches | batches/s | Ray CPU s per batch | producer CPU s "
          "per batch | consumer CPU s per batch | wrong data |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        g = max(r["got"], 1)
        print(f"| {'x'.join(map(str, r['shape']))} | {r['mb']:.1f} | {r['items']} | {r['got']} | "
              f"{r['batches_per_s']:.1f} | {r['ray_cpu_s_per_batch']:.4f} | "
              f"{r['producer_cpu_s'] / g:.4f} | {r['consumer_cpu_s'] / g:.4f} | {r['bad']} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": mach, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
