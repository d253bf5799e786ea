"""The emitter, measured where it counts: at a pyzmq PULL receiver that timestamps arrivals.

Four measurements, side by side in one run (every sender and receiver is its own
process, all on loopback):

1. Uncapped throughput with 32 MiB messages: ``simstream emit`` vs a pyzmq
   PUSH->PULL loop vs raw TCP sockets (``sendall`` / ``recv_into``).
2. Bandwidth-cap accuracy: achieved rate at the receiver vs the cap, over a
   window of ``--cap-seconds`` per cap.
3. Schedule accuracy when not bandwidth-bound: first byte minus schedule (from
   the emit log) at a paced rate, p50/p99; and the realised jitter against the
   named distribution (KS statistic for normal, quantiles for pareto).
4. The emitter's resident memory (VmRSS, sampled every 50 ms) during run 1.

Usage::

    python bench/bench_emit.py [--seconds 4] [--caps 8,80,400,1000,4000]
                               [--cap-seconds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any

import yaml
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
BIG = 32 * MIB


# --------------------------------------------------------------------------
# receivers and reference senders (child processes)


def _pull(conn: Any, idle_s: float, max_s: float) -> None:
    """pyzmq PULL: timestamp each arrival (simstream.clock.now) until idle_s of silence."""
    import zmq

    from simstream.clock import now

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.LINGER, 0)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    conn.send(port)
    ts: list[float] = []
    ns: list[int] = []
    t_start = now()
    while now() - t_start < max_s:
        if s.poll(50):
            f = s.recv(copy=False)
            ts.append(now())
            ns.append(len(f.buffer))
        elif ts and now() - ts[-1] > idle_s:
            break
    s.close(linger=0)
    ctx.term()
    conn.send((ts, ns))


def _push(port: int, seconds: float) -> None:
    """pyzmq PUSH: one 32 MiB message after another for ``seconds``."""
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 5)
    s.setsockopt(zmq.LINGER, -1)
    s.connect(f"tcp://127.0.0.1:{port}")
    buf = os.urandom(BIG)
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        s.send(buf, copy=False)
    s.close()
    ctx.term()


def _tcp_rx(conn: Any, idle_s: float) -> None:
    from simstream.clock import now

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    conn.send(srv.getsockname()[1])
    c, _ = srv.accept()
    c.settimeout(idle_s)
    buf = bytearray(4 * MIB)
    view = memoryview(buf)
    total = 0
    t_first = t_last = None
    try:
        while True:
            n = c.recv_into(view)
            if not n:
                break
            t_last = now()
            if t_first is None:
                t_first = t_last
                n0 = n
            total += n
    except TimeoutError:
        pass
    c.close()
    srv.close()
    conn.send((t_first, t_last, total - (n0 if t_first else 0)))


def _tcp_tx(port: int, seconds: float) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    buf = os.urandom(BIG)
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        s.sendall(buf)
    s.close()


CTX = mp.get_context("spawn")


class Receiver:
    def __init__(self, idle_s: float = 1.5, max_s: float = 120.0) -> None:
        self.parent, child = CTX.Pipe()
        self.proc = CTX.Process(target=_pull, args=(child, idle_s, max_s), daemon=True)
        self.proc.start()
        self.port = self.parent.recv()
        self.url = f"tcp://127.0.0.1:{self.port}"

    def result(self, timeout: float = 180) -> tuple[list[float], list[int]]:
        if not self.parent.poll(timeout):
            self.proc.kill()
            raise RuntimeError("receiver did not finish")
        ts, ns = self.parent.recv()
        self.proc.join(10)
        return ts, ns


def rate_at_receiver(ts: list[float], ns: list[int]) -> float:
    """Payload bytes per second between the first and the last arrival."""
    if len(ts) < 2:
        return float("nan")
    return sum(ns[1:]) / (ts[-1] - ts[0])


# --------------------------------------------------------------------------
# simstream emit as a subprocess, with VmRSS sampling


def write_profile(path: Path, **kw: Any) -> Path:
    n_elems = kw.pop("nbytes") // 4
    prof = {
        "name": "bench", "seed": 1,
        "source": {"batch_size": 1, "shape": [1, n_elems], "dtype": "float32",
                   "content": kw.pop("content", "constant"), "format": "hdf5",
                   "compression": "none", "total_events": None, "pool": 2},
        "transport": {"kind": "zmq", "role": "client", "url": "tcp://127.0.0.1:1",
                      "sndhwm": 5, "connect_timeout_s": 10},
        "network": kw.pop("network", {}),
        "timeline": {"phases": [{"name": "bench", "rate_hz": kw.pop("rate_hz", None)}]},
        "stop": {"duration_s": kw.pop("seconds")},
    }
    assert not kw, kw
    path.write_text(yaml.safe_dump(prof))
    return path


def vm_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_emit(profile: Path, url: str, log: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "simstream", "emit", "--profile", str(profile), "--url", url,
            "--log", str(log), "--no-progress"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        while proc.poll() is None:
            mb = vm_rss_mb(proc.pid)
            if mb is not None:
                samples.append((time.monotonic() - t0, mb))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate(timeout=300)
    th.join(5)
    if proc.returncode != 0:
        raise RuntimeError(f"emit failed ({proc.returncode}): {err[-2000:]}")
    return {"stdout": out, "stderr": err, "rss": samples}


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def ks_normal(xs: list[float]) -> float:
    """Kolmogorov-Smirnov statistic of sorted standardised values against N(0, 1)."""
    cdf = NormalDist().cdf
    n = len(xs)
    return max(max((i + 1) / n - cdf(z), cdf(z) - i / n) for i, z in enumerate(xs))


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))] if s else float("nan")


# --------------------------------------------------------------------------
# the four measurements


def _raw_tcp(seconds: float) -> float:
    parent, child = CTX.Pipe()
    rx = CTX.Process(target=_tcp_rx, args=(child, 1.5), daemon=True)
    rx.start()
    port = parent.recv()
    tx = CTX.Process(target=_tcp_tx, args=(port, seconds), daemon=True)
    tx.start()
    tx.join(seconds + 60)
    t_first, t_last, nbytes = parent.recv()
    rx.join(10)
    return float(nbytes / (t_last - t_first) / 1e6)


def _pyzmq(seconds: float) -> float:
    rcv = Receiver()
    tx = CTX.Process(target=_push, args=(rcv.port, seconds), daemon=True)
    tx.start()
    tx.join(seconds + 60)
    ts, ns = rcv.result()
    return rate_at_receiver(ts, ns) / 1e6


def throughput(tmp: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """The three senders in turn, ``rounds`` times (interleaved: the machine is shared)."""
    out: dict[str, Any] = {"raw_tcp_MBps": [], "pyzmq_MBps": [], "simstream_MBps": [],
                           "rss_runs": []}
    prof = write_profile(tmp / "big.yaml", nbytes=BIG, seconds=seconds)
    for _ in range(rounds):
        out["raw_tcp_MBps"].append(_raw_tcp(seconds))
        out["pyzmq_MBps"].append(_pyzmq(seconds))
        rcv = Receiver()
        run = run_emit(prof, rcv.url, tmp / "big.jsonl")
        ts, ns = rcv.result()
        out["simstream_MBps"].append(rate_at_receiver(ts, ns) / 1e6)
        out["message_MB"] = (ns[0] if ns else 0) / 1e6
        rss = run["rss"]
        out["rss_runs"].append({
            "peak_MB": max(m for _, m in rss),
            "samples": [(round(t, 2), round(m, 1)) for t, m in rss[:: max(1, len(rss) // 12)]],
            "messages": len(ts),
            "blocked_s_total": sum(r["blocked_s"] for r in read_log(tmp / "big.jsonl")),
        })
    return out


def cap_accuracy(tmp: Path, caps: list[float], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for cap in caps:
        rate = cap * 1e6 / 8
        # ~150 messages in the window: enough to time the rate, small enough to pace
        nbytes = int(min(8 * MIB, max(16 * 1024, rate * seconds / 150)))
        rcv = Receiver()
        prof = write_profile(tmp / f"cap{cap:g}.yaml", nbytes=nbytes, seconds=seconds,
                             network={"bandwidth_mbps": cap})
        log = tmp / f"cap{cap:g}.jsonl"
        run_emit(prof, rcv.url, log)
        ts, ns = rcv.result()
        recs = [r for r in read_log(log) if r["outcome"] == "delivered"]
        sent = sum(r["wire_bytes"] for r in recs[1:]) / (
            recs[-1]["t_last_byte"] - recs[0]["t_last_byte"])
        got = rate_at_receiver(ts, ns)
        rows.append({"cap_mbps": cap, "message_bytes": nbytes, "messages": len(ts),
                     "receiver_mbps": got * 8 / 1e6, "sender_mbps": sent * 8 / 1e6,
                     "error_pct": (got * 8 / 1e6 / cap - 1) * 100})
    return rows


def schedule_accuracy(tmp: Path, seconds: float, jitter_s: float) -> dict[str, Any]:
    from simstream.profile import load_profile
    from simstream.schedule import Schedule
    from simstream.timing import netem_standard_value

    out: dict[str, Any] = {}
    # paced, not bandwidth-bound: 200 Hz of 64 KiB
    rcv = Receiver()
    prof = write_profile(tmp / "paced.yaml", nbytes=64 * 1024, seconds=seconds, rate_hz=200)
    run_emit(prof, rcv.url, tmp / "paced.jsonl")
    ts, _ = rcv.result()
    recs = read_log(tmp / "paced.jsonl")
    late = [(r["t_first_byte"] - r["t_sched"]) * 1000 for r in recs if r["t_first_byte"]]
    arrive = [(t - r["t_sched"]) * 1000 for t, r in zip(ts, recs, strict=False)]
    out["paced"] = {"rate_hz": 200, "messages": len(recs),
                    "first_byte_minus_sched_ms": {"p50": pct(late, 0.5), "p99": pct(late, 0.99),
                                                  "max": max(late)},
                    "arrival_minus_sched_ms": {"p50": pct(arrive, 0.5), "p99": pct(arrive, 0.99)}}
    # jitter: 20 ms latency, 5 ms jitter, at 50 Hz (spacing 20 ms >> jitter: order rarely binds)
    for dist in ("normal", "pareto"):
        rcv = Receiver()
        path = write_profile(tmp / f"jit-{dist}.yaml", nbytes=64 * 1024, seconds=jitter_s,
                             rate_hz=50, network={"latency_ms": 20, "jitter_ms": 5,
                                                  "jitter_distribution": dist})
        run_emit(path, rcv.url, tmp / f"jit-{dist}.jsonl")
        rcv.result()
        recs = read_log(tmp / f"jit-{dist}.jsonl")
        sched = Schedule(load_profile(path), 0)
        planned = [sched.next() for _ in recs]
        # the run's zero: t_sched = zero + offered + delay, the same for every message
        zero = sorted(r["t_sched"] - p.t_offered - p.delay_s  # type: ignore[union-attr]
                      for r, p in zip(recs, planned, strict=True))[len(recs) // 2]
        realised = [(r["t_first_byte"] - zero - p.t_offered) * 1000  # type: ignore[union-attr]
                    for r, p in zip(recs, planned, strict=True)]
        zs = sorted((d - 20) / 5 for d in realised)
        drawn = sorted((p.delay_s * 1000 - 20) / 5 for p in planned)  # type: ignore[union-attr]
        n = len(zs)
        entry: dict[str, Any] = {"messages": n}
        if dist == "normal":
            entry["ks_D"] = ks_normal(zs)
            entry["ks_D_drawn"] = ks_normal(drawn)
            entry["ks_crit_5pct"] = 1.358 / math.sqrt(n)
        lateness = [(r["t_first_byte"] - r["t_sched"]) * 1000 for r in recs]
        entry["lateness_ms_p50"] = pct(lateness, 0.5)
        entry["lateness_ms_p99"] = pct(lateness, 0.99)
        for p in (0.1, 0.5, 0.9):
            entry[f"q{int(p * 100)}_realised"] = zs[int(p * n)]
            entry[f"q{int(p * 100)}_drawn"] = drawn[int(p * n)]
            entry[f"q{int(p * 100)}_netem"] = netem_standard_value(dist, p)
        out[f"jitter_{dist}"] = entry
    return out


def machine() -> str:
    cpu = cpu_model()
    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python "
            f"{platform.python_version()}, load average {load[0]:.1f} at the start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--caps", default="8,80,400,1000,4000", help="Mbit/s, comma-separated")
    ap.add_argument("--cap-seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2, help="throughput rounds (interleaved)")
    ap.add_argument("--jitter-seconds", type=float, default=6.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--parts", default="throughput,caps,schedule",
                    help="which measurements, comma-separated")
    args = ap.parse_args()
    caps = [float(c) for c in args.caps.split(",") if c]
    result: dict[str, Any] = {"machine": machine()}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        parts = set(args.parts.split(","))
        if "throughput" in parts:
            result["throughput"] = throughput(tmp, args.seconds, args.rounds)
            print(json.dumps(result["throughput"], indent=1), flush=True)
        if "caps" in parts:
            result["caps"] = cap_accuracy(tmp, caps, args.cap_seconds)
            print(json.dumps(result["caps"], indent=1), flush=True)
        if "schedule" in parts:
            result["schedule"] = schedule_accuracy(tmp, args.seconds, args.jitter_seconds)
            print(json.dumps(result["schedule"], indent=1), flush=True)
    result["bench_s"] = time.monotonic() - t0
    result["load_after"] = os.getloadavg()[0]
    print_tables(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


def print_tables(r: dict[str, Any]) -> None:
    print(f"\nMachine: {r['machine']}; load average {r['load_after']:.1f} at the end; "
          f"bench took {r['bench_s']:.0f} s\n")
    if "throughput" in r:
        print_throughput(r["throughput"])
    if "caps" in r:
        print_caps(r["caps"])
    if "schedule" in r:
        print_schedule(r["schedule"])


def print_throughput(th: dict[str, Any]) -> None:
    raw = max(th["raw_tcp_MBps"])
    print("| sender (32 MiB messages, loopback) | MB/s at the receiver, each round | best | "
          "best / best raw TCP |")
    print("| --- | ---: | ---: | ---: |")
    for key, name in (("raw_tcp_MBps", "raw TCP sockets"), ("pyzmq_MBps", "pyzmq PUSH -> PULL"),
                      ("simstream_MBps", "simstream emit (zmq, HDF5)")):
        vals = th[key]
        print(f"| {name} | {' / '.join(f'{v:.0f}' for v in vals)} | {max(vals):.0f} | "
              f"{max(vals) / raw * 100:.0f} % |")
    for i, run in enumerate(th["rss_runs"]):
        print(f"\nEmitter VmRSS, round {i + 1} ({run['messages']} messages of "
              f"{th['message_MB']:.1f} MB): peak {run['peak_MB']:.0f} MB; samples (s, MB): "
              f"{run['samples']}")


def print_caps(caps: list[dict[str, Any]]) -> None:
    print("\n| cap Mbit/s | message bytes | messages | at receiver Mbit/s | error | "
          "sender side Mbit/s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in caps:
        print(f"| {c['cap_mbps']:g} | {c['message_bytes']} | {c['messages']} | "
              f"{c['receiver_mbps']:.2f} | {c['error_pct']:+.2f} % | {c['sender_mbps']:.2f} |")


def print_schedule(s: dict[str, Any]) -> None:
    p = s["paced"]
    fb = p["first_byte_minus_sched_ms"]
    ar = p["arrival_minus_sched_ms"]
    print(f"\nPaced {p['rate_hz']} Hz, {p['messages']} messages: first byte - schedule "
          f"p50 {fb['p50']:.3f} ms, p99 {fb['p99']:.3f} ms, max {fb['max']:.3f} ms; "
          f"arrival - schedule p50 {ar['p50']:.3f} ms, p99 {ar['p99']:.3f} ms")
    for dist in ("normal", "pareto"):
        j = s[f"jitter_{dist}"]
        ks = (f"KS D realised {j['ks_D']:.3f}, drawn {j['ks_D_drawn']:.3f} "
              f"(5 % critical {j['ks_crit_5pct']:.3f}); " if "ks_D" in j else "")
        qs = ", ".join(f"q{q}: {j[f'q{q}_realised']:+.2f} / {j[f'q{q}_drawn']:+.2f} / "
                       f"{j[f'q{q}_netem']:+.2f}" for q in (10, 50, 90))
        print(f"Jitter {dist} (20 ms, 5 ms), {j['messages']} messages: {ks}quantiles in units "
              f"of jitter, realised / drawn / netem: {qs}; "
              f"lateness p50 {j['lateness_ms_p50']:.3f} ms, "
              f"p99 {j['lateness_ms_p99']:.3f} ms")


if __name__ == "__main__":
    main()
