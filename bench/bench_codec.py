"""Codec benchmark: the fast HDF5 paths against the real serializer's way, same run.

    .venv/bin/python bench/bench_codec.py [--repeats 7] [--shape 1,1920,1920] [--batch 8]

One batch as simstream sends it (peaks images plus timestamp, wavelength and the
simstream fields), timed side by side in one process:

- encode: ``codec.encode`` vs h5py writing into ``io.BytesIO`` (LCLStreamer's
  HDF5BinarySerializer) vs a plain numpy copy of the same number of bytes into a
  fresh array (a reference for one pass over memory);
- decode: ``codec.decode`` (zero-copy views; with its layout cache cold and warm;
  with ``alloc``: one copy into preallocated memory) vs h5py reading every dataset
  from ``io.BytesIO``;
- for information: each compression and npz, and pool-mode messages;
- ``--checks``: what decoding's safety checks cost (docs in BENCHMARKS.md, "Fault
  campaign"), on its own 8 x 1 x 512 x 512 float32 batch, peaks and uniform random
  content: a bitshuffle_lz4 message decoded with the checks (``codec.decode``) vs
  the same decode with ``_hdf5._check_filters`` replaced by a no-op (the baseline);
  and gzip / gzip_with_shuffle decoded by the codec's own zlib inflate
  (``_read_deflated``, exact sizes checked) vs libhdf5 inflating the same message
  with neither that path nor the checks (the baseline). Ratios are codec / baseline
  (above 1: the checks cost time).

Times are medians over the repeats (best in brackets); ratios are against the
baseline measured in this run. Prints a markdown table and the machine.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import h5py
import hdf5plugin
import numpy as np
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from simstream import codec
from simstream.codec import _hdf5
from simstream.payload import MessageFactory
from simstream.profile import Source


def machine() -> str:
    model = cpu_model()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {cores} cores usable (load average {load}); {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, numpy {np.__version__}, h5py {h5py.__version__} "
        f"(HDF5 {h5py.version.hdf5_version}), hdf5plugin {hdf5plugin.version}"
    )


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median, best) seconds over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def bytesio_encode(arrays: dict[str, np.ndarray], fields: dict[str, str], compression: str = "none") -> bytes:
    opts = _hdf5.filter_options(compression, 3)
    with io.BytesIO() as b:
        with h5py.File(b, "w") as fh:
            for name, a in arrays.items():
                fh.create_dataset(fields[name], shape=a.shape, dtype=a.dtype, chunks=(1, *a.shape[1:]), data=a, **opts)
        return b.getvalue()


def bytesio_decode(buf: bytes, fields: dict[str, str]) -> dict[str, np.ndarray]:
    with h5py.File(io.BytesIO(buf), "r") as fh:
        return {name: fh[path][()] for name, path in fields.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shape", default="1,1920,1920", help="per-event shape")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skip-compressed", action="store_true")
    ap.add_argument("--checks", action="store_true",
                    help="only the decode checks' cost (Bitshuffle guard, own gzip inflate)")
    ap.add_argument("--checks-repeats", type=int, default=300)
    args = ap.parse_args()
    if args.checks:
        checks_cost(args.checks_repeats)
        return
    shape = [int(x) for x in args.shape.split(",")]
    source = Source(batch_size=args.batch, shape=shape, dtype=args.dtype, total_events=None)
    factory = MessageFactory(source)
    arrays = factory.batch(0)
    fields = factory.fields
    raw = sum(a.nbytes for a in arrays.values())
    mb = raw / 1e6
    n = args.repeats
    rows: list[tuple[str, str, float, float, str]] = []

    def row(what: str, how: str, t: tuple[float, float], base: float | None = None) -> None:
        ratio = f"{base / t[0]:.1f}x" if base else ""
        rows.append((what, how, t[0], t[1], ratio))

    print(f"machine: {machine()}", file=sys.stderr)
    # encode
    buf = codec.encode(arrays, fields=fields)
    t_bio = timed(lambda: bytesio_encode(arrays, fields), n)
    t_fast = timed(lambda: codec.encode(arrays, fields=fields), n)
    src = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays.values()])

    def numpy_copy() -> np.ndarray:
        out = np.empty(len(buf), np.uint8)
        out[: src.size] = src
        return out

    t_np = timed(numpy_copy, n)
    row("encode, uncompressed", "h5py -> io.BytesIO (baseline)", t_bio, t_bio[0])
    row("encode, uncompressed", "codec.encode (template)", t_fast, t_bio[0])
    row("encode, uncompressed", "reference: numpy copy of the same bytes into a fresh array", t_np, t_bio[0])
    # decode
    out_arrays = {k: np.empty(a.shape, a.dtype) for k, a in arrays.items()}
    t_dbio = timed(lambda: bytesio_decode(buf, fields), n)

    def cold() -> None:
        _hdf5._seen.clear()
        codec.decode(buf, fields=fields)

    t_cold = timed(cold, n)
    t_warm = timed(lambda: codec.decode(buf, fields=fields), n)
    t_alloc = timed(lambda: codec.decode(buf, fields=fields, alloc=lambda s, d: out_arrays[_key(out_arrays, s, d)]), n)
    row("decode, uncompressed", "h5py <- io.BytesIO (baseline)", t_dbio, t_dbio[0])
    row("decode, uncompressed", "codec.decode, zero-copy, layout parsed by h5py", t_cold, t_dbio[0])
    row("decode, uncompressed", "codec.decode, zero-copy, layout cache hit", t_warm, t_dbio[0])
    row("decode, uncompressed", "codec.decode with alloc (one copy)", t_alloc, t_dbio[0])
    # pool mode
    pooled = MessageFactory(source.model_copy(update={"pool": 2}))
    seqs = iter(range(10**9))
    t_pool = timed(lambda: pooled.message(next(seqs)), n)
    row("pool message", "copy + rewrite seq/rank/event/timestamp", t_pool, t_bio[0])
    sizes: list[tuple[str, int, tuple[float, float], tuple[float, float]]] = []
    if not args.skip_compressed:
        reps = max(2, n // 3)
        for fmt, comp in [("hdf5", c) for c in codec.COMPRESSIONS[1:]] + [("npz", "none"), ("npz", "gzip")]:
            b = codec.encode(arrays, format=fmt, fields=fields, compression=comp)
            te = timed(lambda fmt=fmt, comp=comp: codec.encode(arrays, format=fmt, fields=fields, compression=comp), reps)
            td = timed(lambda b=b: codec.decode(b, fields=fields), reps)
            sizes.append((f"{fmt} {comp}", len(b), te, td))

    print(f"\nBatch: {args.batch} x {'x'.join(map(str, shape))} {args.dtype} peaks images + per-event fields, "
          f"{mb:.1f} MB of array data, message {len(buf) / 1e6:.1f} MB. Median of {n} (best).\n")
    print("| operation | method | ms median (best) | MB/s | vs baseline |")
    print("| --- | --- | ---: | ---: | ---: |")
    for what, how, med, best, ratio in rows:
        print(f"| {what} | {how} | {med * 1e3:.2f} ({best * 1e3:.2f}) | {mb / med:,.0f} | {ratio} |")
    if sizes:
        print("\n| format, compression | MB/message | ratio | encode MB/s | decode MB/s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        print(f"| hdf5 none | {len(buf) / 1e6:.1f} | 1.00 | {mb / t_fast[0]:,.0f} | {mb / t_warm[0]:,.0f} |")
        for name, size, te, td in sizes:
            print(f"| {name} | {size / 1e6:.1f} | {raw / size:.2f} | {mb / te[0]:,.0f} | {mb / td[0]:,.0f} |")
    print(f"\nmachine: {machine()}")
    print("command: .venv/bin/python bench/bench_codec.py " + " ".join(sys.argv[1:]))


def checks_cost(repeats: int) -> None:
    """The decode checks' cost as ratios against the unchecked decode, same run."""
    print(f"machine: {machine()}", file=sys.stderr)
    print(f"Decode checks: 8 x 1 x 512 x 512 float32 batch, median of {repeats} "
          f"(the baseline and the checked decode alternate, call by call).\n")
    print("| message | content | baseline | baseline ms | checked ms | checked / baseline |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    no_checks = mock.patch.object(_hdf5, "_check_filters", lambda *a, **k: None)
    libhdf5_inflate = mock.patch.object(_hdf5, "_read_deflated", lambda *a, **k: None)
    for content in ("peaks", "random"):
        source = Source(batch_size=8, shape=[1, 512, 512], dtype="float32", total_events=None,
                        content=content)
        factory = MessageFactory(source)
        arrays, fields = factory.batch(0), factory.fields
        cases = [("bitshuffle_lz4", "guard off (_check_filters no-op)", [no_checks]),
                 ("gzip", "libhdf5 inflates, unchecked", [no_checks, libhdf5_inflate]),
                 ("gzip_with_shuffle", "libhdf5 inflates, unchecked", [no_checks, libhdf5_inflate])]
        for comp, base_name, patches in cases:
            buf = codec.encode(arrays, fields=fields, compression=comp)
            checked = codec.decode(buf, fields=fields)
            base_times, checked_times = [], []
            for i in range(repeats + 1):  # interleaved, so load changes hit both alike
                for p in patches:
                    p.start()
                try:
                    t0 = time.perf_counter()
                    plain = codec.decode(buf, fields=fields)
                    t1 = time.perf_counter()
                finally:
                    for p in reversed(patches):
                        p.stop()
                if i == 0:  # warm-up, and the unchecked decode must give the same arrays
                    assert all(np.array_equal(plain[k], checked[k]) for k in checked), comp
                    continue
                base_times.append(t1 - t0)
                t0 = time.perf_counter()
                codec.decode(buf, fields=fields)
                checked_times.append(time.perf_counter() - t0)
            t_base = statistics.median(base_times) * 1e3
            t_checked = statistics.median(checked_times) * 1e3
            print(f"| {comp} | {content} | {base_name} | {t_base:.2f} | {t_checked:.2f} | "
                  f"{t_checked / t_base:.2f}x |")
    print(f"\nmachine: {machine()}")
    print("command: .venv/bin/python bench/bench_codec.py " + " ".join(sys.argv[1:]))


def _key(out: dict[str, np.ndarray], shape: tuple[int, ...], dtype: np.dtype) -> str:
    for k, a in out.items():
        if a.shape == shape and a.dtype == dtype:
            return k
    raise KeyError(shape)


if __name__ == "__main__":
    main()
