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

And, with ``--cases ...,emit``, the emitter against them in the same run:

- ``emit``: ``simstream emit --ranks N --processes N`` (uncapped, unpaced,
  HDF5 uncompressed messages of the same size from a pool of ``--pool``
  batches, one address per rank, the anchors' send buffer:
  ``transport.sndbuf_bytes``) into N receiver
  processes: by default (``--emit-sink into``) the fast layout's own ZMTP PULL,
  which reads each message with ``recv_into`` as the ``tcp`` case's receivers
  do, so the figure is the emitter's; ``--emit-sink zmq``: pyzmq PULLs like the
  ``zmq`` case's (libzmq's receiving side then caps it from about 8 streams).
  The table gives its ratio to plain TCP and to zmq with as many streams (the
  issue's emitter goal: >= 0.8 of the plain socket benchmark with N streams).

    python bench/bench_plain_socket.py --streams 1,2,4 --msg-mib 8 --seconds 3
    python bench/bench_plain_socket.py --streams 1,2 --cases tcp,zmq,emit

Prints a table of GB/s per case and writes ``--json`` if given. Each figure is
the bytes the receivers got after their first message divided by the time from
the first receiver's first message to the last receiver's last, so a slow stream
counts against the total and start-up (interpreters, encoding a pool) does not.

``--pool N`` (default 1): every sender, the anchors' and the emitter's, cycles
through N distinct message buffers. One buffer stays in the CPU's last-level
cache, so the kernel's copies out of it run at cache speed; a pool of several
messages larger than that cache reads DRAM, as a producer of fresh data does.
Compare the emitter with the anchors at the same ``--pool``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOCK_BUF = 8 << 20
#: a receiver whose stream went quiet this long after its first message ends
IDLE_S = 2.0
CASES = ("tcp", "zmq", "emit")


def memcpy_gbps(nbytes: int, seconds: float) -> float:
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        np.copyto(dst, src)
        done += nbytes
    return done / (time.perf_counter() - t0) / 1e9


def _send_buffers(nbytes: int, pool: int) -> list[bytearray]:
    """``pool`` distinct message buffers (each its own memory, as ``source.pool``
    batches are), cycled by a sender: how much memory a sender reads from decides
    whether its copies run from the CPU's cache or from DRAM."""
    return [bytearray(os.urandom(1024) * (nbytes // 1024)) for _ in range(pool)]


def _tcp_sender(port: int, nbytes: int, seconds: float, pool: int = 1) -> None:
    bufs = _send_buffers(nbytes, pool)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
        s.sendall(nbytes.to_bytes(8, "little"))
        end, k = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            s.sendall(bufs[k % pool])
            k += 1


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


def _zmq_sender(port: int, nbytes: int, seconds: float, pool: int = 1) -> None:
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDBUF, SOCK_BUF)
    s.setsockopt(zmq.SNDHWM, 4)
    s.connect(f"tcp://127.0.0.1:{port}")
    bufs = [np.frombuffer(b, dtype=np.uint8) for b in _send_buffers(nbytes, pool)]
    end, k = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        s.send(bufs[k % pool], copy=False)
        k += 1
    s.send(b"")
    s.close(linger=-1)
    ctx.term()


def _zmq_receiver(port: int, ready: Any, out: Any) -> None:
    """PULL until an empty frame (the ``zmq`` case's senders end with one) or
    ``IDLE_S`` of silence after the first message (the emitter sends none); puts
    (bytes after the first message, its arrival, the last arrival)."""
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVBUF, SOCK_BUF)
    s.setsockopt(zmq.RCVHWM, 4)
    s.bind(f"tcp://127.0.0.1:{port}")
    ready.put(True)
    got, t0, t_last = 0, None, None
    while True:
        if not s.poll(int(IDLE_S * 1000) if t0 is not None else 120_000):
            break
        frame = s.recv(copy=False)
        n = len(frame.buffer)
        if n == 0:
            break
        t_last = time.perf_counter()
        if t0 is None:
            t0 = t_last  # the first message's bytes arrived before this: not counted
        else:
            got += n
    now = time.perf_counter()
    out.put((got, t0 or now, t_last or now))
    s.close(linger=0)
    ctx.term()


def _into_receiver(port: int, ready: Any, out: Any) -> None:
    """The ``emit`` case's default receiver (``--emit-sink into``): the fast
    layout's own ZMTP PULL (``pipeline.zmtp_into.IntoReceiver``), each message
    ``recv_into`` one reused buffer, as ``_tcp_receiver`` reads, so the figure is
    the emitter's and not libzmq's receiving side. Ends after ``IDLE_S`` of silence
    following the first message; puts what ``_zmq_receiver`` puts."""
    from simstream.pipeline.zmtp_into import IntoReceiver

    held: dict[int, np.ndarray] = {}

    def alloc(shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Any]:
        n = int(np.prod(shape))
        if n not in held:  # one buffer per message size, reused for every message
            held[n] = np.empty(n, np.uint8)
        return held[n].view(dtype).reshape(shape), lambda: None

    rx = IntoReceiver(f"tcp://127.0.0.1:{port}", 1 << 40, alloc, rcvbuf=SOCK_BUF)
    ready.put(True)
    got, t0, t_last = 0, None, None
    deadline = time.perf_counter() + 120.0
    while True:
        msg = rx.recv(0.1)
        t = time.perf_counter()
        if msg is None:
            if (t0 is None and t > deadline) or (t_last is not None and t - t_last > IDLE_S):
                break
            continue
        t_last = t
        if t0 is None:
            t0 = t  # the first message's bytes arrived before this: not counted
        else:
            got += msg.nbytes
    now = time.perf_counter()
    out.put((got, t0 or now, t_last or now))
    rx.close()


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _tree_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their descendants (Linux
    /proc; a process gone or unreadable counts nothing)."""
    seen: set[int] = set()
    stack, total = list(pids), 0
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                stack += [int(x) for x in fh.read().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total / _TICK


class CpuSampler:
    """Samples the CPU time of a sender's process tree every ``every_s`` in a thread,
    so the CPU it spent while the receivers were receiving (not starting up) can be
    read off: ``cpu_between(t0, t1)`` (``time.perf_counter`` times, interpolated)."""

    def __init__(self, pids: Any, every_s: float = 0.05) -> None:
        self.pids = pids  # a list, or a callable giving one (filled in as they start)
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = self.pids() if callable(self.pids) else self.pids
            used = _tree_cpu_s(list(pids))
            # a process that has exited counts nothing any more: its time stays counted
            last = self.samples[-1][1] if self.samples else 0.0
            self.samples.append((time.perf_counter(), max(used, last)))
            self._stop.wait(self.every_s)

    def cpu_between(self, t0: float, t1: float) -> float | None:
        def at(t: float) -> float | None:
            if not self.samples:
                return None
            if t <= self.samples[0][0]:
                return self.samples[0][1]
            for (ta, ca), (tb, cb) in zip(self.samples, self.samples[1:], strict=False):
                if ta <= t <= tb:
                    return ca + (cb - ca) * ((t - ta) / (tb - ta) if tb > ta else 0.0)
            return self.samples[-1][1]  # after the last sample: the senders had ended

        a, b = at(t0), at(t1)
        return None if a is None or b is None else max(0.0, b - a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gbps(results: list[tuple[int, float, float]]) -> float:
    total = sum(r[0] for r in results)
    span = max(r[2] for r in results) - min(r[1] for r in results)
    return total / span / 1e9 if span > 0 else 0.0


def _cpu_per_gb(results: list[tuple[int, float, float]], cpu: CpuSampler) -> float | None:
    """The senders' CPU seconds per GB received, over the receivers' window."""
    total = sum(r[0] for r in results)
    used = cpu.cpu_between(min(r[1] for r in results), max(r[2] for r in results))
    return used / (total / 1e9) if used is not None and total else None


def tcp_gbps(streams: int, nbytes: int, seconds: float, pool: int = 1
             ) -> tuple[float, float | None]:
    """GB/s of N plain TCP streams, and the senders' CPU seconds per GB."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs, senders = [], []
    with CpuSampler(lambda: [p.pid for p in senders if p.pid]) as cpu:
        for _ in range(streams):
            lsock = socket.socket()
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            port = lsock.getsockname()[1]
            procs.append(ctx.Process(target=_tcp_receiver, args=(lsock, out)))
            procs.append(ctx.Process(target=_tcp_sender, args=(port, nbytes, seconds, pool)))
            senders.append(procs[-1])
            procs[-2].start()
            lsock.close()
            procs[-1].start()
        results = [out.get(timeout=seconds + 60) for _ in range(streams)]
    for p in procs:
        p.join(timeout=30)
    return _gbps(results), _cpu_per_gb(results, cpu)


def _pull_receivers(ctx: Any, streams: int, target: Any = _zmq_receiver
                    ) -> tuple[list[Any], list[int], Any]:
    out, ready = ctx.Queue(), ctx.Queue()
    procs, ports = [], []
    for _ in range(streams):
        port = _free_port()
        recv = ctx.Process(target=target, args=(port, ready, out))
        recv.start()
        ready.get(timeout=60)
        procs.append(recv)
        ports.append(port)
    return procs, ports, out


def zmq_gbps(streams: int, nbytes: int, seconds: float, pool: int = 1
             ) -> tuple[float, float | None]:
    """GB/s of N pyzmq PUSH -> PULL pairs, and the senders' CPU seconds per GB."""
    ctx = mp.get_context("spawn")
    procs, ports, out = _pull_receivers(ctx, streams)
    senders = [ctx.Process(target=_zmq_sender, args=(port, nbytes, seconds, pool))
               for port in ports]
    with CpuSampler(lambda: [p.pid for p in senders if p.pid]) as cpu:
        for p in senders:
            p.start()
        results = [out.get(timeout=seconds + 60) for _ in range(streams)]
    for p in procs + senders:
        p.join(timeout=30)
    return _gbps(results), _cpu_per_gb(results, cpu)


def emit_profile(streams: int, nbytes: int, seconds: float, ports: list[int],
                 pool: int = 1) -> dict[str, Any]:
    """``simstream emit``'s profile for the ``emit`` case: N ranks in N processes,
    one address each, messages of ``nbytes`` of detector data (HDF5, uncompressed,
    a pool of ``pool`` batches, as many buffers as the anchors' senders cycle),
    unpaced and uncapped for ``seconds``."""
    return {
        "name": "bench-plain-socket-emit", "seed": 1,
        "source": {"batch_size": 1, "shape": [1, nbytes // 4], "dtype": "float32",
                   "content": "constant", "format": "hdf5", "compression": "none",
                   "total_events": None, "pool": pool},
        "transport": {"kind": "zmq", "role": "client", "url": f"tcp://127.0.0.1:{ports[0]}",
                      "urls": [f"tcp://127.0.0.1:{p}" for p in ports], "url_spread": "rank",
                      "ranks": streams, "processes": streams, "sndhwm": 4,
                      "sndbuf_bytes": SOCK_BUF, "connect_timeout_s": 30},
        "timeline": {"phases": [{"name": "unpaced", "rate_hz": None}]},
        "stop": {"duration_s": seconds},
    }


SINKS = {"into": _into_receiver, "zmq": _zmq_receiver}


def emit_gbps(streams: int, nbytes: int, seconds: float, sink: str = "into", pool: int = 1
              ) -> tuple[float, float | None]:
    """``simstream emit --processes N`` into N receiver processes (``sink``: ``into``,
    the fast layout's recv_into ZMTP PULL, or ``zmq``, pyzmq PULLs as in the ``zmq``
    case), measured as ``zmq_gbps`` measures; its CPU per GB is that of the whole
    emitter (parent and children)."""
    import yaml

    ctx = mp.get_context("spawn")
    procs, ports, out = _pull_receivers(ctx, streams, SINKS[sink])
    with tempfile.TemporaryDirectory() as d:
        prof = Path(d) / "emit.yaml"
        prof.write_text(yaml.safe_dump(emit_profile(streams, nbytes, seconds, ports, pool)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)}
        run = subprocess.Popen([sys.executable, "-m", "simstream", "emit", "--profile", str(prof),
                                "--no-progress"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        with CpuSampler([run.pid]) as cpu:
            try:
                _, err = run.communicate(timeout=seconds + 120)
            except subprocess.TimeoutExpired:
                run.kill()
                _, err = run.communicate()
    if run.returncode != 0:
        for p in procs:
            p.kill()
        raise RuntimeError(f"simstream emit failed ({run.returncode}): {err[-2000:]}")
    results = [out.get(timeout=IDLE_S + 60) for _ in range(streams)]
    for p in procs:
        p.join(timeout=30)
    return _gbps(results), _cpu_per_gb(results, cpu)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="1,2,4", help="comma-separated stream counts")
    ap.add_argument("--msg-mib", type=float, default=8.0, help="message (send buffer) size")
    ap.add_argument("--seconds", type=float, default=3.0, help="send time per case")
    ap.add_argument("--cases", default="tcp,zmq",
                    help=f"comma-separated, of {', '.join(CASES)} (emit: simstream emit "
                         "--processes N beside the anchors)")
    ap.add_argument("--emit-sink", choices=sorted(SINKS), default="into",
                    help="the emit case's receivers: into (the fast layout's recv_into "
                         "ZMTP PULL, a plain socket's cost: the figure is the emitter's) "
                         "or zmq (pyzmq PULL, as the zmq case)")
    ap.add_argument("--pool", type=int, default=1,
                    help="distinct message buffers each sender cycles through, in every "
                         "case (the emitter's source.pool): 1 sends from one buffer that "
                         "stays in the CPU's cache; a pool larger than the cache reads "
                         "DRAM, as a producer of fresh data does")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every case this many times, interleaved; the table gives "
                         "each case's best and the median of the rounds' ratios")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    nbytes = int(args.msg_mib * (1 << 20)) // 1024 * 1024
    counts = [int(x) for x in args.streams.split(",")]
    cases = [c for c in args.cases.split(",") if c]
    bad = sorted(set(cases) - set(CASES))
    if bad or not counts or min(counts) < 1 or nbytes < 1024 or args.rounds < 1 \
            or args.pool < 1:
        print(f"bench_plain_socket: bad arguments: cases {bad or cases}, streams {counts}, "
              f"message {nbytes} bytes, pool {args.pool} (cases: {', '.join(CASES)}; "
              f"streams >= 1; --msg-mib >= 1/1024; --rounds >= 1; --pool >= 1)",
              file=sys.stderr)
        return 2
    try:
        import zmq  # noqa: F401

        have_zmq = True
    except ImportError:
        have_zmq = False
    if not have_zmq and "emit" in cases and args.emit_sink == "zmq":
        print("bench_plain_socket: --emit-sink zmq needs pyzmq", file=sys.stderr)
        return 2
    rows: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "msg_bytes": nbytes,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "pool": args.pool,
        "emit_sink": args.emit_sink if "emit" in cases else None,
        "memcpy_gbps": memcpy_gbps(nbytes, args.seconds),
        "tcp_gbps": {},
        "zmq_gbps": {},
        "tcp_cpu_s_per_gb": {},
        "zmq_cpu_s_per_gb": {},
    }
    if "emit" in cases:
        rows.update(emit_gbps={}, emit_cpu_s_per_gb={}, emit_over_tcp={}, emit_over_zmq={},
                    emit_cpu_over_tcp={})
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for n in counts:
            # interleaved per stream count and round: a shared machine's load hits
            # the cases alike, and each round's ratio compares neighbours in time
            run: dict[str, Any] = {"round": r, "streams": n}
            if "tcp" in cases:
                run["tcp_gbps"], run["tcp_cpu_s_per_gb"] = tcp_gbps(n, nbytes, args.seconds,
                                                                    args.pool)
            if have_zmq and "zmq" in cases:
                run["zmq_gbps"], run["zmq_cpu_s_per_gb"] = zmq_gbps(n, nbytes, args.seconds,
                                                                    args.pool)
            if "emit" in cases:
                e, run["emit_cpu_s_per_gb"] = emit_gbps(n, nbytes, args.seconds,
                                                        args.emit_sink, args.pool)
                run["emit_gbps"] = e
                run["emit_over_tcp"] = _ratio(e, run.get("tcp_gbps"))
                run["emit_over_zmq"] = _ratio(e, run.get("zmq_gbps"))
                run["emit_cpu_over_tcp"] = _ratio(run["emit_cpu_s_per_gb"],
                                                  run.get("tcp_cpu_s_per_gb"))
            runs.append(run)
            print(json.dumps(run), flush=True)
    # per stream count: the best rate of each case over the rounds, the median CPU
    # per GB, and the median of the rounds' own ratios (each taken between runs
    # next to each other in time)
    for n in counts:
        mine = [x for x in runs if x["streams"] == n]
        for key in rows:
            if not isinstance(rows[key], dict) or key == "machine":
                continue
            vals = [x[key] for x in mine if x.get(key) is not None]
            if key.endswith("_gbps"):
                if vals:
                    rows[key][n] = max(vals)
            else:
                rows[key][n] = statistics.median(vals) if vals else None
    rows["runs"] = runs
    print(f"machine: {rows['machine']['cpu']}, {rows['machine']['cores']} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"message {nbytes / (1 << 20):.1f} MiB, {args.seconds:g} s per case, "
          f"{args.pool} buffer(s) per sender, {args.rounds} round(s): best GB/s of each case, median of the rounds' ratios "
          f"and CPU figures (sender CPU: user + system seconds of the sending processes "
          f"per GB received, while the receivers received)")
    print(f"one-thread memcpy: {rows['memcpy_gbps']:.2f} GB/s")
    if rows["emit_sink"]:
        print(f"emit's receivers: {rows['emit_sink']}")
    print(_table(rows, counts))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _table(rows: dict[str, Any], counts: list[int]) -> str:
    def f(x: float | None, w: int = 8) -> str:
        return f"{x:{w}.2f}" if x is not None else " " * (w - 1) + "-"

    emit = "emit_gbps" in rows
    head = "streams  tcp GB/s  zmq GB/s  zmq/tcp"
    if emit:
        head += "  emit GB/s  emit/tcp  emit/zmq"
    head += "  | sender CPU s/GB: tcp      zmq"
    if emit:
        head += "     emit  emit/tcp"
    lines = [head]
    for n in counts:
        t, z = rows["tcp_gbps"].get(n), rows["zmq_gbps"].get(n)
        line = f"{n:7d}  {f(t)}  {f(z)}  {f(_ratio(z, t), 7)}"
        if emit:
            line += (f"  {f(rows['emit_gbps'].get(n), 9)}  {f(rows['emit_over_tcp'].get(n))}"
                     f"  {f(rows['emit_over_zmq'].get(n))}")
        line += (f"  | {' ' * 14}{f(rows['tcp_cpu_s_per_gb'].get(n), 6)}"
                 f"  {f(rows['zmq_cpu_s_per_gb'].get(n), 7)}")
        if emit:
            line += (f"  {f(rows['emit_cpu_s_per_gb'].get(n), 7)}"
                     f"  {f(rows['emit_cpu_over_tcp'].get(n))}")
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
