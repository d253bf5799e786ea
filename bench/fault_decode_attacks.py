"""Decode attacks from the fault campaign, through the consumer's decoder
with its default limits: how long each takes to be refused (or decoded) and the
process's peak RSS. Run under an address-space limit so a regression fails instead
of taking the machine:

    .venv/bin/python bench/fault_decode_attacks.py [--chunks 1000000] [--limit-gb 3]

Prints one line per attack: name, message bytes, outcome, seconds.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import resource
import time

import h5py
import numpy as np

from simstream.pipeline.config import consumer_config
from simstream.pipeline.decode import Decoder, ParseError

FIELDS = {"detector_data": "/data/data", "timestamp": "/data/timestamp",
          "simstream_sequence": "/simstream/sequence", "simstream_rank": "/simstream/rank"}


def message(bombs: list[str], chunks: int = 0, chunk_path: str = "junk/many") -> bytes:
    b = io.BytesIO()
    with h5py.File(b, "w") as f:
        f["data/timestamp"] = np.arange(8.0)
        f["simstream/sequence"] = np.full(8, 3)
        f["simstream/rank"] = np.zeros(8, np.int64)
        if "data/data" not in bombs:
            f["data/data"] = np.ones((8, 1, 64, 64), np.float32)
        for path in bombs:  # 3.6 GB each of never-written (fill-value) data
            f.create_dataset(path, shape=(8, 1, 15000, 7500), dtype="f4",
                             chunks=(1, 1, 1000, 1000))
        if chunks:
            d = f.create_dataset(chunk_path, shape=(chunks,), dtype="u1", chunks=(1,))
            d[...] = 1
    return b.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=200_000)
    ap.add_argument("--limit-gb", type=float, default=3.0)
    a = ap.parse_args()
    lim = int(a.limit_gb * (1 << 30))
    cfg = consumer_config(section={"fields": FIELDS})
    print(f"limits: decoded bytes {cfg.decoded_budget}, chunks {cfg.max_chunks}, "
          f"deadline {cfg.parse_deadline_s} s; address space {a.limit_gb} GB")
    t0 = time.monotonic()
    # built in another process, so the peak RSS below is the decoding's alone
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        flood, three, one = pool.starmap(message, [(["junk/a"], a.chunks),
                                                   (["junk/a", "junk/b", "junk/c"],),
                                                   (["data/data"],)])
    print(f"(built the messages in {time.monotonic() - t0:.1f} s)")
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    attacks = [
        ("3 fill-value datasets elsewhere", three, FIELDS),
        ("fill-value detector_data", one, FIELDS),
        (f"{a.chunks} chunks, not a field", flood, FIELDS),
        (f"{a.chunks} chunks in a field", flood, {**FIELDS, "many": "/junk/many"}),
    ]
    for name, payload, fields in attacks:
        d = Decoder(fields, ["detector_data"], None, None, cfg.decode_limits)
        t = time.monotonic()
        try:
            pb = d.parse(payload)
            out = f"processed {tuple(pb.data.shape)}"
        except ParseError as e:
            out = str(e)[:90]
        print(f"{name:34s} {len(payload):>10d} B  {time.monotonic() - t:7.3f} s  {out}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
