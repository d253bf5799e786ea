"""The figures a verdict rests on, computed from a run directory's measurements.

All maths is vectorised numpy over the per-batch records. Times inside are
seconds relative to ``t0`` (the earliest recorded time); durations are
reported in milliseconds (``*_ms``), rates in batches per second (``*_bps``)
or bytes per second (``*_Bps``), shares as fractions 0..1.

Decompositions that matter for the verdict:

- **get wait vs get overhead**: a get cannot return before its batch was put,
  so ``wait = min(put_end, get_end) - get_start`` (>= 0) is time the inference
  loop sat on an empty Q1 and ``get - wait`` is the queue's own cost.
- **put blocked vs put overhead**: a put into a full FIFO of ``maxsize`` M
  cannot finish before the item M places ahead has been taken; the part of
  the put before that is backpressure, the rest is the queue's own cost.
- **where parsing happens**: parse intervals after the get (before H2D) are
  inside the inference loop; parse intervals before the put are in the
  receiver's parser threads (their count = the most that overlap).
- **loop busy share** ``u_loop = 1 - (time waiting on an empty Q1) / span``: the
  inference stage's utilisation, measured directly.
- **upstream busy share** ``u_upstream``: parser-thread (receiver side) work,
  parse plus the put's own cost, over threads x span.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simstream.diagnose.load import RunData

__all__ = ["Evidence", "compute_evidence", "interval_union", "ks_statistic", "pct"]

# A gap between arrivals counts as long (a stall) when it is this many times the
# median gap, and at least LONG_GAP_MIN_S.
LONG_GAP_FACTOR = 5.0
LONG_GAP_MIN_S = 0.010


@dataclass
class Evidence:
    """``figures``: JSON-ready numbers (report.json's ``evidence``);
    ``series``: arrays for plots and the trace (relative seconds)."""

    figures: dict[str, Any]
    series: dict[str, Any] = field(default_factory=dict)
    t0: float = 0.0


def pct(x: np.ndarray, q: float) -> float | None:
    """Percentile of the finite values, None when there are none."""
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if x.size else None


def _med(x: np.ndarray) -> float | None:
    return pct(x, 50)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 4)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def interval_union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge intervals into disjoint sorted ones (vectorised)."""
    ok = np.isfinite(starts) & np.isfinite(ends) & (ends > starts)
    s, e = starts[ok], ends[ok]
    if not s.size:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    run_end = np.maximum.accumulate(e)
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > run_end[:-1]
    group = np.cumsum(new) - 1
    out_s = s[new]
    out_e = np.zeros(out_s.size)
    np.maximum.at(out_e, group, run_end)
    return out_s, out_e


def _measure(s: np.ndarray, e: np.ndarray) -> float:
    return float(np.sum(e - s)) if s.size else 0.0


def _clip(s: np.ndarray, e: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    s2, e2 = np.clip(s, lo, hi), np.clip(e, lo, hi)
    keep = e2 > s2
    return s2[keep], e2[keep]


def _intersection_measure(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """|A ∩ B| for two sets of disjoint intervals: |A| + |B| - |A ∪ B|."""
    ua = _measure(*a)
    ub = _measure(*b)
    us, ue = interval_union(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
    return max(0.0, ua + ub - _measure(us, ue))


def _coverage(iv: tuple[np.ndarray, np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Length of [a_i, b_i] covered by disjoint sorted intervals iv, per i."""
    us, ue = iv
    if not us.size:
        return np.zeros(a.size)
    lens = ue - us
    prefix = np.concatenate([[0.0], np.cumsum(lens)])

    def cum(t: np.ndarray) -> np.ndarray:
        j = np.searchsorted(us, t, side="right") - 1
        jj = np.clip(j, 0, None)
        inside = np.clip(t - us[jj], 0, lens[jj])
        return np.where(j >= 0, prefix[jj] + inside, 0.0)

    return np.maximum(cum(b) - cum(a), 0.0)


def max_concurrency(starts: np.ndarray, ends: np.ndarray) -> int:
    """The most intervals open at once (ends before starts at equal times)."""
    ok = np.isfinite(starts) & np.isfinite(ends)
    if not ok.any():
        return 0
    t = np.concatenate([starts[ok], ends[ok]])
    d = np.concatenate([np.ones(ok.sum()), -np.ones(ok.sum())])
    order = np.lexsort((d, t))
    return int(np.max(np.cumsum(d[order])))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic (max ECDF distance), numpy only."""
    a = np.sort(a[np.isfinite(a)])
    b = np.sort(b[np.isfinite(b)])
    if not a.size or not b.size:
        return None
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def _dist(x: np.ndarray) -> dict[str, float | None]:
    """p50/p90/p99/max/mean in ms, and the count."""
    x = x[np.isfinite(x)]
    return {
        "count": int(x.size),
        "mean_ms": _ms(float(x.mean())) if x.size else None,
        "p50_ms": _ms(pct(x, 50)),
        "p90_ms": _ms(pct(x, 90)),
        "p99_ms": _ms(pct(x, 99)),
        "max_ms": _ms(float(x.max())) if x.size else None,
    }


def compute_evidence(run: RunData) -> Evidence:
    """Every figure of report.json's ``evidence`` and the series for the plots."""
    b = run.batches
    n = run.n_batches
    cand = [b["t_arrival"], b["t_q1_get_start"], b["t_compute_start"]]
    if run.messages is not None and "t_arrival" in run.messages:
        cand.append(run.messages["t_arrival"])
    if run.emit is not None:
        cand += [run.emit["t_sched"], run.emit["t_first_byte"]]
    finite = [c[np.isfinite(c)] for c in cand if c.size]
    finite = [c for c in finite if c.size]
    t0 = float(min(c.min() for c in finite)) if finite else 0.0

    order = np.argsort(np.where(np.isfinite(b["t_q1_get_start"]), b["t_q1_get_start"],
                                b["t_compute_start"]), kind="stable")
    B = {k: (v[order] - t0 if k.startswith("t_") else v[order]) for k, v in b.items()}

    # message arrivals (all received, processed or not)
    if run.messages is not None and run.messages.get("t_arrival", np.empty(0)).size:
        arrivals = np.sort(run.messages["t_arrival"][np.isfinite(run.messages["t_arrival"])]) - t0
        msg_bytes = run.messages.get("nbytes", np.full(arrivals.size, np.nan))
    else:
        arrivals = np.sort(B["t_arrival"][np.isfinite(B["t_arrival"])])
        msg_bytes = B["nbytes"]
    received = int(arrivals.size)

    f: dict[str, Any] = {"batches_processed": n, "messages_received": received}
    s: dict[str, Any] = {"batches": B, "arrivals": arrivals}
    ends = B["t_d2h_end"] if np.isfinite(B["t_d2h_end"]).any() else B["t_compute_end"]
    t_start = float(arrivals[0]) if received else (float(np.nanmin(B["t_compute_start"])) if n else 0.0)
    t_end = float(np.nanmax(ends)) if n and np.isfinite(ends).any() else (
        float(arrivals[-1]) if received else t_start)
    span = max(t_end - t_start, 1e-9)
    f["span_s"] = _r(span)
    s["t_start"], s["t_end"] = t_start, t_end

    # --- stage durations (s)
    parse = B["t_parse_end"] - B["t_parse_start"]
    put = B["t_q1_put_end"] - B["t_q1_put_start"]
    get = B["t_q1_get_end"] - B["t_q1_get_start"]
    h2d = B["t_h2d_end"] - B["t_h2d_start"]
    comp = B["t_compute_end"] - B["t_compute_start"]
    d2h = B["t_d2h_end"] - B["t_d2h_start"]
    get_wait = np.clip(np.fmin(B["t_q1_put_end"], B["t_q1_get_end"]) - B["t_q1_get_start"], 0, None)
    get_wait = np.where(np.isfinite(get_wait), get_wait, np.where(np.isfinite(get), 0.0, np.nan))
    get_over = get - get_wait

    # where parsing happens
    has_parse = np.isfinite(parse)
    loc = "none"
    if has_parse.any():
        after_get = B["t_parse_start"] - B["t_q1_get_end"]
        before_put = B["t_q1_put_start"] - B["t_parse_end"]
        if np.nanmedian(after_get[has_parse]) >= -1e-6 if np.isfinite(after_get[has_parse]).any() else False:
            loc = "inference_loop"
        elif np.isfinite(before_put[has_parse]).any() and np.nanmedian(before_put[has_parse]) >= -1e-6:
            loc = "receiver"
        else:
            loc = "receiver" if not np.isfinite(B["t_q1_get_end"]).any() else "unknown"
    parse_loop = np.where(has_parse, parse, 0.0) if loc == "inference_loop" else np.zeros(n)
    parse_recv = np.where(has_parse, parse, 0.0) if loc in ("receiver", "unknown") else np.zeros(n)
    threads = max(1, max_concurrency(B["t_parse_start"], B["t_parse_end"])) if loc != "inference_loop" else 1
    f["parse_location"] = loc
    f["parser_threads_observed"] = threads if loc != "inference_loop" and has_parse.any() else (1 if loc == "inference_loop" else 0)

    # Q1 maxsize and occupancy
    q1 = run.q1
    maxsize = None
    if q1 is not None and q1.get("t", np.empty(0)).size:
        qt = q1["t"] - t0
        qd = q1["depth"]
        qm = q1.get("maxsize", np.full(qt.size, np.nan))
        if np.isfinite(qm).any() and np.nanmax(qm) > 0:
            maxsize = int(np.nanmax(qm))
        q_src = "q1.csv"
    else:
        # no samples: rebuild depth on a 10 ms grid from the puts and gets
        qt = np.arange(t_start, t_end + 0.01, 0.01)
        pe = np.sort(B["t_q1_put_end"][np.isfinite(B["t_q1_put_end"])])
        ge = np.sort(B["t_q1_get_end"][np.isfinite(B["t_q1_get_end"])])
        qd = (np.searchsorted(pe, qt, side="right") - np.searchsorted(ge, qt, side="right")).astype(float)
        q_src = "batches.csv (rebuilt)"
    if maxsize is None:
        maxsize = int(np.nanmax(qd)) if qd.size and np.isfinite(qd).any() and np.nanmax(qd) > 0 else 1
    win = (qt >= t_start) & (qt <= t_end) & np.isfinite(qd)
    if not win.any():
        win = np.isfinite(qd)
    frac = qd[win] / maxsize if maxsize else qd[win]
    f["q1"] = {
        "source": q_src,
        "maxsize": maxsize,
        "samples": int(win.sum()),
        "mean_depth": _r(float(np.mean(qd[win]))) if win.any() else None,
        "mean_occupancy": _r(float(np.mean(frac))) if win.any() else None,
        "share_empty": _r(float(np.mean(qd[win] <= 0))) if win.any() else None,
        "share_under_30pct": _r(float(np.mean(frac < 0.3))) if win.any() else None,
        "share_over_80pct": _r(float(np.mean(frac > 0.8))) if win.any() else None,
        "share_full": _r(float(np.mean(qd[win] >= maxsize))) if win.any() else None,
    }
    s["q1_t"], s["q1_depth"], s["q1_maxsize"] = qt, qd, maxsize

    # put blocked on a full Q1 vs its own cost
    put_block = np.zeros(n)
    if n and np.isfinite(put).any():
        pe_order = np.argsort(np.where(np.isfinite(B["t_q1_put_end"]), B["t_q1_put_end"], np.inf), kind="stable")
        ge_in_put_order = B["t_q1_get_end"][pe_order]
        slot = np.full(n, -np.inf)
        if n > maxsize:
            slot[maxsize:] = ge_in_put_order[: n - maxsize]
        blk = np.zeros(n)
        blk[pe_order] = np.clip(
            np.fmin(slot, B["t_q1_put_end"][pe_order]) - B["t_q1_put_start"][pe_order], 0, None)
        put_block = np.where(np.isfinite(blk), blk, 0.0)
    put_over = put - put_block

    # --- busy shares
    ws, we = _clip(B["t_q1_get_start"], B["t_q1_get_start"] + get_wait, t_start, t_end)
    wait_total = _measure(ws, we)
    if np.isfinite(get_wait).any():
        u_loop = 1.0 - wait_total / span
        u_loop_src = "q1 get waits"
    else:
        u_loop = 1.0 - (f["q1"]["share_empty"] or 0.0)
        u_loop_src = "q1 empty share"
    up_work = np.nansum(parse_recv) + np.nansum(np.where(np.isfinite(put_over), put_over, 0.0))
    u_up = up_work / (threads * span)
    # where the loop's busy time went (totals, so rare long costs such as a
    # polling get's sleep count in full, which medians would hide)
    busy_total = max(span - wait_total, 0.0)
    q_get = float(np.nansum(np.clip(get_over, 0, None)))
    p_loop = float(np.nansum(parse_loop))
    f["loop_time_s"] = {
        "busy": _r(busy_total),
        "wait_on_empty_q1": _r(wait_total),
        "q1_get_overhead": _r(q_get),
        "parse": _r(p_loop),
        "inference": _r(max(busy_total - q_get - p_loop, 0.0)),
    }
    f["upstream_time_s"] = {
        "threads": threads,
        "parse": _r(float(np.nansum(parse_recv))),
        "q1_put_overhead": _r(float(np.nansum(np.clip(np.where(np.isfinite(put_over), put_over, 0.0), 0, None)))),
    }
    f["loop_busy_share"] = _r(u_loop)
    f["loop_busy_source"] = u_loop_src
    f["loop_wait_on_empty_q1_s"] = _r(wait_total)
    f["upstream_busy_share"] = _r(u_up)

    # --- GPU timeline
    g = run.gpu
    if g is not None and g.get("t_start", np.empty(0)).size and "stream" in g:
        # gpu.csv is the GPU's own record (it may hold intervals no batch row has)
        is_c = g["stream"] == 1
        c_s, c_e = g["t_start"][is_c] - t0, g["t_end"][is_c] - t0
        all_s, all_e = g["t_start"] - t0, g["t_end"] - t0
        dev_c: np.ndarray | None = g["device"][is_c] if "device" in g else None
        f["gpu_source"] = "gpu.csv"
    else:
        c_s, c_e = B["t_compute_start"], B["t_compute_end"]
        all_s = np.concatenate([B["t_h2d_start"], B["t_compute_start"], B["t_d2h_start"]])
        all_e = np.concatenate([B["t_h2d_end"], B["t_compute_end"], B["t_d2h_end"]])
        dev_c = None
        f["gpu_source"] = "batches.csv"
    cs, ce = _clip(*interval_union(c_s, c_e), t_start, t_end)
    busy_c = _measure(cs, ce)
    devices = np.unique(dev_c) if dev_c is not None else np.empty(0)
    if dev_c is not None and devices.size > 1:
        # several inference devices (Ray actors): the busy share is each one's own,
        # averaged; the idle gaps below are those of the union (no device busy)
        per = []
        for d in devices:
            on = dev_c == d
            per.append(_measure(*_clip(*interval_union(c_s[on], c_e[on]), t_start, t_end)))
        f["gpu_busy_compute_share_by_device"] = [_r(b / span) for b in per]
        busy_c = float(np.mean(per))
    as_, ae = _clip(*interval_union(all_s, all_e), t_start, t_end)
    f["gpu_busy_compute_share"] = _r(busy_c / span)
    f["gpu_busy_any_stream_share"] = _r(_measure(as_, ae) / span)
    gaps = cs[1:] - ce[:-1] if cs.size > 1 else np.empty(0)
    f["gpu_idle_gaps"] = _dist(gaps)
    if gaps.size:
        g_at = int(np.argmax(gaps))
        s["longest_gap"] = (float(ce[g_at]), float(cs[g_at + 1]))
    idle_s = np.concatenate([[t_start], ce])
    idle_e = np.concatenate([cs, [t_end]])
    keep = idle_e > idle_s
    idle = (idle_s[keep], idle_e[keep])
    idle_total = _measure(*idle)
    on_empty = _intersection_measure(idle, (ws, we)) if idle_total > 0 else 0.0
    f["gpu_idle_s"] = _r(idle_total)
    f["gpu_idle_share_waiting_on_empty_q1"] = _r(on_empty / idle_total) if idle_total > 0 else None
    s["compute_union"] = (cs, ce)

    # --- rates and capacity
    arr_span = float(arrivals[-1] - arrivals[0]) if received > 1 else 0.0
    f["arrival_rate_bps"] = _r((received - 1) / arr_span if arr_span > 0 else None)
    f["throughput_bps"] = _r(n / span if n else 0.0)
    ia = np.diff(arrivals)
    ia_mean = float(ia.mean()) if ia.size else 0.0
    f["interarrival"] = _dist(ia)
    f["interarrival_cv"] = _r(float(ia.std() / ia_mean)) if ia.size > 1 and ia_mean > 0 else None
    long_thr = max(LONG_GAP_FACTOR * float(np.median(ia)), LONG_GAP_MIN_S) if ia.size else LONG_GAP_MIN_S
    long_idx = np.nonzero(ia > long_thr)[0]
    f["arrival_long_gaps"] = {
        "threshold_ms": _ms(long_thr),
        "count": int(long_idx.size),
        "total_s": _r(float(ia[long_idx].sum())) if long_idx.size else 0.0,
        "longest_s": _r(float(ia.max())) if ia.size else None,
    }
    s["long_gaps"] = (arrivals[long_idx], arrivals[long_idx + 1]) if long_idx.size else (np.empty(0), np.empty(0))

    med = {k: _med(v) for k, v in (("parse", parse), ("put", put), ("get", get),
                                   ("get_overhead", get_over), ("put_overhead", put_over),
                                   ("h2d", h2d), ("compute", comp), ("d2h", d2h))}
    # async GPU: the loop takes the next batch before this one's D2H is done
    nxt = B["t_q1_get_start"][1:] if n > 1 else np.empty(0)
    ov = nxt < B["t_d2h_end"][:-1] - 1e-6 if n > 1 else np.empty(0, dtype=bool)
    gpu_async = bool(np.mean(ov) > 0.5) if ov.size else True
    streams = [med[k] or 0.0 for k in ("h2d", "compute", "d2h")]
    host = (med["get_overhead"] or 0.0) + (_med(parse_loop) or 0.0 if loc == "inference_loop" else 0.0)
    gpu_cycle = max(streams) if gpu_async else sum(streams)
    model_cycle = max(host, gpu_cycle) if gpu_async else host + gpu_cycle
    fed = (get_wait[1:] <= 1e-4) & (get_wait[:-1] <= 1e-4) if n > 1 else np.empty(0, dtype=bool)
    fed_cycles = np.diff(B["t_q1_get_start"])[fed] if n > 1 else np.empty(0)
    fed_cycles = fed_cycles[np.isfinite(fed_cycles) & (fed_cycles > 0)]
    if fed_cycles.size >= max(10, 0.05 * n):
        cycle = float(np.median(fed_cycles))
        cap_src = "measured: loop cycle while Q1 held a batch"
    else:
        cycle = model_cycle
        cap_src = "stage times: max(host part, busiest stream)" if gpu_async else "stage times: sum (serial)"
    cap = 1.0 / cycle if cycle > 0 else None
    # what the loop could do if parsing left it
    host_np = med["get_overhead"] or 0.0
    cycle_np = max(host_np, gpu_cycle) if gpu_async else host_np + gpu_cycle
    f["capacity_without_loop_parse_bps"] = _r(1.0 / cycle_np if cycle_np > 0 else None)
    f["gpu_streams_overlap"] = gpu_async
    f["capacity_bps"] = _r(cap)
    f["capacity_source"] = cap_src
    f["capacity_from_stage_times_bps"] = _r(1.0 / model_cycle if model_cycle > 0 else None)
    f["arrival_vs_capacity"] = _r(f["arrival_rate_bps"] / cap) if cap and f["arrival_rate_bps"] else None
    up_cost = (_med(parse_recv) or 0.0) + (med["put_overhead"] or 0.0)
    f["upstream_capacity_bps"] = _r(threads / up_cost if up_cost > 0 else None)

    f["per_batch_ms"] = {
        "parse": _ms(med["parse"]),
        "parse_in_loop": _ms(_med(parse_loop)) if loc == "inference_loop" else 0.0,
        "q1_put": _ms(med["put"]),
        "q1_put_overhead": _ms(med["put_overhead"]),
        "q1_get": _ms(med["get"]),
        "q1_get_overhead": _ms(med["get_overhead"]),
        "q1_op_overhead": _ms((med["put_overhead"] or 0.0) + (med["get_overhead"] or 0.0)),
        "h2d": _ms(med["h2d"]),
        "compute": _ms(med["compute"]),
        "d2h": _ms(med["d2h"]),
        "gpu_cycle": _ms(gpu_cycle),
        "loop_host": _ms(host),
        # the part of the measured loop cycle that is neither parse nor Q1 get:
        # submitting to the inference stage (staging copies, waiting for a buffer)
        "loop_inference": _ms(max(cycle - host, 0.0)) if cap_src.startswith("measured") else None,
    }
    c_ms = med["compute"] or 0.0
    f["parse_vs_compute"] = _r((med["parse"] or 0.0) / c_ms) if c_ms > 0 and med["parse"] is not None else None
    f["queue_op_vs_compute"] = _r(((med["put_overhead"] or 0.0) + (med["get_overhead"] or 0.0)) / c_ms) if c_ms > 0 else None
    f["parse_share_of_loop"] = _r(p_loop / busy_total) if loc == "inference_loop" and busy_total > 0 else 0.0
    f["stage_distributions"] = {"h2d": _dist(h2d), "compute": _dist(comp), "d2h": _dist(d2h),
                                "parse": _dist(parse), "q1_get_overhead": _dist(get_over),
                                "q1_put_overhead": _dist(put_over)}
    f["starvation"] = bool((f["gpu_busy_any_stream_share"] or 0) < 0.9 and (
        (f["q1"]["share_under_30pct"] or 0) > 0.3 or (f["q1"]["share_empty"] or 0) > 0.2))
    # waits counted from the first arrival: the loop's wait for the very first batch
    # is start-up, not starvation
    wait_in_run = np.clip(np.fmin(B["t_q1_put_end"], B["t_q1_get_end"])
                          - np.fmax(B["t_q1_get_start"], t_start), 0, None)
    s.update({"parse": parse, "put": put, "get": get, "get_wait": get_wait, "get_over": get_over,
              "get_wait_in_run": np.where(np.isfinite(wait_in_run), wait_in_run, 0.0),
              "put_block": put_block, "put_over": put_over, "h2d": h2d, "compute": comp, "d2h": d2h,
              "queue_time": B["t_q1_get_end"] - B["t_q1_put_start"], "capacity_bps": cap})

    # bytes
    nb = msg_bytes[np.isfinite(msg_bytes)] if msg_bytes is not None else np.empty(0)
    f["achieved_byte_rate_Bps"] = _r(float(nb.sum()) / arr_span, 1) if arr_span > 0 and nb.size else None

    if run.emit is not None:
        f["emitter"] = _emit_evidence(run, t0, arrivals, s["long_gaps"], f)
        s["emit"] = {k: (v - t0 if k.startswith("t_") else v) for k, v in run.emit.items()
                     if isinstance(v, np.ndarray)}
    else:
        f["emitter"] = None
    f["consumer_side_only"] = run.emit is None
    f["sequence_numbers"] = run.has_seq
    f["quarantined"] = int(run.summary.get("quarantined") or run.quarantined_files or 0)
    return Evidence(f, s, t0)


def _blocked_share(e: dict[str, Any], sent: np.ndarray, span: float) -> float:
    """The share of each rank's time it was held back by backpressure, averaged over
    ranks. Per rank the scheduler's waits for SNDHWM room (hwm_wait_s) follow one
    another, and so do the writer's waits inside socket sends (socket_wait_s), but
    the two overlap (one message waits for room while an earlier one is being
    sent), so a rank's blocked time is the larger of its two sums, not their
    total. Logs without the split (older) fall back to blocked_s."""
    ranks = e["rank"][sent]
    hwm, sock = e.get("hwm_wait_s"), e.get("socket_wait_s")
    if hwm is None or sock is None or not np.isfinite(hwm[sent]).any():
        hwm, sock = e["blocked_s"], np.zeros_like(e["blocked_s"])
    hwm, sock = hwm[sent], sock[sent]
    keys = np.unique(ranks[np.isfinite(ranks)]) if np.isfinite(ranks).any() else np.array([0.0])
    total = 0.0
    for r in keys:
        on = ranks == r if np.isfinite(ranks).any() else np.ones(ranks.shape, dtype=bool)
        total += min(max(float(np.nansum(hwm[on])), float(np.nansum(sock[on]))), span)
    return total / (span * len(keys))


def _emit_evidence(run: RunData, t0: float, arrivals: np.ndarray,
                   long_gaps: tuple[np.ndarray, np.ndarray], f: dict[str, Any]) -> dict[str, Any]:
    """How the emitter's own record lines up with what arrived."""
    e = run.emit
    assert e is not None
    tf = e["t_first_byte"] - t0
    tl = e["t_last_byte"] - t0
    ts = e["t_sched"] - t0
    sent = np.isfinite(tf) & np.isfinite(tl)
    out: dict[str, Any] = {"attempts": int(ts.size), "completed": int(sent.sum())}
    if sent.any():
        lo, hi = float(tf[sent].min()), float(tl[sent].max())
        esp = max(hi - lo, 1e-9)
        wb = e["wire_bytes"][sent]
        out["emitted_byte_rate_Bps"] = _r(float(np.nansum(wb)) / esp, 1)
        out["emitted_rate_bps"] = _r(float(sent.sum()) / esp)
        sch = np.sort(ts[np.isfinite(ts)])
        out["offered_rate_bps"] = _r((sch.size - 1) / float(sch[-1] - sch[0])) if sch.size > 1 and sch[-1] > sch[0] else None
        ach = f.get("achieved_byte_rate_Bps")
        out["achieved_vs_emitted_bytes"] = _r(ach / out["emitted_byte_rate_Bps"]) if ach and out["emitted_byte_rate_Bps"] else None
        sd = (tl - tf)[sent]
        with np.errstate(divide="ignore", invalid="ignore"):
            per_msg = np.where(sd > 0, wb / sd, np.nan)
        out["send_rate_while_sending_Bps"] = _r(pct(per_msg, 50), 1)
        us, ue = interval_union(tf[sent], tl[sent])
        out["sending_share"] = _r(_measure(us, ue) / esp)
        out["blocked_share"] = _r(_blocked_share(e, sent, esp))
        lag = tf - ts
        out["schedule_lag"] = _dist(lag[sent])
    # transport latency by (rank, seq)
    if run.has_seq and sent.any():
        key_e = e["rank"] * 1e9 + e["seq"]
        b = run.batches
        key_b = b["rank"] * 1e9 + b["seq"]
        ok = np.isfinite(key_b)
        order = np.argsort(key_e, kind="stable")
        ke = key_e[order]
        pos = np.clip(np.searchsorted(ke, key_b[ok]), 0, max(ke.size - 1, 0))
        match = ke[pos] == key_b[ok] if ke.size else np.zeros(0, dtype=bool)
        lat = (b["t_arrival"][ok] - e["t_last_byte"][order][pos])[match]
        out["last_byte_to_arrival"] = _dist(lat)
    # long arrival gaps: what the emitter was doing meanwhile
    ga, gb = long_gaps
    if ga.size:
        glen = np.maximum(gb - ga, 1e-12)
        so = np.sort(ts[np.isfinite(ts)])
        # silent: the part of the gap before the emitter's next scheduled message
        j = np.searchsorted(so, ga, side="right")
        nxt = np.where(j < so.size, so[np.clip(j, 0, max(so.size - 1, 0))], np.inf) if so.size else np.full(ga.size, np.inf)
        silent_frac = np.clip((np.minimum(nxt, gb) - ga) / glen, 0, 1)
        send_frac = _coverage(interval_union(tf[sent], tl[sent]), ga, gb) / glen
        blk = sent & np.isfinite(e["blocked_s"]) & (e["blocked_s"] > 0)
        blocked_frac = _coverage(interval_union((tf - e["blocked_s"])[blk], tf[blk]), ga, gb) / glen
        fault_stall = np.array(["stall" in fl for fl in e["faults"]], dtype=bool)
        st = np.sort(tf[fault_stall & np.isfinite(tf)])
        fs = (np.searchsorted(st, gb, side="right") - np.searchsorted(st, ga, side="left")) > 0
        silent = (silent_frac >= 0.5) | fs
        blocked = ~silent & (blocked_frac >= 0.5)
        flight = ~silent & ~blocked & (send_frac >= 0.5)
        out["long_gaps"] = {
            "count": int(ga.size),
            "share_emitter_silent": _r(float(np.mean(silent))),
            "share_emitter_blocked": _r(float(np.mean(blocked))),
            "share_bytes_in_flight": _r(float(np.mean(flight))),
            "share_other": _r(float(np.mean(~silent & ~blocked & ~flight))),
            "share_fault_stall": _r(float(np.mean(fs))),
            "silent_time_share": _r(float(np.sum(silent_frac * glen) / np.sum(glen))),
        }
        # the phase of the emitter's last message before each gap
        sch = np.argsort(ts, kind="stable")
        k = np.clip(np.searchsorted(ts[sch], ga, side="right") - 1, 0, None)
        names, counts = np.unique(e["phase"][sch][k], return_counts=True)
        out["long_gaps"]["phase_before_gap"] = {str(a): int(c) for a, c in zip(names, counts, strict=True)}
    return out
