"""The consumer's stream receiver against a bare length-prefixed reader, in one run.

``pipeline.receiver.StreamReceiver`` frames tcp and nng with simstream's sans-IO
wire layer. This measures what that costs: for each message size, one sender
process pushes N length-prefixed messages over loopback and the receiver in this
process takes them, either

- ``bare``: a blocking socket, ``recv_into`` the 8-byte length then ``recv_into``
  a preallocated body (the least a Python reader can do per message), or
- ``tcp`` / ``nng``: ``StreamReceiver.recv`` (selector loop, wire framing, a new
  bytes object per message, arrival stamps).

    python bench/bench_receiver.py --sizes 1024,65536,8388608 --mib 256

Prints messages/s, GB/s and each receiver's ratio to ``bare`` (same run, same
sizes); ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._machine import cpu_model  # noqa: E402
from simstream.pipeline.receiver import StreamReceiver  # noqa: E402
from simstream.runner.procs import free_port  # noqa: E402

NNG_PUSH_HEADER = b"\x00SP\x00\x00\x50\x00\x00"


def _sender(port: int, size: int, count: int, nng: bool, go: Any) -> None:
    payload = bytes(size)
    header = struct.pack(">Q", size)
    deadline = time.monotonic() + 30
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    with s:
        if nng:
            s.sendall(NNG_PUSH_HEADER)
            s.recv(8)
        if not go.wait(60):  # the receiver starts its clock, then lets us send
            raise RuntimeError("the receiver never said go")
        for _ in range(count):
            s.sendall(header)
            s.sendall(payload)


def _start(port: int, size: int, count: int, nng: bool) -> tuple[Any, Any]:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    proc = ctx.Process(target=_sender, args=(port, size, count, nng, go))
    proc.start()
    return proc, go


def _bare(port: int, size: int, count: int) -> float:
    with socket.create_server(("127.0.0.1", port)) as srv:
        proc, go = _start(port, size, count, False)
        conn, _ = srv.accept()
        with conn:
            head = bytearray(8)
            body = bytearray(size)
            t0 = time.perf_counter()
            go.set()
            for _ in range(count):
                for buf in (head, body):
                    view, got = memoryview(buf), 0
                    while got < len(buf):
                        n = conn.recv_into(view[got:])
                        if n == 0:
                            raise RuntimeError("sender closed early")
                        got += n
            dt = time.perf_counter() - t0
        proc.join(30)
    return dt


def _stream(kind: str, port: int, size: int, count: int) -> float:
    rx = StreamReceiver(kind, f"tcp://127.0.0.1:{port}", "bind", max(size, 1) + 1)
    proc, go = _start(port, size, count, kind == "nng")
    try:
        deadline = time.monotonic() + 60
        while rx.stats.connections == 0 and time.monotonic() < deadline:
            rx.recv(0.05)  # accepts (and for nng answers the header)
        got = 0
        t0 = time.perf_counter()
        go.set()
        deadline = time.monotonic() + 300
        while got < count and time.monotonic() < deadline:
            if rx.recv(0.5) is not None:
                got += 1
        dt = time.perf_counter() - t0
        if got < count:
            raise RuntimeError(f"{kind}: got {got} of {count} messages")
    finally:
        rx.close()
        proc.join(30)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1024,65536,8388608", help="message sizes, bytes")
    ap.add_argument("--mib", type=float, default=256.0, help="MiB per case (at least 200 msgs)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs per case")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        count = max(200, int(args.mib * (1 << 20) / max(size, 1)))
        best: dict[str, float] = {}
        for case in ("bare", "tcp", "nng"):
            times = []
            for _ in range(args.repeat):
                port = free_port()
                times.append(_bare(port, size, count) if case == "bare"
                             else _stream(case, port, size, count))
            best[case] = min(times)
        for case, dt in best.items():
            rows.append({"case": case, "size": size, "messages": count,
                         "msgs_per_s": count / dt, "gbps": size * count / dt / 1e9,
                         "ratio_to_bare": best["bare"] / dt})
            print(f"{case:5} {size:>9} B x {count:>7}: {count / dt:>9.0f} msg/s "
                  f"{size * count / dt / 1e9:6.2f} GB/s  x{best['bare'] / dt:.2f} of bare")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "python": platform.python_version(),
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
