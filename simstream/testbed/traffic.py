"""A bounded TCP sender and receiver for measuring a shaped link.

``python -m simstream.testbed.traffic recv --bind ADDR:PORT --duration S``
accepts one connection, reads until EOF or S seconds, and prints one JSON line:
``{"bytes", "t_first", "t_last", "rate_mbps", "bins_s", "bins"}`` (times in Unix
seconds from simstream.clock; ``bins`` are byte counts per ``bins_s`` interval
from ``t_first``). ``send --to ADDR:PORT --duration S [--rate-mbps R]`` writes
as fast as the socket takes (or paced to R Mbit/s in user space, a token bucket
with 64 KiB chunks) for S seconds and prints its own JSON line.

Rates are megabits per second (10^6 bit/s).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

from simstream import clock

CHUNK = 64 * 1024
BIN_S = 0.01
ACCEPT_TIMEOUT_S = 10.0


def _addr(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host, int(port)


def recv(bind: str, duration_s: float) -> dict[str, object]:
    """Accept one connection on ``bind`` and count bytes for at most ``duration_s``."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(_addr(bind))
    srv.listen(1)
    srv.settimeout(ACCEPT_TIMEOUT_S)
    print(json.dumps({"listening": bind}), flush=True)
    conn, _ = srv.accept()
    conn.settimeout(0.5)
    total = 0
    t_first = t_last = None
    bins: list[int] = []
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        try:
            data = conn.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            break
        t = clock.now()
        if t_first is None:
            t_first = t
        t_last = t
        total += len(data)
        i = int((t - t_first) / BIN_S)
        if i >= len(bins):
            bins.extend([0] * (i + 1 - len(bins)))
        bins[i] += len(data)
    conn.close()
    srv.close()
    span = (t_last - t_first) if t_first is not None and t_last is not None else 0.0
    return {"bytes": total, "t_first": t_first, "t_last": t_last,
            "rate_mbps": total * 8 / span / 1e6 if span > 0 else None,
            "bins_s": BIN_S, "bins": bins}


def send(to: str, duration_s: float, rate_mbps: float | None = None,
         message_bytes: int | None = None, log: str | None = None) -> dict[str, object]:
    """Connect to ``to`` and write for ``duration_s`` (paced to ``rate_mbps`` if given).

    With ``message_bytes``, writes messages in the ``tcp`` transport's framing
    (8-byte big-endian length, then the payload), each whole, and with ``log``
    writes one emit-log line per message (docs/formats.md).
    """
    s = socket.create_connection(_addr(to), timeout=ACCEPT_TIMEOUT_S)
    size = message_bytes or CHUNK
    payload = (struct.pack(">Q", size) if message_bytes else b"") + b"\x5a" * size
    total = 0
    seq = 0
    t0 = time.monotonic()
    deadline = t0 + duration_s
    t_start = clock.now()
    rate_Bps = rate_mbps * 1e6 / 8 if rate_mbps else None
    logf = open(log, "w", encoding="utf-8") if log else None  # noqa: SIM115
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if rate_Bps is not None:
                # token bucket, no burst allowance: the next write leaves when the
                # bytes already sent have been paid for at the rate
                due = t0 + total / rate_Bps
                if due > now:
                    time.sleep(min(due - now, deadline - now))
                    continue
            t_sched = clock.now()
            if message_bytes:
                s.settimeout(max(1.0, deadline - now + 5.0))
                s.sendall(payload)
                n = len(payload)
            else:
                s.settimeout(0.5)
                try:
                    n = s.send(payload)
                except TimeoutError:
                    continue
            t_done = clock.now()
            total += n
            if logf is not None:
                logf.write(json.dumps({
                    "rank": 0, "seq": seq, "phase": "steady", "t_sched": t_sched,
                    "t_first_byte": t_sched, "t_last_byte": t_done, "nbytes": size,
                    "wire_bytes": n, "events": 1, "blocked_s": 0.0, "faults": [],
                    "outcome": "delivered", "url": f"tcp://{to}"}) + "\n")
            seq += 1
    finally:
        s.close()
        if logf is not None:
            logf.close()
    t_end = clock.now()
    return {"bytes": total, "messages": seq if message_bytes else None, "t_start": t_start,
            "t_end": t_end, "rate_mbps": total * 8 / (t_end - t_start) / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simstream.testbed.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--duration", type=float, required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--rate-mbps", type=float, default=None)
    s.add_argument("--message-bytes", type=int, default=None)
    s.add_argument("--log", default=None)
    a = ap.parse_args(argv)
    out = (recv(a.bind, a.duration) if a.cmd == "recv"
           else send(a.to, a.duration, a.rate_mbps, a.message_bytes, a.log))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
