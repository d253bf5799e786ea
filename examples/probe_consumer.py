"""A pyzmq PULL consumer that records itself with ``simstream.probe`` (docs/probe.md).

Two threads, as a production consumer has: a receiver that takes messages off a
PULL socket, decodes them and puts them on a bounded queue (Q1), and an
inference thread that takes them off, copies them ("h2d"), runs a stand-in
model ("compute") and copies a small result back ("d2h"). The lines marked
``# probe`` are all it takes to get a run directory ``simstream diagnose`` reads.

    python examples/probe_consumer.py --out runs/probe --bind tcp://127.0.0.1:*
    simstream emit --profile steady --url tcp://127.0.0.1:PORT --count 50   # another shell
    simstream diagnose runs/probe

It prints ``listening on URL`` once bound and stops after ``--count`` messages
or ``--idle-timeout`` seconds without one (after the first).
"""

from __future__ import annotations

import argparse
import queue
import threading
import time

import numpy as np
import zmq

from simstream import codec
from simstream.probe import Probe
from simstream.records.contract import field_keys

STOP = object()


def first_int(arrays: dict[str, np.ndarray], name: str) -> int | None:
    """simstream's own per-message fields (rank, sequence); None from other producers."""
    for key in field_keys(name):
        a = arrays.get(key)
        if a is not None and a.size:
            return int(a.reshape(-1)[0])
    return None


def receive(sock: zmq.Socket, q1: queue.Queue, probe: Probe, count: int, idle_s: float) -> None:
    try:
        _receive(sock, q1, probe, count, idle_s)
    finally:
        q1.put(STOP)


def _receive(sock: zmq.Socket, q1: queue.Queue, probe: Probe, count: int, idle_s: float) -> None:
    got = 0
    while got < count:
        if not sock.poll(int(idle_s * 1000) if got else 60_000):
            break  # end of stream
        raw = sock.recv()
        n = probe.message_arrived(raw)  # probe
        got += 1
        try:
            with probe.stage("parse", n):  # probe
                arrays = codec.decode(raw)
        except codec.CodecError as e:
            probe.message_rejected(n, f"codec: {e}", raw)  # probe
            continue
        data = arrays.get("data/data", arrays.get("detector_data"))
        if data is None:
            probe.message_rejected(n, "missing field: detector_data", raw)  # probe
            continue
        probe.identify(n, first_int(arrays, "simstream_rank"),  # probe
                       first_int(arrays, "simstream_sequence"), events=len(data))
        with probe.stage("q1_put", n):  # probe
            q1.put((n, data))


def infer(q1: queue.Queue, probe: Probe, compute_ms: float) -> None:
    while True:
        t0 = probe.clock()
        item = q1.get()
        if item is STOP:
            return
        n, data = item
        probe.stage_started("q1_get", n, t=t0)  # probe
        probe.stage_ended("q1_get", n)  # probe
        with probe.stage("h2d", n):  # probe
            x = np.array(data, dtype=np.float32)
        with probe.stage("compute", n):  # probe
            time.sleep(compute_ms / 1000.0)
            y = x.reshape(len(x), -1).sum(axis=1)
        with probe.stage("d2h", n):  # probe (its end finishes the batch)
            y.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="run directory to write")
    ap.add_argument("--bind", default="tcp://127.0.0.1:12321")
    ap.add_argument("--count", type=int, default=1000, help="stop after this many messages")
    ap.add_argument("--idle-timeout", type=float, default=2.0)
    ap.add_argument("--maxsize", type=int, default=8, help="Q1 capacity (batches)")
    ap.add_argument("--compute-ms", type=float, default=5.0)
    args = ap.parse_args()

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(args.bind)
    print("listening on", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    q1: queue.Queue = queue.Queue(maxsize=args.maxsize)
    probe = Probe(args.out, device="cpu")  # probe
    probe.sample_queue(q1.qsize, maxsize=args.maxsize, interval_s=0.02)  # probe
    worker = threading.Thread(target=infer, args=(q1, probe, args.compute_ms))
    worker.start()
    try:
        receive(sock, q1, probe, args.count, args.idle_timeout)
    finally:
        worker.join()
        summary = probe.close()  # probe: writes summary.json
        sock.close(linger=0)
        ctx.term()
    print(f"{summary['received']} received, {summary['processed']} processed, "
          f"{summary['quarantined']} quarantined, lost {summary['lost']}: {args.out}")


if __name__ == "__main__":
    main()
