"""The anchor for socket throughput: what this host moves over loopback with no
framework at all, so every simstream figure can be read as a share of it.

Three baselines, measured in one run:
- ``memcpy``: one thread copying a buffer of the message size (numpy), the
  ceiling for any path that copies each byte once;
- ``tcp``: plain TCP, one sender process and one receiver process per stream
  (``sendall`` of a preallocated buffer, ``recv_into`` a preallocated buffer),
  N streams in parallel;
- ``zmq``: the same shape with pyzmq PUSH/PULL (one socket pair per stream,
  zero-copy sends), the transport LCLStreamer uses; skipped when pyzmq is absent.

    python bench/bench_plain_socket.py --streams 1,2,4 --msg-mib 8 --seconds 3

Prints a table of GB/s per case and writes ``--json`` if given. Each figure is
the bytes the receivers got divided by the time from the first to the last
receiver's end, so a slow stream counts against the total.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._machine import cpu_model  # noqa: E402

SOCK_BUF = 8 << 20


def memcpy_gbps(nbytes: int, seconds: float) -> float:
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        np.copyto(dst, src)
        done += nbytes
    return done / (time.perf_counter() - t0) / 1e9


def _tcp_sender(port: int, nbytes: int, seconds: float) -> None:
    buf = bytearray(os.urandom(1024) * (nbytes // 1024))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
        s.sendall(nbytes.to_bytes(8, "little"))
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            s.sendall(buf)


def _tcp_receiver(lsock: socket.socket, out: Any) -> None:
    conn, _ = lsock.accept()
    with conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
        head = conn.recv(8, socket.MSG_WAITALL)
        nbytes = int.from_bytes(head, "little")
        view = memoryview(bytearray(nbytes))
        got, t0 = 0, time.perf_counter()
        while True:
            n = conn.recv_into(view, nbytes)
            if n == 0:
                break
            got += n
        out.put((got, t0, time.perf_counter()))


def _zmq_sender(port: int, nbytes: int, seconds: float) -> None:
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDBUF, SOCK_BUF)
    s.setsockopt(zmq.SNDHWM, 4)
    s.connect(f"tcp://127.0.0.1:{port}")
    buf = np.frombuffer(os.urandom(1024) * (nbytes // 1024), dtype=np.uint8)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        s.send(buf, copy=False)
    s.send(b"")
    s.close(linger=-1)
    ctx.term()


def _zmq_receiver(port: int, ready: Any, out: Any) -> None:
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVBUF, SOCK_BUF)
    s.setsockopt(zmq.RCVHWM, 4)
    s.bind(f"tcp://127.0.0.1:{port}")
    ready.put(True)
    got, t0 = 0, None
    while True:
        frame = s.recv(copy=False)
        if t0 is None:
            t0 = time.perf_counter()
        n = len(frame.buffer)
        if n == 0:
            break
        got += n
    out.put((got, t0 or time.perf_counter(), time.perf_counter()))
    s.close(linger=0)
    ctx.term()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gbps(results: list[tuple[int, float, float]]) -> float:
    total = sum(r[0] for r in results)
    span = max(r[2] for r in results) - min(r[1] for r in results)
    return total / span / 1e9 if span > 0 else 0.0


def tcp_gbps(streams: int, nbytes: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = []
    for _ in range(streams):
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        port = lsock.getsockname()[1]
        procs.append(ctx.Process(target=_tcp_receiver, args=(lsock, out)))
        procs.append(ctx.Process(target=_tcp_sender, args=(port, nbytes, seconds)))
        procs[-2].start()
        lsock.close()
        procs[-1].start()
    results = [out.get(timeout=seconds + 60) for _ in range(streams)]
    for p in procs:
        p.join(timeout=30)
    return _gbps(results)


def zmq_gbps(streams: int, nbytes: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    out, ready = ctx.Queue(), ctx.Queue()
    procs = []
    for _ in range(streams):
        port = _free_port()
        recv = ctx.Process(target=_zmq_receiver, args=(port, ready, out))
        recv.start()
        ready.get(timeout=60)
        procs += [recv, ctx.Process(target=_zmq_sender, args=(port, nbytes, seconds))]
        procs[-1].start()
    results = [out.get(timeout=seconds + 60) for _ in range(streams)]
    for p in procs:
        p.join(timeout=30)
    return _gbps(results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="1,2,4", help="comma-separated stream counts")
    ap.add_argument("--msg-mib", type=float, default=8.0, help="message (send buffer) size")
    ap.add_argument("--seconds", type=float, default=3.0, help="send time per case")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    nbytes = int(args.msg_mib * (1 << 20)) // 1024 * 1024
    counts = [int(x) for x in args.streams.split(",")]
    try:
        import zmq  # noqa: F401

        have_zmq = True
    except ImportError:
        have_zmq = False
    rows: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "msg_bytes": nbytes,
        "memcpy_gbps": memcpy_gbps(nbytes, args.seconds),
        "tcp_gbps": {},
        "zmq_gbps": {},
    }
    for n in counts:
        rows["tcp_gbps"][n] = tcp_gbps(n, nbytes, args.seconds)
        if have_zmq:
            rows["zmq_gbps"][n] = zmq_gbps(n, nbytes, args.seconds)
    print(f"machine: {rows['machine']['cpu']}, {rows['machine']['cores']} cores")
    print(f"message {nbytes / (1 << 20):.1f} MiB, {args.seconds:g} s per case")
    print(f"one-thread memcpy: {rows['memcpy_gbps']:.2f} GB/s")
    print("streams  tcp GB/s  zmq GB/s  zmq/tcp")
    for n in counts:
        t = rows["tcp_gbps"][n]
        z = rows["zmq_gbps"].get(n)
        zs = f"{z:8.2f}  {z / t:7.2f}" if z is not None else "       -        -"
        print(f"{n:7d}  {t:8.2f}  {zs}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
