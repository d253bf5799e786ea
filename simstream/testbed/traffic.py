"""A bounded TCP sender and receiver for measuring a shaped link.

``python -m simstream.testbed.traffic recv --bind ADDR:PORT --duration S``
accepts one connection, reads until EOF or S seconds, and prints one JSON line:
``{"bytes", "t_first", "t_last", "rate_mbps", "bins_s", "bins"}`` (times in Unix
seconds from simstream.clock; ``bins`` are byte counts per ``bins_s`` interval
from ``t_first``). ``send --to ADDR:PORT --duration S [--rate-mbps R]`` writes
as fast as the socket takes (or paced to R Mbit/s in user space, a token bucket
with 64 KiB chunks) for S seconds and prints its own JSON line. ``--sockbuf B``
on either side sets SO_RCVBUF / SO_SNDBUF before connecting (the kernel doubles
it for its bookkeeping), which bounds the window TCP can keep in flight.

``udp-echo --bind ADDR:PORT --duration S`` returns every datagram to its sender;
``udp-probe --to ADDR:PORT --count N --interval S`` sends N small datagrams and
prints ``{"sent", "rtts_ms", "median_ms", "p99_ms", "lost"}``: round trips the
kernel's TCP would also see.

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


def recv(bind: str, duration_s: float, sockbuf: int | None = None) -> dict[str, object]:
    """Accept one connection on ``bind`` and count bytes for at most ``duration_s``."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if sockbuf:
        # set on the listener so the accepted socket's window scale is chosen from it
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sockbuf)
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
         message_bytes: int | None = None, log: str | None = None,
         sockbuf: int | None = None) -> dict[str, object]:
    """Connect to ``to`` and write for ``duration_s`` (paced to ``rate_mbps`` if given).

    With ``message_bytes``, writes messages in the ``tcp`` transport's framing
    (8-byte big-endian length, then the payload), each whole, and with ``log``
    writes one emit-log line per message (docs/formats.md).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if sockbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sockbuf)
    s.settimeout(ACCEPT_TIMEOUT_S)
    s.connect(_addr(to))
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


def udp_echo(bind: str, duration_s: float) -> dict[str, object]:
    """Return each datagram to its sender for ``duration_s`` seconds."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(_addr(bind))
    print(json.dumps({"listening": bind}), flush=True)
    s.settimeout(0.2)
    n = 0
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        try:
            data, peer = s.recvfrom(65535)
        except TimeoutError:
            continue
        s.sendto(data, peer)
        n += 1
    s.close()
    return {"echoed": n}


def udp_probe(to: str, count: int, interval_s: float, timeout_s: float = 1.0) -> dict[str, object]:
    """``count`` datagrams ``interval_s`` apart (or after each reply, if later); RTTs in ms."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(_addr(to))
    rtts: list[float] = []
    for seq in range(count):
        t0 = time.monotonic()
        s.send(struct.pack(">Q", seq) + b"\0" * 56)
        deadline = t0 + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data = s.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                break
            if struct.unpack(">Q", data[:8])[0] == seq:  # late replies to earlier probes skip
                rtts.append((time.monotonic() - t0) * 1000)
                break
        rest = interval_s - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)
    s.close()
    srt = sorted(rtts)
    return {"sent": count, "rtts_ms": rtts, "lost": count - len(rtts),
            "median_ms": srt[len(srt) // 2] if srt else None,
            "p99_ms": srt[min(len(srt) - 1, int(len(srt) * 0.99))] if srt else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simstream.testbed.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--duration", type=float, required=True)
    r.add_argument("--sockbuf", type=int, default=None, help="SO_RCVBUF, bytes")
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--rate-mbps", type=float, default=None)
    s.add_argument("--message-bytes", type=int, default=None)
    s.add_argument("--log", default=None)
    s.add_argument("--sockbuf", type=int, default=None, help="SO_SNDBUF, bytes")
    e = sub.add_parser("udp-echo")
    e.add_argument("--bind", required=True)
    e.add_argument("--duration", type=float, required=True)
    p = sub.add_parser("udp-probe")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--interval", type=float, default=0.05)
    a = ap.parse_args(argv)
    if a.cmd == "recv":
        out = recv(a.bind, a.duration, a.sockbuf)
    elif a.cmd == "send":
        out = send(a.to, a.duration, a.rate_mbps, a.message_bytes, a.log, a.sockbuf)
    elif a.cmd == "udp-echo":
        out = udp_echo(a.bind, a.duration)
    else:
        out = udp_probe(a.to, a.count, a.interval)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
