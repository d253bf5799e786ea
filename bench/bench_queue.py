"""Q1's own cost, per backend and batch size, and when it starves the inference stage.

    .venv/bin/python bench/bench_queue.py [--shapes 1x1x64x64,1x1x256x256,8x1x512x512,16x1x512x512]
        [--backends local,process,ray] [--shards 4] [--poll-ms 1] [--compute-ms 2]
        [--seconds 3] [--json FILE]

For the same data (float32 batches of each shape, wrapped as the consumer wraps
them: a ``Q1Item`` with its ``BatchTimes``), in one process and one run:

1. put/get cost: ``n`` puts into an empty queue large enough for all of them (no
   backpressure), each timed, then ``n`` gets, each timed; medians in µs. For the
   process and Ray backends this is one inter-process call (plus serialisation)
   per put and per get that finds an item in the first shard it asks.
2. streaming: a producer thread puts ``n`` batches into a Q1 of 16 while the
   calling thread gets them as fast as it can: the most batches/s the queue
   alone can pass.
3. starvation: ``run_consumer`` in random mode (batches made in-process: no
   network, no parse) with the ``synthetic`` model at ``--compute-ms`` per batch on
   the CPU device, for ``--seconds``; the share of the wall the compute stage was
   busy (union of compute intervals / span of processing), and the verdict of the
   diagnosis on that run directory. With the local queue the compute stage stays
   busy; where a backend's row falls well below it, the queue starves it.

One Ray instance (1 CPU, no dashboard) serves every Ray measurement; its start-up
is not counted. Every loop is bounded by ``n`` (at most 400 per shape) and every
consumer run by ``--seconds``. Prints markdown tables and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from simstream.clock import now  # noqa: E402
from simstream.pipeline.config import consumer_config  # noqa: E402
from simstream.pipeline.consumer import Q1Item, run_consumer  # noqa: E402
from simstream.pipeline.q1 import make_q1  # noqa: E402
from simstream.pipeline.records import BatchTimes  # noqa: E402

STREAM_MAXSIZE = 16


def machine() -> str:
    cpu = cpu_model()
    try:
        import ray

        rv = ray.__version__
    except ImportError:
        rv = "not installed"
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, numpy {np.__version__}, ray {rv}")


def parse_shape(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.lower().split("x"))


def count_for(nbytes: int) -> int:
    """Batches per measurement: about 200 MB moved, between 20 and 400 batches."""
    return max(20, min(400, int(2e8 // nbytes)))


def item(i: int, data: np.ndarray) -> Q1Item:
    return Q1Item(BatchTimes(i, 0, i, data.shape[0], data.nbytes, now()), data=data)


def put_get_cost(backend: str, data: np.ndarray, n: int, shards: int, poll_ms: float) -> dict[str, float]:
    q = make_q1(backend, n, shards, poll_ms)
    try:
        puts, gets = [], []
        for i in range(n):
            t0 = time.perf_counter()
            q.put(item(i, data))
            puts.append(time.perf_counter() - t0)
        for _ in range(n):
            t0 = time.perf_counter()
            got = q.get(10.0)
            gets.append(time.perf_counter() - t0)
            assert got is not None and got.data.shape == data.shape
        return {"put_us": statistics.median(puts) * 1e6, "get_us": statistics.median(gets) * 1e6}
    finally:
        q.close()


def streaming(backend: str, data: np.ndarray, n: int, shards: int, poll_ms: float) -> dict[str, float]:
    q = make_q1(backend, STREAM_MAXSIZE, shards, poll_ms)
    try:
        errors: list[BaseException] = []

        def producer() -> None:
            try:
                for i in range(n):
                    q.put(item(i, data), timeout_s=60)
            except BaseException as e:  # reported, not swallowed
                errors.append(e)

        t0 = time.perf_counter()
        t = threading.Thread(target=producer)
        t.start()
        got = 0
        deadline = t0 + 120
        while got < n and time.perf_counter() < deadline and not errors:
            if q.get(1.0) is not None:
                got += 1
        wall = time.perf_counter() - t0
        t.join(60)
        if errors:
            raise errors[0]
        return {"batches_per_s": got / wall, "mb_per_s": got * data.nbytes / wall / 1e6,
                "backpressure_events": q.stats.backpressure_events}
    finally:
        q.close()


def starvation(backend: str, shape: tuple[int, ...], compute_ms: float, seconds: float,
               shards: int, poll_ms: float) -> dict[str, Any]:
    from simstream.diagnose import diagnose_run

    cfg = consumer_config(None, section={
        "mode": "random", "device": "cpu", "duration_s": seconds, "buffers": 2,
        "model": {"kind": "synthetic", "compute_ms": compute_ms},
        "queue": {"backend": backend, "maxsize": 16, "shards": shards,
                  "poll_interval_ms": poll_ms, "sample_interval_ms": 20},
        "random": {"batch_size": shape[0], "shape": list(shape[1:]), "dtype": "float32"},
        "log_every_batches": 1_000_000,
    })
    with tempfile.TemporaryDirectory() as d:
        s = run_consumer(cfg, d)
        rep = diagnose_run(Path(d), plots=False, trace=False)
        tp = s.get("throughput") or {}
        return {"batches_per_s": tp.get("batches_per_s"), "busy": s.get("gpu_busy_fraction"),
                "verdict": rep.get("verdict"), "confidence": rep.get("confidence")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1x1x64x64,1x1x256x256,8x1x512x512,16x1x512x512")
    ap.add_argument("--backends", default="local,process,ray")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--poll-ms", type=float, default=1.0)
    ap.add_argument("--compute-ms", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--no-starvation", action="store_true", help="skip the consumer runs")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    shapes = [parse_shape(s) for s in args.shapes.split(",")]
    backends = args.backends.split(",")
    if "ray" in backends:
        import logging

        import ray

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        print(f"ray started in {time.perf_counter() - t0:.1f} s (not counted)", file=sys.stderr)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    try:
        for shape in shapes:
            data = rng.standard_normal(shape, dtype=np.float32)
            n = count_for(data.nbytes)
            for b in backends:
                r: dict[str, Any] = {"shape": "x".join(map(str, shape)), "bytes": data.nbytes,
                                     "backend": b, "n": n}
                r.update(put_get_cost(b, data, n, args.shards, args.poll_ms))
                r.update(streaming(b, data, n, args.shards, args.poll_ms))
                if not args.no_starvation:
                    st = starvation(b, shape, args.compute_ms, args.seconds, args.shards,
                                    args.poll_ms)
                    r.update({f"consumer_{k}": v for k, v in st.items()})
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    finally:
        if "ray" in backends:
            import ray

            ray.shutdown()

    print(f"Machine: {machine()}\n")
    print(f"Shards {args.shards}, poll {args.poll_ms} ms; streaming through a Q1 of "
          f"{STREAM_MAXSIZE}; consumer runs: random mode, synthetic {args.compute_ms} ms per "
          f"batch on the CPU, {args.seconds} s each.\n")
    print("| batch | bytes | backend | n | put µs | get µs | stream batches/s | stream MB/s "
          "| consumer batches/s | compute busy | verdict |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        busy = r.get("consumer_busy")
        cb = r.get("consumer_batches_per_s")
        print(f"| {r['shape']} | {r['bytes']:,} | {r['backend']} | {r['n']} | {r['put_us']:.0f} | "
              f"{r['get_us']:.0f} | {r['batches_per_s']:.0f} | {r['mb_per_s']:.0f} | "
              f"{'-' if cb is None else f'{cb:.0f}'} | "
              f"{'-' if busy is None else f'{busy * 100:.0f} %'} | "
              f"{r.get('consumer_verdict') or '-'} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
