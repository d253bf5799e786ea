"""trace.json: the run in Chrome trace event format, for Perfetto (ui.perfetto.dev)
or chrome://tracing.

One JSON object ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``.
``ts``/``dur`` are microseconds since the run's first record (``otherData.t0_unix_s``).
Processes and threads ("M" metadata events name them):

Slices on one thread never overlap (Perfetto drops overlapping ones): a track
whose intervals overlap is split into lanes (``Q1 put (2)``, ...).

- pid 1 ``consumer``: ``receiver`` (an instant per arrival, with its size),
  ``parser N`` (receiver-side parse, one lane per concurrent thread) or
  ``inference loop: parse``, ``Q1 put``, ``Q1 get``, ``receiver: long arrival
  gaps``; a ``Q1 depth`` counter ("C").
- pid 2 ``inference device (<device>)``: one thread per stream and buffer (``h2d buf 0``,
  ``compute buf 1``, ...), "X" events per batch, and ``compute idle`` (the gaps
  between compute intervals).
- pid 3 ``emitter`` (only with an emit log): one thread per rank, an "X" event
  per message from first to last byte (args: bytes, blocked_s, phase, outcome).

Events are written as text straight from numpy arrays (no dict per event), so a
10-minute run at 100 batches/s writes in well under a second.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path

import numpy as np

from simstream.diagnose.evidence import Evidence

__all__ = ["write_trace"]

PID_CONSUMER, PID_GPU, PID_EMITTER = 1, 2, 3
TID_RECEIVER, TID_PUT, TID_GET, TID_LOOP_PARSE = 1, 2, 3, 4
TID_PARSER0 = 10
TID_GAPS = 5
TID_GPU_IDLE = 999


def _meta(pid: int, tid: int | None, name: str, sort: int | None = None) -> list[str]:
    if tid is None:
        out = [json.dumps({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}})]
        if sort is not None:
            out.append(json.dumps({"ph": "M", "pid": pid, "name": "process_sort_index",
                                   "args": {"sort_index": sort}}))
        return out
    out = [json.dumps({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}})]
    if sort is not None:
        out.append(json.dumps({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index",
                               "args": {"sort_index": sort}}))
    return out


def _complete(name: str, pid: int, tid: int, start: np.ndarray, end: np.ndarray,
              batch: np.ndarray | None = None) -> list[str]:
    """'X' events for finite [start, end] (relative seconds)."""
    ok = np.isfinite(start) & np.isfinite(end)
    ts = (start[ok] * 1e6).tolist()
    du = (np.maximum(end[ok] - start[ok], 0.0) * 1e6).tolist()
    head = f'{{"ph":"X","name":"{name}","pid":{pid},"tid":{tid},"ts":'
    if batch is None:
        return [f'{head}{t:.3f},"dur":{d:.3f}}}' for t, d in zip(ts, du, strict=True)]
    bi = batch[ok].tolist()
    return [f'{head}{t:.3f},"dur":{d:.3f},"args":{{"batch":{int(b) if b == b else -1}}}}}'
            for t, d, b in zip(ts, du, bi, strict=True)]


def _lanes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Greedy lane per interval so that intervals in one lane never overlap."""
    lanes = np.zeros(start.size, dtype=int)
    order = np.argsort(np.nan_to_num(start, nan=np.inf), kind="stable")
    free: list[tuple[float, int]] = []
    n_lanes = 0
    for i in order.tolist():
        s, e = float(start[i]), float(end[i])
        if not (s == s and e == e):
            continue
        if free and free[0][0] <= s:
            _, lane = heapq.heappop(free)
        else:
            lane = n_lanes
            n_lanes += 1
        lanes[i] = lane
        heapq.heappush(free, (e, lane))
    return lanes


def _overlaps(start: np.ndarray, end: np.ndarray) -> bool:
    """True when some intervals overlap without nesting-free order (Perfetto drops those)."""
    ok = np.isfinite(start) & np.isfinite(end)
    if ok.sum() < 2:
        return False
    o = np.argsort(start[ok], kind="stable")
    s, e = start[ok][o], end[ok][o]
    return bool(np.any(s[1:] < np.maximum.accumulate(e)[:-1] - 1e-9))


def _track(lines: list[str], name: str, label: str, pid: int, tid: int, sort: int,
           start: np.ndarray, end: np.ndarray, batch: np.ndarray) -> None:
    """One thread of 'X' events, split into extra lanes (tid + 1000 * lane) where
    intervals overlap, since a trace thread must hold non-overlapping slices."""
    lanes = _lanes(start, end) if _overlaps(start, end) else np.zeros(start.size, dtype=int)
    for lane in range(int(lanes.max()) + 1 if lanes.size else 1):
        m = lanes == lane
        t = tid + 1000 * lane
        lines += _meta(pid, t, label if lane == 0 else f"{label} ({lane + 1})", sort)
        lines += _complete(name, pid, t, start[m], end[m], batch[m])


def _emitter_lines(em: dict[str, np.ndarray]) -> list[str]:
    """The emitter's sends, one trace thread per rank."""
    out: list[str] = []
    out += _meta(PID_EMITTER, None, "emitter", 0)
    rank = np.nan_to_num(em["rank"], nan=0).astype(int)
    for r in sorted(set(rank.tolist())):
        m = rank == r
        out += _meta(PID_EMITTER, r, f"rank {r}", r)
        tf, tl = em["t_first_byte"][m], em["t_last_byte"][m]
        okm = np.isfinite(tf) & np.isfinite(tl)
        ph = em["phase"][m][okm].tolist()
        oc = em["outcome"][m][okm].tolist()
        wb = np.nan_to_num(em["wire_bytes"][m][okm], nan=-1).astype(np.int64).tolist()
        bl = np.nan_to_num(em["blocked_s"][m][okm], nan=0.0).tolist()
        sq = np.nan_to_num(em["seq"][m][okm], nan=-1).astype(np.int64).tolist()
        quoted: dict[str, str] = {}  # phase/outcome names are user text: escape each once
        for t1, t2, p, o, w, bs, q in zip(tf[okm].tolist(), tl[okm].tolist(), ph, oc, wb, bl, sq, strict=True):
            qp = quoted.get(p) or quoted.setdefault(p, json.dumps(p))
            qo = quoted.get(o) or quoted.setdefault(o, json.dumps(o))
            out.append(
                f'{{"ph":"X","name":"send","pid":{PID_EMITTER},"tid":{r},"ts":{t1 * 1e6:.3f},'
                f'"dur":{max(t2 - t1, 0.0) * 1e6:.3f},"args":{{"seq":{q},"wire_bytes":{w},'
                f'"blocked_s":{bs:.6f},"phase":{qp},"outcome":{qo}}}}}')
    return out


def write_trace(ev: Evidence, path: Path) -> Path:
    """Write trace.json; returns the path."""
    s = ev.series
    b = s["batches"]
    idx = b["index"]
    ev_lines: list[str] = []
    ev_lines += _meta(PID_CONSUMER, None, "consumer", 1)
    dev = ev.figures.device
    ev_lines += _meta(PID_GPU, None,
                      f"inference device ({dev.id})" if dev.id else "inference device", 2)
    ev_lines += _meta(PID_CONSUMER, TID_RECEIVER, "receiver", 0)

    arr = s["arrivals"]
    nbytes = b["nbytes"]
    if arr.size == b["t_arrival"].size:
        sizes = nbytes[np.argsort(b["t_arrival"], kind="stable")]
    else:
        sizes = np.full(arr.size, np.nan)
    ev_lines += [
        f'{{"ph":"i","s":"t","name":"arrival","pid":{PID_CONSUMER},"tid":{TID_RECEIVER},'
        f'"ts":{t * 1e6:.3f},"args":{{"nbytes":{int(z) if z == z else -1}}}}}'
        for t, z in zip(arr.tolist(), sizes.tolist(), strict=True)
    ]
    ga, gb = s["long_gaps"]
    if ga.size:
        ev_lines += _meta(PID_CONSUMER, TID_GAPS, "receiver: long arrival gaps", 1)
        ev_lines += _complete("arrival gap", PID_CONSUMER, TID_GAPS, ga, gb)
    cs, ce = s["compute_union"]
    if cs.size > 1:
        ev_lines += _meta(PID_GPU, TID_GPU_IDLE, "compute idle", 99)
        ev_lines += _complete("compute idle", PID_GPU, TID_GPU_IDLE, ce[:-1], cs[1:])
    loc = ev.figures.parse.location
    if np.isfinite(b["t_parse_start"]).any():
        if loc == "inference_loop":
            ev_lines += _meta(PID_CONSUMER, TID_LOOP_PARSE, "inference loop: parse", 22)
            ev_lines += _complete("parse", PID_CONSUMER, TID_LOOP_PARSE, b["t_parse_start"], b["t_parse_end"], idx)
        else:
            lanes = _lanes(b["t_parse_start"], b["t_parse_end"])
            for lane in range(int(lanes.max()) + 1 if lanes.size else 0):
                m = lanes == lane
                ev_lines += _meta(PID_CONSUMER, TID_PARSER0 + lane, f"parser {lane}", 10 + lane)
                ev_lines += _complete("parse", PID_CONSUMER, TID_PARSER0 + lane,
                                      b["t_parse_start"][m], b["t_parse_end"][m], idx[m])
    _track(ev_lines, "put", "Q1 put", PID_CONSUMER, TID_PUT, 20, b["t_q1_put_start"], b["t_q1_put_end"], idx)
    _track(ev_lines, "get", "Q1 get", PID_CONSUMER, TID_GET, 21, b["t_q1_get_start"], b["t_q1_get_end"], idx)

    qt, qd = s["q1_t"], s["q1_depth"]
    ok = np.isfinite(qt) & np.isfinite(qd)
    ev_lines += [
        f'{{"ph":"C","name":"Q1 depth","pid":{PID_CONSUMER},"tid":0,"ts":{t * 1e6:.3f},'
        f'"args":{{"depth":{d:g}}}}}'
        for t, d in zip(qt[ok].tolist(), qd[ok].tolist(), strict=True)
    ]

    buf = b["buffer"]
    bufs = sorted({int(x) for x in buf[np.isfinite(buf)]}) or [0]
    no_buf = ~np.isfinite(buf)
    for k, stream in enumerate(("h2d", "compute", "d2h")):
        for j, bf in enumerate(bufs):
            tid = 100 * (k + 1) + bf
            m = (buf == bf) | (no_buf & (bf == bufs[0]))
            _track(ev_lines, stream, f"{stream} buf {bf}", PID_GPU, tid, 10 * k + j,
                   b[f"t_{stream}_start"][m], b[f"t_{stream}_end"][m], idx[m])

    em = s.get("emit")
    if em is not None:
        ev_lines += _emitter_lines(em)

    other = json.dumps({"t0_unix_s": ev.t0, "verdict_source": "simstream diagnose"})
    with path.open("w") as f:
        f.write('{"displayTimeUnit":"ms","otherData":' + other + ',"traceEvents":[\n')
        f.write(",\n".join(ev_lines))
        f.write("\n]}\n")
    return path
