"""The fast layout's receive path alone: socket -> host buffer -> parsed batch, per layout.

One pyzmq PUSH sender process sends emitter-like messages (HDF5, uncompressed,
``--batch`` x ``--shape`` float32) over loopback; this process receives and
parses each one into a batch, with nothing after the parse (the batch's buffer
goes straight back to a recycling pool, as the engine's does after its H2D):

- ``zmq``: ``pipeline.receiver.ZmqReceiver`` (pyzmq, zero-copy frames: the kernel
  copies into libzmq's buffer) and ``Parser.parse`` decoding into a host array from
  the pool (a second copy): the production layout's receive path, and the fast
  layout's before ``IntoReceiver``;
- ``into``: ``pipeline.zmtp_into.IntoReceiver`` (each body read with one
  ``MSG_WAITALL`` ``recv_into`` a pool buffer) and ``Parser.parse(payload,
  release)`` decoding in place: the batch is a view of that buffer, one copy in all;
- ``into-chunks``: the same reading what each socket buffer holds per call
  (``waitall=False``: a hundred calls, and GIL hand-offs, per large message).

``--neighbour``: a thread in the receiving process runs small Python calls
(standing in for an inference loop launching kernels) throughout; each case
gives the share of its rate alone (measured before every round) that it kept.

    python bench/bench_fast_receive.py [--batch 8] [--shape 1,512,512] [--mib 1200]
        [--rounds 3] [--json FILE]

Per case: GB/s (bytes after the first message over the time from its arrival to
the last one's parse) and the receiving process's CPU seconds (user + system,
libzmq's I/O thread included) per GB, a figure a busy machine disturbs less. The
layouts alternate within each round; the table gives medians and the ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._machine import cpu_model  # noqa: E402

KINDS = ("zmq", "into", "into-chunks")


def _source(batch: int, shape: list[int]) -> Any:
    from simstream.profile import Source

    return Source(batch_size=batch, shape=shape, dtype="float32", content="constant",
                  format="hdf5", compression="none", total_events=None, pool=2)


def _sender(port: int, count: int, batch: int, shape: list[int]) -> None:
    import zmq

    from simstream.payload import MessageFactory

    factory = MessageFactory(_source(batch, shape), rank=0, seed=1)
    msgs = [factory.message(i).payload for i in range(2)]
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 4)
    s.connect(f"tcp://127.0.0.1:{port}")
    for i in range(count):
        s.send(msgs[i % 2], copy=False)
    s.close(linger=-1)
    ctx.term()


class _Pool:
    """Recycling host buffers by shape, as the engine's pool (unpinned here)."""

    def __init__(self) -> None:
        self.free: dict[tuple[Any, ...], list[np.ndarray]] = {}

    def __call__(self, shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Callable[[], None]]:
        free = self.free.setdefault((tuple(shape), np.dtype(dtype).str), [])
        arr = free.pop() if free else np.empty(shape, dtype)
        return arr, lambda: free.append(arr)


class _Neighbour:
    """Small Python calls in a thread, counted (an inference loop's launches)."""

    def __init__(self) -> None:
        import threading

        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _call(x: int) -> int:
        return (x * 7 + 3) % 1013

    def _run(self) -> None:
        x = 0
        while not self.stop.is_set():
            for _ in range(1000):
                x = self._call(x)
            self.count += 1000

    def __enter__(self) -> _Neighbour:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def neighbour_alone(seconds: float = 1.0) -> float:
    """The neighbour's calls per second with nothing else in the process."""
    with _Neighbour() as nb:
        time.sleep(0.2)
        c0, t0 = nb.count, time.perf_counter()
        time.sleep(seconds)
        return (nb.count - c0) / (time.perf_counter() - t0)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_case(kind: str, count: int, batch: int, shape: list[int],
             neighbour: bool = False) -> dict[str, float]:
    from simstream.payload import wire_fields
    from simstream.pipeline.parse import Parser
    from simstream.pipeline.receiver import ZmqReceiver
    from simstream.pipeline.zmtp_into import IntoReceiver
    from simstream.runner.procs import free_port

    pool = _Pool()
    parser = Parser(wire_fields(_source(batch, shape)), host_alloc=pool)
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    rx: Any = (ZmqReceiver(url, "bind", 1 << 40, rcvhwm=4) if kind == "zmq"
               else IntoReceiver(url, 1 << 40, pool, waitall=kind == "into"))
    nb = _Neighbour() if neighbour else None
    sender = mp.get_context("spawn").Process(target=_sender, args=(port, count, batch, shape))
    sender.start()
    got, nbytes = 0, 0
    t0 = c0 = 0.0
    n0 = 0
    deadline = time.monotonic() + 300
    if nb is not None:
        nb.__enter__()
    try:
        while got < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: {got} of {count} messages in 300 s")
            msg = rx.recv(1.0)
            if msg is None:
                continue
            if got == 0:
                t0, c0 = time.perf_counter(), _cpu_s()
                n0 = nb.count if nb is not None else 0
            else:
                nbytes += msg.nbytes
            pb = (parser.parse(msg.payload, msg.release) if msg.release is not None
                  else parser.parse(msg.payload))
            if pb.release is not None:
                pb.release()
            got += 1
        t1, c1 = time.perf_counter(), _cpu_s()
        n1 = nb.count if nb is not None else 0
    finally:
        if nb is not None:
            nb.__exit__()
        rx.close()
        sender.join(30)
        if sender.is_alive():
            sender.kill()
    out = {"gbps": nbytes / (t1 - t0) / 1e9, "cpu_s_per_gb": (c1 - c0) / (nbytes / 1e9)}
    if nb is not None:
        out["neighbour_per_s"] = (n1 - n0) / (t1 - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shape", default="1,512,512")
    ap.add_argument("--mib", type=float, default=1200.0, help="MiB sent per case")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--neighbour", action="store_true",
                    help="a thread of small Python calls beside the receiver; the share of "
                         "its rate alone it keeps")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    try:
        shape = [int(x) for x in args.shape.split(",")]
    except ValueError:
        ap.error(f"--shape {args.shape!r}: comma-separated integers")
    if args.batch < 1 or min(shape) < 1 or args.rounds < 1 or args.mib <= 0:
        ap.error("--batch, --shape, --rounds and --mib must be positive")
    msg_bytes = args.batch * 4 * int(np.prod(shape))
    count = max(20, int(args.mib * (1 << 20) / msg_bytes))
    runs = []
    for r in range(args.rounds):
        alone = neighbour_alone() if args.neighbour else None
        for kind in KINDS:
            row = {"round": r, "kind": kind,
                   **run_case(kind, count, args.batch, shape, args.neighbour)}
            if alone:
                row["neighbour_kept"] = row["neighbour_per_s"] / alone
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "batch": args.batch, "shape": shape, "message_bytes": msg_bytes, "messages": count,
        "rounds": args.rounds, "runs": runs,
    }
    for kind in KINDS:
        mine = [x for x in runs if x["kind"] == kind]
        keys = ("gbps", "cpu_s_per_gb") + (("neighbour_kept",) if args.neighbour else ())
        summary[kind] = {k: statistics.median(x[k] for x in mine) for k in keys}
    summary["into_over_zmq_gbps"] = summary["into"]["gbps"] / summary["zmq"]["gbps"]
    summary["into_over_zmq_cpu"] = summary["into"]["cpu_s_per_gb"] / summary["zmq"]["cpu_s_per_gb"]
    print(f"machine: {summary['machine']['cpu']}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{count} messages of {args.batch} x {tuple(shape)} float32 ({msg_bytes / 1e6:.1f} MB) "
          f"per case, {args.rounds} round(s), medians")
    names = {"zmq": "zmq (pyzmq frames + decode copy)", "into": "into (one MSG_WAITALL read)",
             "into-chunks": "into-chunks (a read per buffer)"}
    print(f"{'receive path':34s}  GB/s   receiver CPU s/GB"
          + ("   neighbour kept" if args.neighbour else ""))
    for kind in KINDS:
        row = summary[kind]
        print(f"{names[kind]:34s}{row['gbps']:6.2f}  {row['cpu_s_per_gb']:8.3f}"
              + (f"          {row['neighbour_kept']:6.2f}" if args.neighbour else ""))
    print(f"into / zmq: {summary['into_over_zmq_gbps']:.2f} x the rate, "
          f"{summary['into_over_zmq_cpu']:.2f} x the CPU per GB")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
