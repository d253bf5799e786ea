"""Fuzz the consumer's parse path (simstream.codec.decode with the consumer's checks,
``pipeline.parse.Parser``) with generated and mutated messages, and measure what
``parse_isolation: process`` costs per message.

Inputs: good HDF5 and npz messages (every compression, several shapes and dtypes)
mutated by seeded random edits (bit flips, cuts, inserts, deletions, size fields
set absurd, splices of two messages), random bytes behind each magic, and crafted
hostile files. Each goes through ``Parser.parse``; an outcome is ``processed`` or
the quarantine reason's category. A Python exception other than ParseError, or a
crash, is a failure (the run stops and says so).

Prints (and writes with --json) the count, outcomes by reason, max RSS, the
slowest input and the isolation overhead. Bounded by --count and --max-seconds.
--start N skips the first N inputs (generated, not parsed: input numbers stay
those of a full run). --bitshuffle-headers F makes a fraction F of the inputs
edits aimed at what hdf5plugin's Bitshuffle filter trusts (chunk header, block
sizes, cd_values, filter id; see simstream/codec/_bitshuffle_guard.py); 0, the
default, keeps the input sequence of earlier runs.

    .venv/bin/python bench/fuzz_decode.py --count 100000 --json bench/results/fuzz_decode.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import random
import resource
import struct
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simstream import codec  # noqa: E402
from simstream.pipeline.parse import ParseError, Parser  # noqa: E402

FIELDS = {"detector_data": "/data/data", "timestamp": "/data/timestamp",
          "simstream_sequence": "/simstream/sequence", "simstream_rank": "/simstream/rank"}


def seeds(rng: random.Random) -> list[bytes]:
    out = []
    for fmt, comps in (("hdf5", ("none", "gzip", "gzip_with_shuffle", "bitshuffle_lz4",
                                 "bitshuffle_zstd")), ("npz", ("none", "gzip"))):
        for comp in comps:
            for shape, dtype in (((1, 16, 16), "float32"), ((16, 16), "uint16"),
                                 ((1, 8, 8), "float64")):
                b = rng.randint(1, 4)
                arrays = {
                    "detector_data": np.asarray(
                        np.random.default_rng(rng.randrange(1 << 30)).random((b, *shape)) * 100,
                        dtype=dtype),
                    "timestamp": np.arange(b, dtype=np.float64),
                    "simstream_sequence": np.full(b, rng.randrange(1000)),
                    "simstream_rank": np.zeros(b, np.int64),
                }
                if fmt == "npz":
                    out.append(codec.encode(arrays, format="npz", compression=comp))
                else:
                    out.append(codec.encode(arrays, fields=FIELDS, compression=comp))
    return out


ABSURD = [b"\xff" * 8, struct.pack("<Q", 2**62), struct.pack("<Q", 0), struct.pack(">Q", 2**40),
          struct.pack("<I", 0xFFFFFFF0) * 2]


def mutate(rng: random.Random, pool: list[bytes]) -> tuple[str, bytes]:
    kind = rng.random()
    if kind < 0.05:
        magic = rng.choice([b"\x89HDF\r\n\x1a\n", b"PK\x03\x04", b""])
        return "random", magic + rng.randbytes(rng.randint(0, 512))
    buf = bytearray(rng.choice(pool))
    ops = []
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(("flip", "flip", "cut", "insert", "delete", "absurd", "splice"))
        ops.append(op)
        pos = rng.randrange(max(1, len(buf)))
        if op == "flip" and buf:
            buf[pos] ^= rng.randint(1, 255)
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = rng.randbytes(rng.randint(1, 32))
        elif op == "delete":
            del buf[pos:pos + rng.randint(1, 256)]
        elif op == "absurd":
            w = rng.choice(ABSURD)
            buf[pos:pos + len(w)] = w
        elif op == "splice":
            other = rng.choice(pool)
            cut = rng.randrange(max(1, len(other)))
            buf = buf[:pos] + bytearray(other[cut:])
    return "+".join(ops), bytes(buf)


def bitshuffle_fields(msg: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every field the Bitshuffle filter trusts in a good message:
    each chunk's uint64 total and uint32 block size, each block's uint32 compressed
    size, the filter's id, cd_values count and cd_values; and each chunk's stored
    size and filter mask in the chunk index (libhdf5 trusts those). Empty if not
    Bitshuffle."""
    out: list[tuple[int, int]] = []
    infos: list[tuple[int, int]] = []
    keys: list[bytes] = []
    with h5py.File(io.BytesIO(msg), "r") as fh:
        if "data/data" not in fh:
            return out
        dsid = fh["data/data"].id
        dcpl = dsid.get_create_plist()
        if dcpl.get_nfilters() != 1 or dcpl.get_filter(0)[0] != 32008:
            return out
        _fid, _flags, cd, name = dcpl.get_filter(0)
        dsid.chunk_iter(lambda c: infos.append((c.byte_offset, c.size)))
        dsid.chunk_iter(lambda c: keys.append(  # a v1 B-tree key: size, mask, offsets
            struct.pack("<II", c.size, c.filter_mask)
            + b"".join(struct.pack("<Q", x) for x in (*c.chunk_offset, 0))))
    for key in keys:
        at = msg.find(key)
        if at >= 0:
            out += [(at, 4), (at + 4, 4)]
    for off, _size in infos:
        out += [(off, 8), (off + 8, 4)]
        total, block = struct.unpack_from(">QI", msg, off)
        size, block = total // cd[2], block // cd[2]
        pos = off + 12
        for _ in range(size // block + (1 if size % block >= 8 else 0)):
            out.append((pos, 4))
            pos += 4 + struct.unpack_from(">I", msg, pos)[0]
    at = msg.find(name)  # the filter's entry: id, name length, flags, cd count, name
    cd_at = msg.find(struct.pack(f"<{len(cd)}I", *cd))
    if at > 8 and cd_at > 0:
        out += [(at - 8, 2), (at - 2, 2)] + [(cd_at + 4 * i, 4) for i in range(len(cd))]
    return out


def mutate_bitshuffle(rng: random.Random, targets: list[tuple[bytes, list[tuple[int, int]]]]
                      ) -> tuple[str, bytes]:
    msg, fields = rng.choice(targets)
    buf = bytearray(msg)
    ops = []
    for _ in range(rng.randint(1, 3)):
        off, width = rng.choice(fields)
        old = int.from_bytes(buf[off:off + width], "big")
        kind = rng.choice(("xor", "value", "near"))
        if kind == "xor":
            buf[off + rng.randrange(width)] ^= rng.randint(1, 255)
        else:
            top = (1 << (8 * width)) - 1
            value = (rng.choice([0, 1, 8, top, top >> 1, top >> 1 ^ top, rng.randint(0, top)])
                     if kind == "value" else max(0, min(top, old + rng.randint(-64, 64))))
            buf[off:off + width] = value.to_bytes(width, "big")
        ops.append(f"bshuf-{kind}")
    return "+".join(ops), bytes(buf)


def fuzz(count: int, max_seconds: float, seed: int, isolation: str = "process",
         crash_dir: Path | None = None, start: int = 0,
         bitshuffle_headers: float = 0.0) -> dict[str, object]:
    rng = random.Random(seed)
    pool = seeds(rng)
    targets = [(m, f) for m in pool if m[:8] == b"\x89HDF\r\n\x1a\n"
               for f in [bitshuffle_fields(m)] if f]
    aimed = random.Random(seed + 1)  # a separate stream: 0 leaves the inputs as they were
    for _ in range(start):
        mutate(rng, pool)
    # in a worker process a native crash (libhdf5) costs one input, as in the consumer
    parser = Parser({"detector_data": "/data/data"}, ["detector_data"], None,
                    isolation=isolation, timeout_s=30.0)
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    slowest = (0.0, "", 0)
    t0 = time.perf_counter()
    n = 0
    failures: list[str] = []
    while n < count and time.perf_counter() - t0 < max_seconds:
        if bitshuffle_headers and aimed.random() < bitshuffle_headers:
            desc, payload = mutate_bitshuffle(aimed, targets)
        else:
            desc, payload = mutate(rng, pool)
        t = time.perf_counter()
        try:
            parser.parse(payload)
            outcomes["processed"] += 1
        except ParseError as e:
            reason = str(e)
            outcomes[reason.split(":")[0]] += 1
            reasons[reason[:60]] += 1
            if reason.startswith(("crash", "timeout")) and crash_dir is not None:
                crash_dir.mkdir(parents=True, exist_ok=True)
                (crash_dir / f"{start + n:06d}.bin").write_bytes(payload)
                (crash_dir / f"{start + n:06d}.txt").write_text(f"{desc}\n{reason}\n")
        except Exception as e:  # anything else would take the consumer's parser down
            failures.append(f"{desc}: {type(e).__name__}: {e}"[:300])
            outcomes["FAILURE"] += 1
        dt = time.perf_counter() - t
        if dt > slowest[0]:
            slowest = (dt, desc, len(payload))
        n += 1
    wall = time.perf_counter() - t0
    parser.close()
    return {
        "inputs": n, "start": start, "bitshuffle_headers": bitshuffle_headers,
        "isolation": isolation, "wall_s": round(wall, 1), "per_input_us": round(wall / max(n, 1) * 1e6, 1),
        "outcomes": dict(outcomes.most_common()),
        "top_reasons": dict(reasons.most_common(12)),
        "failures": failures[:20],
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # the largest of the (waited-for) worker processes
        "max_rss_worker_mib": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "slowest": {"s": round(slowest[0], 4), "mutation": slowest[1], "nbytes": slowest[2]},
    }


def isolation_overhead(repeats: int) -> dict[str, object]:
    """Per-message parse time in the thread vs in a worker process (parse_isolation)."""
    out: dict[str, object] = {}
    for label, shape in (("small 2x1x16x16 float32", (2, 1, 16, 16)),
                         ("8x1x512x512 float32 (8 MiB)", (8, 1, 512, 512))):
        arrays = {"detector_data": np.ones(shape, np.float32),
                  "timestamp": np.arange(shape[0], dtype=np.float64)}
        msg = codec.encode(arrays, fields=FIELDS)
        times = {}
        for iso in ("none", "process"):
            p = Parser(FIELDS, ["detector_data"], None, isolation=iso)
            try:
                for _ in range(5):
                    p.parse(msg)
                n = repeats if shape[0] == 2 else max(20, repeats // 20)
                t = time.perf_counter()
                for _ in range(n):
                    p.parse(msg)
                times[iso] = (time.perf_counter() - t) / n
            finally:
                p.close()
        out[label] = {"thread_us": round(times["none"] * 1e6, 1),
                      "process_us": round(times["process"] * 1e6, 1),
                      "overhead_us": round((times["process"] - times["none"]) * 1e6, 1)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--isolation-repeats", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--in-process", action="store_true",
                    help="decode in this process (a native crash ends the run)")
    ap.add_argument("--crash-dir", type=Path, default=None,
                    help="save inputs that crashed or hung a worker here")
    ap.add_argument("--start", type=int, default=0,
                    help="skip this many inputs first (input numbers as in a full run)")
    ap.add_argument("--bitshuffle-headers", type=float, default=0.0,
                    help="fraction of inputs aimed at the Bitshuffle filter's headers")
    args = ap.parse_args()
    if args.count < 1 or args.max_seconds <= 0:
        ap.error("--count and --max-seconds must be positive")
    if args.start < 0 or not 0.0 <= args.bitshuffle_headers <= 1.0:
        ap.error("--start must be >= 0 and --bitshuffle-headers in 0..1")
    res = fuzz(args.count, args.max_seconds, args.seed,
               "none" if args.in_process else "process", args.crash_dir, args.start,
               args.bitshuffle_headers)
    res["isolation_overhead"] = isolation_overhead(args.isolation_repeats)
    res["machine"] = f"{platform.machine()} {platform.processor() or ''} " \
                     f"Python {platform.python_version()}".strip()
    print(json.dumps(res, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
