"""The consumer's inference stage on one card: H2D paths, random-mode throughput, overlap.

Usage (GPU, the defaults are production's 16 x 1 x 1920 x 1920 float32 and PeakNet):

    python bench/bench_gpu.py --out runs/bench-gpu
    python bench/bench_gpu.py --out runs/bench-gpu --batch 16 --shape 1,1920,1920 \\
        --model peaknet --size production --seconds 20

CPU check (small shapes, same code path, figures are host memcpy, not a bus):

    python bench/bench_gpu.py --out runs/bench-cpu --device cpu --batch 4 \\
        --shape 1,256,256 --size tiny --seconds 3

Three parts, all on the same device in one run:

1. H2D of one batch, each as GB/s and as a fraction of the pinned baseline:
   ``pinned``: one copy from a pinned tensor (the ceiling);
   ``per_sample_pin``: production's way, each sample pinned (``pin_memory()``) just
   before its own copy; ``staging``: the batch copied into one pinned buffer, then
   one copy; ``pageable``: one copy from ordinary memory;
   ``engine``: the engine's H2D stage when the batch was decoded straight into
   ``Engine.host_array`` memory (``simstream.codec.decode(..., alloc=)``, or a
   memcpy when the codec is missing), from the engine's own stage times;
   ``engine_pageable``: the engine's H2D stage given ordinary memory (it stages).
2. Random mode: the model on pre-made batches for ``--seconds``: GPU busy (union of
   compute intervals / wall), samples/s, per-stage times. If the batch does not
   fit, it is halved until it does (the output says so).
3. Overlap: how many H2D intervals of one buffer overlap the compute of another,
   and a PNG timeline of a window.

Writes ``results.json`` and ``timeline.png`` to --out and prints a markdown table.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from a checkout where simstream is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simstream.clock import now  # noqa: E402
from simstream.pipeline.device import describe, resolve_device  # noqa: E402
from simstream.pipeline.engine import Engine, Finished, WorkItem, busy_intervals, union_seconds  # noqa: E402
from simstream.pipeline.models import build_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, device: torch.device, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` (host clock around the call and a device sync); first call dropped."""
    out = []
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out[1:]


def _event_timed(fn: Any, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` from CUDA events on the current stream; first call dropped."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(repeats + 1):
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1e3)
    return out[1:]


def _decoder() -> tuple[str, Any]:
    """(how, codec module or None) for decoding straight into engine memory."""
    try:
        from simstream import codec
    except ImportError:
        return "memcpy (simstream.codec not available)", None
    if "alloc" not in inspect.signature(codec.decode).parameters:
        return "memcpy (simstream.codec.decode has no alloc=)", None
    return "simstream.codec.decode(alloc=Engine.host_array), HDF5 uncompressed", codec


# -- part 1 ---------------------------------------------------------------------------------

PATHS = {
    "pinned": "pinned, one copy (baseline)",
    "per_sample_pin": "pin each sample, then its copy (production)",
    "per_sample_pin_uncached": "the same, torch's pinned-block cache emptied per batch",
    "staging": "copy into one pinned staging buffer, one copy",
    "pageable": "pageable, one copy",
    "engine": "engine H2D stage, decoded into Engine.host_array",
    "engine_pageable": "engine H2D stage, pageable input (staged)",
}


def bench_h2d(device: torch.device, batch: np.ndarray, repeats: int) -> dict[str, Any]:
    nbytes = batch.nbytes
    results: dict[str, Any] = {"bytes": nbytes, "repeats": repeats}
    dev = torch.empty(batch.shape, dtype=torch.from_numpy(batch[:0]).dtype, device=device)
    cuda = device.type == "cuda"

    def rate(seconds: list[float]) -> dict[str, float]:
        med = statistics.median(seconds)
        return {"ms": med * 1e3, "best_ms": min(seconds) * 1e3, "gb_s": nbytes / med / 1e9}

    if cuda:
        pinned = torch.from_numpy(batch).pin_memory()
        results["pinned"] = rate(_event_timed(lambda: dev.copy_(pinned, non_blocking=True), repeats))

        def per_sample_pin() -> None:
            for i in range(batch.shape[0]):
                dev[i].copy_(torch.from_numpy(batch[i]).pin_memory(), non_blocking=True)

        results["per_sample_pin"] = rate(_timed(per_sample_pin, device, repeats))
        empty_host_cache = getattr(torch._C, "_host_emptyCache", None)
        if empty_host_cache is not None:
            # the same with torch's pinned-block cache emptied before each batch: every
            # pin_memory() is then a fresh cudaHostAlloc, as when pinned blocks are not reused

            def per_sample_pin_uncached() -> None:
                torch.cuda.synchronize(device)
                empty_host_cache()
                per_sample_pin()

            results["per_sample_pin_uncached"] = rate(_timed(per_sample_pin_uncached, device, repeats))
        staging = torch.empty(batch.shape, dtype=dev.dtype, pin_memory=True)
        staging_np = staging.numpy()

        def staged() -> None:
            np.copyto(staging_np, batch)
            dev.copy_(staging, non_blocking=True)

        results["staging"] = rate(_timed(staged, device, repeats))
        results["pageable"] = rate(_timed(lambda: dev.copy_(torch.from_numpy(batch)), device, repeats))
    else:
        # no bus on CPU: "H2D" is a memcpy into the device buffer (a torch tensor)
        results["pinned"] = rate(_timed(lambda: dev.copy_(torch.from_numpy(batch)), device, repeats))

        def per_sample() -> None:
            for i in range(batch.shape[0]):
                dev[i].copy_(torch.from_numpy(batch[i]))

        results["per_sample_pin"] = rate(_timed(per_sample, device, repeats))
        staging_np = np.empty_like(batch)

        def staged_cpu() -> None:
            np.copyto(staging_np, batch)
            dev.copy_(torch.from_numpy(staging_np))

        results["staging"] = rate(_timed(staged_cpu, device, repeats))
        results["pageable"] = results["pinned"]


    how, codec = _decoder()
    results["decode_how"] = how
    engine = Engine(build_model({"kind": "noop"}), device=str(device), buffers=2)
    engine.warmup(batch.shape, batch.dtype, reserve=False)  # one batch at a time here
    message = codec.encode({"data": batch}, fields={"data": "/data/data"}) if codec else None
    done: list[Finished] = []
    decode_s = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        releases: list[Any] = []
        if codec is not None:

            def alloc(shape: tuple[int, ...], dtype: np.dtype, releases: list = releases) -> np.ndarray:
                arr, release = engine.host_array(shape, dtype)
                releases.append(release)
                return arr

            data = codec.decode(message, fields={"data": "/data/data"}, alloc=alloc)["data"]
            release = releases[0]
        else:
            data, release = engine.host_array(batch.shape, batch.dtype)
            np.copyto(data, batch)
        decode_s.append(time.perf_counter() - t0)
        done += engine.submit(WorkItem(index=i, data=data, release=release))
    done += engine.flush()
    stage = [f.t_h2d_end - f.t_h2d_start for f in done[1:]]
    results["engine"] = rate(stage)
    results["engine_decode_into_pinned_ms"] = statistics.median(decode_s[1:]) * 1e3
    done = []
    for i in range(repeats + 1):
        done += engine.submit(WorkItem(index=i, data=batch))
    done += engine.flush()
    results["engine_pageable"] = rate([f.t_h2d_end - f.t_h2d_start for f in done[1:]])
    engine.close()
    base = results["pinned"]["gb_s"]
    for key in PATHS:
        if key in results:
            results[key]["fraction_of_pinned"] = results[key]["gb_s"] / base
    return results


# -- parts 2 and 3 --------------------------------------------------------------------------


def _model_cfg(args: argparse.Namespace) -> dict[str, Any]:
    if args.model == "peaknet":
        return {"kind": "peaknet", "size": args.size}
    if args.model == "synthetic":
        return {"kind": "synthetic", "compute_ms": args.compute_ms}
    return {"kind": "noop"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def bench_random_mode(args: argparse.Namespace, device: torch.device, shape: tuple[int, ...]) -> dict[str, Any]:
    model = build_model(_model_cfg(args))
    params = sum(p.numel() for p in model.parameters())
    bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda"
    batch = args.batch
    engine: Engine | None = None
    notes = []
    while True:
        try:
            engine = Engine(model, device=str(device), buffers=args.buffers, autocast_bf16=bf16)
            engine.warmup((batch, *shape), np.float32, batches=2, reserve=False)
            break
        except torch.cuda.OutOfMemoryError:
            if engine is not None:
                engine.close()
            engine = None
            torch.cuda.empty_cache()
            if batch == 1:
                raise
            notes.append(f"batch {batch} did not fit in device memory")
            batch //= 2
    rng = np.random.default_rng(0)
    # random mode: batches are ready in host memory (pinned, as Engine.host_array gives);
    # they are only read by the engine, so a small ring of them is resubmitted
    ring = []
    for _ in range(args.buffers + 1):
        arr, _release = engine.host_array((batch, *shape), np.float32)
        arr[:] = rng.standard_normal(arr.shape, dtype=np.float32)
        ring.append(arr)
    done: list[Finished] = []
    t_start = now()
    i = 0
    while now() - t_start < args.seconds and i < args.max_batches:
        done += engine.submit(WorkItem(index=i, data=ring[i % len(ring)]))
        i += 1
    done += engine.flush()
    clock_error = engine.clock_error_s
    engine.close()
    wall = done[-1].t_d2h_end - done[0].t_h2d_start
    compute = [(f.t_compute_start, f.t_compute_end) for f in done]
    stage = {
        name: [(getattr(f, f"t_{name}_end") - getattr(f, f"t_{name}_start")) * 1e3 for f in done]
        for name in ("h2d", "compute", "d2h")
    }
    overlaps = 0
    for f in done:
        if any(
            g.buffer != f.buffer
            and min(f.t_h2d_end, g.t_compute_end) > max(f.t_h2d_start, g.t_compute_start)
            for g in done[max(0, f.index - args.buffers - 1) : f.index + args.buffers + 1]
        ):
            overlaps += 1
    events = sum(f.events for f in done)
    return {
        "model": _model_cfg(args),
        "parameters": params,
        "autocast_bf16": bf16,
        "buffers": args.buffers,
        "batch": batch,
        "shape": [batch, *shape],
        "notes": notes,
        "batches": len(done),
        "events": events,
        "wall_s": wall,
        "samples_per_s": events / wall,
        "gpu_busy_fraction": union_seconds(compute) / wall,
        "stage_ms": {
            name: {"median": statistics.median(v), "p95": _percentile(v, 0.95), "max": max(v)}
            for name, v in stage.items()
        },
        "h2d_gb_s_median": (batch * math.prod(shape) * 4) / (statistics.median(stage["h2d"]) / 1e3) / 1e9,
        "overlap": {
            "h2d_intervals": len(done),
            "h2d_overlapping_compute_of_other_buffer": overlaps,
            "share": overlaps / len(done),
        },
        "clock_error_s": clock_error,
        "calibration": getattr(model, "calibration", None) or None,
        "_finished": done,
    }


def plot_timeline(done: list[Finished], path: Path, title: str, window: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = max(0, len(done) // 2 - window // 2)
    part = done[mid : mid + window]
    t0 = part[0].t_h2d_start
    lanes = {"h2d": 2, "compute": 1, "d2h": 0}
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(12, 3.2))
    for iv in busy_intervals(part):
        ax.broken_barh(
            [((iv.t_start - t0) * 1e3, max((iv.t_end - iv.t_start) * 1e3, 0.05))],
            (lanes[iv.stream] - 0.35, 0.7),
            facecolors=colors(iv.buffer % 10),
            edgecolors="black",
            linewidth=0.4,
        )
        if iv.stream == "compute":
            ax.text((iv.t_start - t0) * 1e3, lanes[iv.stream], f" {iv.batch_index}", va="center", fontsize=7)
    ax.set_yticks(list(lanes.values()), [f"{k} stream" for k in lanes])
    ax.set_xlabel("ms (colour = buffer; number = batch)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    h2d = results["h2d"]
    lines = [
        f"Device: **{results['device']}**",
        "",
        f"H2D of one batch ({h2d['bytes'] / 2**20:.1f} MiB){' - CPU: host memcpy, no bus' if results['device_type'] == 'cpu' else ''}",
        "",
        "| path | median ms | best ms | GB/s (median) | fraction of pinned |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, label in PATHS.items():
        if key not in h2d:
            continue
        r = h2d[key]
        lines.append(
            f"| {label} | {r['ms']:.2f} | {r['best_ms']:.2f} | {r['gb_s']:.2f} | {r['fraction_of_pinned']:.2f} |"
        )
    lines += [
        "",
        f"Decode into pinned: {h2d['decode_how']}, {h2d['engine_decode_into_pinned_ms']:.2f} ms per batch (parse stage, not H2D)",
        "",
    ]
    r = results["random_mode"]
    lines += [
        f"Random mode: {r['model']} ({r['parameters'] / 1e6:.1f} M parameters), batch {r['shape']}, "
        f"{r['buffers']} buffers, bf16 autocast {r['autocast_bf16']}{' - ' + '; '.join(r['notes']) if r['notes'] else ''}",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| batches / events | {r['batches']} / {r['events']} |",
        f"| wall | {r['wall_s']:.2f} s |",
        f"| throughput | {r['samples_per_s']:.1f} samples/s |",
        f"| GPU busy (union of compute / wall) | {100 * r['gpu_busy_fraction']:.1f} % |",
    ]
    for name, s in r["stage_ms"].items():
        lines.append(f"| {name} ms median / p95 / max | {s['median']:.2f} / {s['p95']:.2f} / {s['max']:.2f} |")
    o = r["overlap"]
    lines += [
        f"| H2D bandwidth of the engine's stage (median) | {r['h2d_gb_s_median']:.2f} GB/s |",
        f"| H2D intervals overlapping another buffer's compute | {o['h2d_overlapping_compute_of_other_buffer']} of {o['h2d_intervals']} ({100 * o['share']:.0f} %) |",
        f"| host/GPU clock alignment error (worst) | {r['clock_error_s'] * 1e6:.1f} us |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="directory for results.json and timeline.png")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--batch", type=int, default=16, help="events per batch (default 16)")
    p.add_argument("--shape", default="1,1920,1920", help="per-event shape C,H,W (default 1,1920,1920)")
    p.add_argument("--model", choices=("peaknet", "synthetic", "noop"), default="peaknet")
    p.add_argument("--size", default="production", help="peaknet size: tiny|small|base|production")
    p.add_argument("--compute-ms", type=float, default=50.0, help="synthetic model: ms per batch")
    p.add_argument("--buffers", type=int, default=2, help="N-way buffering (default 2)")
    p.add_argument("--seconds", type=float, default=20.0, help="random-mode duration (default 20)")
    p.add_argument("--max-batches", type=int, default=100_000, help="random-mode bound on batches")
    p.add_argument("--repeats", type=int, default=10, help="H2D measurements per path (default 10)")
    p.add_argument("--bf16", dest="bf16", action="store_true", default=None, help="bf16 autocast (default on CUDA)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    args = p.parse_args(argv)
    try:
        shape = tuple(int(s) for s in args.shape.split(","))
        if not shape or min(shape) < 1 or args.batch < 1:
            raise ValueError
    except ValueError:
        print(f"bench_gpu: --shape {args.shape!r} / --batch {args.batch} must be positive integers", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# bench_gpu on {describe(device)}", flush=True)
    if device.type == "cpu":
        print(
            "CPU run: checks that the script works. Stage overlap is real (threads); bandwidths are "
            "host memcpy, not PCIe/NVLink, and on a shared machine torch's multi-threaded copies "
            "wait for busy cores, so the CPU H2D figures mean little.",
            flush=True,
        )

    batch = np.random.default_rng(1).standard_normal((args.batch, *shape), dtype=np.float32)
    print("part 1: H2D paths ...", flush=True)
    h2d = bench_h2d(device, batch, args.repeats)
    del batch
    print("part 2/3: random mode ...", flush=True)
    random_mode = bench_random_mode(args, device, shape)
    done = random_mode.pop("_finished")
    results = {
        "device": describe(device),
        "device_type": device.type,
        "argv": sys.argv[1:] if argv is None else argv,
        "h2d": h2d,
        "random_mode": random_mode,
    }
    table = markdown(results)
    print(table)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plot_timeline(
        done,
        args.out / "timeline.png",
        f"{describe(device)}\n{random_mode['model']} batch {random_mode['shape']}, {random_mode['buffers']} buffers",
    )
    (args.out / "results.md").write_text(table + "\n")
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}, {args.out / 'timeline.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
