"""A small discrete-event model of emitter -> network -> consumer that writes
run directories in the docs/formats.md format, with a bottleneck known by
construction. Used by the tests, the benchmark and ``simstream diagnose
--selftest``; it never touches a socket or a clock.

The model, per message i (all times in seconds; one rank):

- emitter: scheduled at ``t_sched[i]`` by a repeating list of phases
  (``rate_hz`` 0 = a stall, None = as fast as possible); it may start sending
  only when message ``i - sndhwm - 1`` has been read by the receiver
  (SNDHWM backpressure); sending takes ``wire_bytes / bandwidth``;
- network: ``latency_ms`` after the last byte the message can be read;
- receiver: reads in order, ``recv_ms`` per message (socket reads and copies); with ``parse_in="receiver"`` it hands messages to
  ``parser_threads`` workers (at most one waiting per worker), each of which
  parses then puts into Q1; otherwise the receiver puts the raw bytes itself;
- Q1: FIFO of ``q1_maxsize``; a put blocks until the item ``maxsize`` places
  ahead has been taken; put and get each cost ``put_ms`` / ``get_ms``; a get on
  an empty Q1 wakes on the next ``poll_ms`` tick when polling;
- inference loop: get, parse when ``parse_in="actor"``, then H2D, compute,
  D2H on three streams with ``buffers``-way buffering (H2D of buffer b waits
  for b's previous D2H); the loop reads results ``buffers - 1`` batches late.
  ``gpu_async=False`` runs the three copies/kernels on the host in turn (a CPU
  device).

Stage times are drawn log-normally around their means (``jitter`` = sigma)
from a seeded generator, so a scenario always writes the same directory.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simstream.records.contract import (
    BATCH_COLUMNS,
    BATCHES_CSV,
    EMIT_LOG,
    GPU_COLUMNS,
    GPU_CSV,
    GPU_STREAMS,
    MESSAGE_COLUMNS,
    MESSAGES_CSV,
    Q1_COLUMNS,
    Q1_CSV,
    QUARANTINE_DIR,
    SUMMARY_JSON,
)

__all__ = ["SCENARIOS", "Scenario", "SimResult", "simulate", "write_run_dir"]

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC: any Unix time would do


@dataclass
class Scenario:
    """One simulated experiment. Units are in the names; ``expect`` is the
    bottleneck built into it (for tests; diagnose never sees it)."""

    name: str = "scenario"
    duration_s: float = 5.0
    phases: list[tuple[str, float, float | None]] = field(
        default_factory=lambda: [("steady", 1.0, 50.0)]
    )
    poisson: bool = False
    bandwidth_mbps: float | None = None
    latency_ms: float = 0.2
    nbytes: int = 2 * 1024 * 1024
    events: int = 8
    sndhwm: int = 5
    parse_in: Literal["receiver", "actor", "none"] = "receiver"
    parse_ms: float = 1.0
    recv_ms: float = 0.0
    parser_threads: int = 1
    put_ms: float = 0.05
    get_ms: float = 0.05
    poll_ms: float = 0.0
    h2d_ms: float = 2.0
    compute_ms: float = 10.0
    d2h_ms: float = 1.0
    gpu_async: bool = True
    buffers: int = 2
    q1_maxsize: int = 8
    sample_interval_ms: float = 10.0
    jitter: float = 0.05
    seq: bool = True
    emit_log: bool = True
    mode: Literal["socket", "random"] = "socket"
    gen_ms: float = 0.02
    seed: int = 0
    max_messages: int = 200_000
    expect: str | None = None


@dataclass
class SimResult:
    """Per-message times (Unix seconds); NaN where a stage does not apply."""

    scenario: Scenario
    cols: dict[str, np.ndarray]
    emit: dict[str, np.ndarray] | None
    phase_names: list[str]


def _schedule(sc: Scenario, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scheduled send times (relative seconds) and phase index, up to duration_s.

    An as-fast-as-possible phase is written as a dense schedule (0.1 ms apart):
    backpressure, not the schedule, then sets the pace.
    """
    times: list[np.ndarray] = []
    idx: list[np.ndarray] = []
    t = 0.0
    total = 0
    cycle_len = sum(d for _, d, _ in sc.phases)
    if cycle_len <= 0:
        raise ValueError("phases need a positive total duration")
    while t < sc.duration_s and total < sc.max_messages * 2:
        for k, (_, dur, rate) in enumerate(sc.phases):
            end = min(t + dur, sc.duration_s)
            if rate is None:
                rate = 10_000.0
            if rate > 0 and end > t:
                n = int(math.ceil((end - t) * rate)) + 1
                if sc.poisson:
                    ts = t + np.cumsum(rng.exponential(1.0 / rate, n))
                else:
                    ts = t + np.arange(n) / rate
                ts = ts[ts < end]
                times.append(ts)
                idx.append(np.full(ts.size, k))
                total += ts.size
            t += dur
            if t >= sc.duration_s:
                break
    if not times:
        return np.empty(0), np.empty(0, dtype=int)
    ts = np.concatenate(times)[: sc.max_messages]
    return ts, np.concatenate(idx)[: ts.size]


def _draw(rng: np.random.Generator, mean_ms: float, n: int, sigma: float) -> np.ndarray:
    """n log-normal stage times (seconds) with the given mean."""
    if mean_ms <= 0:
        return np.zeros(n)
    if sigma <= 0:
        return np.full(n, mean_ms / 1e3)
    return (mean_ms / 1e3) * rng.lognormal(-0.5 * sigma * sigma, sigma, n)


_COLUMNS = ("t_sched", "send_start", "send_end", "blocked", "t_arrival", "parse_start",
            "parse_end", "put_start", "put_end", "get_start", "get_end", "h2d_start",
            "h2d_end", "comp_start", "comp_end", "d2h_start", "d2h_end")


class _Model:
    """The queueing model's state: one list per column, filled message by message
    (``arrive``, then ``queue``, then ``infer``), each step reading only earlier
    messages' times."""

    def __init__(self, sc: Scenario, n: int, rng: np.random.Generator) -> None:
        self.sc = sc
        sig = sc.jitter
        self.parse_s = _draw(rng, sc.parse_ms, n, sig)
        self.put_s = _draw(rng, sc.put_ms, n, sig)
        self.get_s = _draw(rng, sc.get_ms, n, sig)
        self.h2d_s = _draw(rng, sc.h2d_ms, n, sig)
        self.comp_s = _draw(rng, sc.compute_ms, n, sig)
        self.d2h_s = _draw(rng, sc.d2h_ms, n, sig)
        wire_bytes = sc.nbytes + 64
        self.send_s = (wire_bytes * 8 / (sc.bandwidth_mbps * 1e6) if sc.bandwidth_mbps
                       else wire_bytes / 5e9)
        self.hwm = sc.sndhwm + 1
        self.k = max(1, sc.parser_threads)
        self.parse_recv = sc.mode == "socket" and sc.parse_in == "receiver"
        self.parse_loop = sc.mode == "socket" and sc.parse_in == "actor"
        self.asap = [rate is None for _, _, rate in sc.phases] + [False]
        self.c = {name: [0.0] * n for name in _COLUMNS}
        self.loop_free = 0.0
        self.prev_send_end = 0.0

    def arrive(self, i: int, ts: float, phase: int) -> bool:
        """Message i sent and read by the receiver; False once the run is over."""
        sc, c = self.sc, self.c
        arr, pue = c["t_arrival"], c["put_end"]
        if sc.mode == "random":
            ready = max(ts, pue[i - 1] if i else 0.0)
            if ready > sc.duration_s:
                return False
            c["send_start"][i] = c["send_end"][i] = arr[i] = ready
            return True
        free = max(ts, self.prev_send_end)
        if self.asap[phase]:
            # as fast as possible: the emitter schedules a message when it is free to send it
            c["t_sched"][i] = free
        unblock = arr[i - self.hwm] if i >= self.hwm else 0.0
        start = max(free, unblock)
        if start > sc.duration_s:
            return False
        c["blocked"][i] = start - free
        c["send_start"][i] = start
        c["send_end"][i] = self.prev_send_end = start + self.send_s
        a = c["send_end"][i] + sc.latency_ms / 1e3
        if i:
            a = max(a, arr[i - 1])
        if self.parse_recv:
            # a worker's inbox holds one message: read i once i-k-1 started parsing
            if i > self.k:
                a = max(a, c["parse_start"][i - self.k - 1])
        elif i:
            a = max(a, pue[i - 1])  # the receiver puts the raw bytes itself
        arr[i] = a + sc.recv_ms / 1e3  # reading and copying the message
        return True

    def queue(self, i: int) -> None:
        """Message i parsed by a receiver-side worker (when parsing happens there) and put in Q1."""
        c, m = self.c, max(1, self.sc.q1_maxsize)
        pus, pue = c["put_start"], c["put_end"]
        if self.parse_recv:
            worker_free = pue[i - self.k] if i >= self.k else 0.0
            c["parse_start"][i] = max(c["t_arrival"][i], worker_free)
            c["parse_end"][i] = c["parse_start"][i] + self.parse_s[i]
            pus[i] = c["parse_end"][i]
        else:
            pus[i] = c["t_arrival"][i]
        slot = c["get_end"][i - m] if i >= m else 0.0
        pe = max(pus[i], slot) + self.put_s[i]
        pue[i] = max(pe, pue[i - 1]) if i else pe

    def infer(self, i: int) -> None:
        """The inference loop's get of message i, its parse there if any, and the device stages."""
        c, poll = self.c, self.sc.poll_ms / 1e3
        gs = self.loop_free
        c["get_start"][i] = gs
        if c["put_end"][i] <= gs:
            c["get_end"][i] = gs + self.get_s[i]
        else:
            wake = c["put_end"][i]
            if poll > 0:
                wake = gs + math.ceil((c["put_end"][i] - gs) / poll) * poll
            c["get_end"][i] = wake + self.get_s[i]
        host = c["get_end"][i]
        if self.parse_loop:
            c["parse_start"][i] = host
            c["parse_end"][i] = host = host + self.parse_s[i]
        if self.sc.gpu_async:
            self._device_async(i, host)
        else:
            c["h2d_start"][i] = host
            c["h2d_end"][i] = c["comp_start"][i] = host + self.h2d_s[i]
            c["comp_end"][i] = c["d2h_start"][i] = c["comp_start"][i] + self.comp_s[i]
            c["d2h_end"][i] = c["d2h_start"][i] + self.d2h_s[i]
            self.loop_free = c["d2h_end"][i]

    def _device_async(self, i: int, host: float) -> None:
        """H2D, compute and D2H on their own streams with N-way buffering."""
        c, nb = self.c, max(1, self.sc.buffers)
        hs, he, cs, ce = c["h2d_start"], c["h2d_end"], c["comp_start"], c["comp_end"]
        ds, de = c["d2h_start"], c["d2h_end"]
        h0 = host
        if i:
            h0 = max(h0, he[i - 1])
        if i >= nb:
            h0 = max(h0, de[i - nb])
        hs[i] = h0
        he[i] = h0 + self.h2d_s[i]
        cs[i] = max(he[i], ce[i - 1]) if i else he[i]
        ce[i] = cs[i] + self.comp_s[i]
        ds[i] = max(ce[i], de[i - 1]) if i else ce[i]
        de[i] = ds[i] + self.d2h_s[i]
        lf = host + 5e-5
        if i >= nb - 1:
            lf = max(lf, de[i - nb + 1])
        self.loop_free = lf


def simulate(sc: Scenario) -> SimResult:
    """Run the model. Pure: the same scenario gives the same result."""
    rng = np.random.default_rng(sc.seed)
    if sc.mode == "random":
        n = min(sc.max_messages, int(sc.duration_s / max(sc.gen_ms / 1e3, 1e-6)) + 1)
        t_sched = np.arange(n) * (sc.gen_ms / 1e3)
        phase = np.zeros(n, dtype=int)
    else:
        t_sched, phase = _schedule(sc, rng)
        n = t_sched.size
    model = _Model(sc, n, rng)
    done = n
    for i in range(n):
        if not model.arrive(i, float(t_sched[i]), int(phase[i])):
            done = i
            break
        model.queue(i)
        model.infer(i)
    c = model.c
    cols = {k_: np.asarray(v[:done], dtype=np.float64) + T0 for k_, v in c.items()}
    cols["blocked"] -= T0
    cols["t_sched"] = np.where(np.asarray(c["t_sched"][:done]) > 0, np.asarray(c["t_sched"][:done]),
                               t_sched[:done]) + T0
    if not (model.parse_recv or model.parse_loop):
        cols["parse_start"][:] = np.nan
        cols["parse_end"][:] = np.nan
    cols["phase"] = phase[:done].astype(np.float64)
    emit = None
    if sc.mode == "socket" and sc.emit_log:
        emit = {"t_sched": cols["t_sched"], "t_first_byte": cols["send_start"],
                "t_last_byte": cols["send_end"], "blocked_s": cols["blocked"]}
    return SimResult(sc, cols, emit, [p[0] for p in sc.phases])


def _fmt(x: np.ndarray) -> list[str]:
    return ["" if not np.isfinite(v) else f"{v:.6f}" for v in x.tolist()]


def _receiver_stats(res: SimResult) -> dict[str, float | int | None] | None:
    """summary.json's ``receiver`` timing, as the consumer's receiver measures it:
    the receiver waits for bytes from when it can read again (the previous message
    handed on: put into Q1, or given to a free parser) to when they are there."""
    s, c = res.scenario, res.cols
    arr = c["t_arrival"]
    if s.mode != "socket" or arr.size < 2:
        return None
    k = max(1, s.parser_threads)
    free = c["parse_start"] if s.parse_in == "receiver" else c["put_end"]
    ready = np.empty(arr.size)
    ready[0] = arr[0]
    ready[1:] = arr[:-1]
    if s.parse_in == "receiver":
        ready[k + 1:] = np.maximum(ready[k + 1:], free[: arr.size - k - 1])
    else:
        ready[1:] = np.maximum(ready[1:], free[:-1])
    wait = np.clip(arr - s.recv_ms / 1e3 - ready, 0, None)
    span = float(arr[-1] - arr[0])
    woke = int(np.sum(wait > 1e-4))
    nbytes = int(arr.size * s.nbytes)
    return {"messages": int(arr.size), "bytes": nbytes, "span_s": round(span, 6),
            "wait_s": round(float(wait[1:].sum()), 6), "read_s": round(arr.size * s.recv_ms / 1e3, 6),
            "busy_share": round(max(0.0, 1.0 - float(wait[1:].sum()) / span), 4) if span > 0 else None,
            "wakeups": woke, "ready_without_wait": int(arr.size) - woke,
            "bytes_per_wakeup": round(nbytes / max(woke, 1), 1)}


def write_run_dir(sc: Scenario | SimResult, out: str | Path) -> Path:
    """Simulate (unless given a result) and write a run directory; returns it."""
    res = sc if isinstance(sc, SimResult) else simulate(sc)
    s = res.scenario
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = res.cols
    n = c["t_arrival"].size
    rank = ["0"] * n if s.seq else [""] * n
    seq = [str(i) for i in range(n)] if s.seq else [""] * n
    arr = _fmt(c["t_arrival"])
    with (out / MESSAGES_CSV).open("w") as f:
        f.write(",".join(MESSAGE_COLUMNS) + "\n")
        f.write("".join(f"{i},{rank[i]},{seq[i]},{s.nbytes},{arr[i]},processed,,\n" for i in range(n)))
    fmt = {k_: _fmt(c[k_]) for k_ in ("parse_start", "parse_end", "put_start", "put_end",
                                      "get_start", "get_end", "h2d_start", "h2d_end",
                                      "comp_start", "comp_end", "d2h_start", "d2h_end")}
    nbuf = max(1, s.buffers)
    with (out / BATCHES_CSV).open("w") as f:
        f.write(",".join(BATCH_COLUMNS) + "\n")
        f.write("".join(
            f"{i},{rank[i]},{seq[i]},{s.events},{s.nbytes},{arr[i]},{fmt['parse_start'][i]},"
            f"{fmt['parse_end'][i]},{fmt['put_start'][i]},{fmt['put_end'][i]},"
            f"{fmt['get_start'][i]},{fmt['get_end'][i]},{i % nbuf},{fmt['h2d_start'][i]},"
            f"{fmt['h2d_end'][i]},{fmt['comp_start'][i]},{fmt['comp_end'][i]},"
            f"{fmt['d2h_start'][i]},{fmt['d2h_end'][i]}\n"
            for i in range(n)))
    with (out / GPU_CSV).open("w") as f:
        f.write(",".join(GPU_COLUMNS) + "\n")  # one simulated device: 0
        for stream, a, b in zip(GPU_STREAMS, ("h2d_start", "comp_start", "d2h_start"),
                                ("h2d_end", "comp_end", "d2h_end"), strict=True):
            f.write("".join(f"{stream},{i % nbuf},{i},{x},{y},0\n"
                            for i, x, y in zip(range(n), fmt[a], fmt[b], strict=True)))
    # Q1 depth sampled on a fixed grid: items put and not yet taken
    if n:
        t_lo = float(c["t_arrival"][0])
        t_hi = float(c["d2h_end"][-1])
        step = s.sample_interval_ms / 1e3
        grid = t_lo + np.arange(int((t_hi - t_lo) / step) + 1) * step
        depth = (np.searchsorted(np.sort(c["put_end"]), grid, side="right")
                 - np.searchsorted(np.sort(c["get_end"]), grid, side="right"))
        depth = np.clip(depth, 0, s.q1_maxsize)
        with (out / Q1_CSV).open("w") as f:
            f.write(",".join(Q1_COLUMNS) + "\n")
            f.write("".join(f"{t:.6f},{d},{s.q1_maxsize}\n" for t, d in zip(grid.tolist(), depth.tolist(), strict=True)))
    else:
        (out / Q1_CSV).write_text(",".join(Q1_COLUMNS) + "\n")
    (out / QUARANTINE_DIR).mkdir(exist_ok=True)
    summary: dict[str, Any] = {
        "received": n, "processed": n, "quarantined": 0,
        "lost": 0 if s.seq else None, "duplicated": 0 if s.seq else None,
        "reordered": 0 if s.seq else None,
        "mode": s.mode, "simulated": True,
    }
    rx = _receiver_stats(res)
    if rx is not None:
        summary["receiver"] = rx
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    if res.emit is not None:
        e = res.emit
        names = res.phase_names
        ph = c["phase"].astype(int)
        lines = []
        for i in range(n):
            lines.append(json.dumps({
                "rank": 0, "seq": i, "phase": names[ph[i]] if ph[i] < len(names) else "",
                "t_sched": round(float(e["t_sched"][i]), 6),
                "t_first_byte": round(float(e["t_first_byte"][i]), 6),
                "t_last_byte": round(float(e["t_last_byte"][i]), 6),
                "nbytes": s.nbytes, "wire_bytes": s.nbytes + 64, "events": s.events,
                "blocked_s": round(float(e["blocked_s"][i]), 6), "faults": [],
                "outcome": "delivered", "url": "tcp://127.0.0.1:12321",
            }))
        (out / EMIT_LOG).write_text("\n".join(lines) + ("\n" if lines else ""))
    (out / "scenario.json").write_text(json.dumps(asdict(s), indent=2))
    return out


# Clear-cut scenarios, one per verdict (and a bursty network one): the
# selftest and the tests run these.
SCENARIOS: dict[str, Scenario] = {
    "network": Scenario(
        name="network", bandwidth_mbps=80, phases=[("capped", 1.0, None)], compute_ms=20,
        h2d_ms=2, d2h_ms=1, parse_ms=2, expect="network"),
    "bursty-network": Scenario(
        name="bursty-network", phases=[("burst", 1.0, 40.0), ("stall", 1.5, 0.0)],
        compute_ms=15, parse_ms=1, duration_s=6.0, expect="network"),
    "receive-network": Scenario(
        name="receive-network", phases=[("unpaced", 1.0, None)], recv_ms=8.0, parse_ms=1, compute_ms=2,
        h2d_ms=0.5, d2h_ms=0.2, duration_s=2.0, expect="network"),
    "parse-in-loop": Scenario(
        name="parse-in-loop", phases=[("unpaced", 1.0, None)], parse_in="actor", parse_ms=40,
        compute_ms=3, h2d_ms=1, d2h_ms=0.5, duration_s=4.0, expect="parse"),
    "parse-receiver": Scenario(
        name="parse-receiver", phases=[("steady", 1.0, 100.0)], parse_in="receiver",
        parse_ms=30, parser_threads=1, compute_ms=5, duration_s=4.0, expect="parse"),
    "queue": Scenario(
        name="queue", phases=[("steady", 1.0, 400.0)], nbytes=16 * 1024, events=1,
        parse_ms=0.2, get_ms=4.0, poll_ms=10.0, put_ms=0.3, compute_ms=0.5, h2d_ms=0.1,
        d2h_ms=0.05, q1_maxsize=64, duration_s=3.0, expect="queue"),
    "consumer": Scenario(
        name="consumer", phases=[("steady", 1.0, 60.0)], compute_ms=40, parse_ms=2,
        duration_s=5.0, expect="consumer"),
}
