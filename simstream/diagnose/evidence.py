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
- **upstream busy share** ``u_upstream``: the receiver side's busiest part: its
  parser threads' work, parse plus the put's own cost, over threads x span (as
  when each parser puts its own batch), or the put's own cost alone over the
  threads that put (as when one feeder puts for all parsers, the consumer's
  production layout), whichever is larger.
- **the put's own cost**: where the consumer recorded its Q1 counters
  (summary.json ``q1``), the producer's own clock around each whole put call
  less the time it waited for room (``put_s - blocked_s``); a queue whose
  shards stamp an item's entry (Ray) stamps it mid-call, before the answer has
  travelled back, so the per-batch put intervals miss part of the call.
  Without the counters, the per-batch intervals less the FIFO model's wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from simstream.diagnose.cause import shaping_cap
from simstream.diagnose.figures import (
    ArrivalFigures,
    CapacityFigures,
    CostFigures,
    Counts,
    DeviceFigures,
    Dist,
    EmitterFigures,
    EmitterGaps,
    EmitterSending,
    Figures,
    LongGaps,
    LoopFigures,
    LoopTime,
    ParseFigures,
    PerBatchMs,
    Q1Figures,
    ReceiverFigures,
    UpstreamFigures,
    UpstreamTime,
    figures_json,
)
from simstream.diagnose.load import RunData
from simstream.records.contract import Q1_HIGH_SHARE, STARVATION_UTILISATION

__all__ = ["Evidence", "compute_evidence", "interval_union", "ks_statistic", "pct"]

# A gap between arrivals counts as long (a stall) when it is this many times the
# median gap, and at least LONG_GAP_MIN_S.
LONG_GAP_FACTOR = 5.0
LONG_GAP_MIN_S = 0.010


@dataclass
class Evidence:
    """``figures``: the typed figures (``figures.Figures``); ``series``: arrays for
    plots and the trace (relative seconds); ``t0``: the Unix time they start at."""

    figures: Figures
    series: dict[str, Any] = field(default_factory=dict)
    t0: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """report.json's ``evidence`` object."""
        return figures_json(self.figures)


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


def _dist(x: np.ndarray) -> Dist:
    """p50/p90/p99/max/mean in ms, and the count."""
    x = x[np.isfinite(x)]
    return Dist(
        count=int(x.size),
        mean_ms=_ms(float(x.mean())) if x.size else None,
        p50_ms=_ms(pct(x, 50)),
        p90_ms=_ms(pct(x, 90)),
        p99_ms=_ms(pct(x, 99)),
        max_ms=_ms(float(x.max())) if x.size else None,
    )


@dataclass
class _Base:
    """The batches in get order, relative to ``t0``, with the run's span and the
    per-batch stage durations (seconds) every family starts from."""

    B: dict[str, np.ndarray]
    n: int
    t0: float
    t_start: float
    t_end: float
    arrivals: np.ndarray
    msg_bytes: np.ndarray | None
    dur: dict[str, np.ndarray]

    @property
    def span(self) -> float:
        return max(self.t_end - self.t_start, 1e-9)


def _t0(run: RunData) -> float:
    b = run.batches
    cand = [b["t_arrival"], b["t_q1_get_start"], b["t_compute_start"]]
    if run.messages is not None and "t_arrival" in run.messages:
        cand.append(run.messages["t_arrival"])
    if run.emit is not None:
        cand += [run.emit["t_sched"], run.emit["t_first_byte"]]
    finite = [c[np.isfinite(c)] for c in cand if c.size]
    finite = [c for c in finite if c.size]
    return float(min(c.min() for c in finite)) if finite else 0.0


def _durations(B: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stage durations (s); the get split into waiting for the put and its own cost."""
    d = {"parse": B["t_parse_end"] - B["t_parse_start"], "put": B["t_q1_put_end"] - B["t_q1_put_start"],
         "get": B["t_q1_get_end"] - B["t_q1_get_start"], "h2d": B["t_h2d_end"] - B["t_h2d_start"],
         "compute": B["t_compute_end"] - B["t_compute_start"], "d2h": B["t_d2h_end"] - B["t_d2h_start"]}
    wait = np.clip(np.fmin(B["t_q1_put_end"], B["t_q1_get_end"]) - B["t_q1_get_start"], 0, None)
    d["get_wait"] = np.where(np.isfinite(wait), wait, np.where(np.isfinite(d["get"]), 0.0, np.nan))
    d["get_over"] = d["get"] - d["get_wait"]
    return d


def _base(run: RunData) -> _Base:
    b, n = run.batches, run.n_batches
    t0 = _t0(run)
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
    ends = B["t_d2h_end"] if np.isfinite(B["t_d2h_end"]).any() else B["t_compute_end"]
    t_start = float(arrivals[0]) if received else (float(np.nanmin(B["t_compute_start"])) if n else 0.0)
    t_end = float(np.nanmax(ends)) if n and np.isfinite(ends).any() else (
        float(arrivals[-1]) if received else t_start)
    return _Base(B, n, t0, t_start, t_end, arrivals, msg_bytes, _durations(B))


def _parse_where(base: _Base) -> tuple[ParseFigures, np.ndarray, np.ndarray, int]:
    """Where parsing happens: after the get (in the loop) or before the put (the
    receiver's threads). Returns the figures, the per-batch parse time in the loop
    and in the receiver, and the receiver's thread count."""
    B, parse, n = base.B, base.dur["parse"], base.n
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
    observed = threads if loc != "inference_loop" and has_parse.any() else (1 if loc == "inference_loop" else 0)
    return ParseFigures(loc, observed), parse_loop, parse_recv, threads


def _q1_depth(run: RunData, base: _Base) -> tuple[np.ndarray, np.ndarray, int | None, str]:
    """Q1 depth samples (relative t, depth), the recorded maxsize and the source."""
    q1 = run.q1
    if q1 is not None and q1.get("t", np.empty(0)).size:
        qm = q1.get("maxsize", np.full(q1["t"].size, np.nan))
        maxsize = int(np.nanmax(qm)) if np.isfinite(qm).any() and np.nanmax(qm) > 0 else None
        return q1["t"] - base.t0, q1["depth"], maxsize, "q1.csv"
    # no samples: rebuild depth on a 10 ms grid from the puts and gets
    B = base.B
    qt = np.arange(base.t_start, base.t_end + 0.01, 0.01)
    pe = np.sort(B["t_q1_put_end"][np.isfinite(B["t_q1_put_end"])])
    ge = np.sort(B["t_q1_get_end"][np.isfinite(B["t_q1_get_end"])])
    qd = (np.searchsorted(pe, qt, side="right") - np.searchsorted(ge, qt, side="right")).astype(float)
    return qt, qd, None, "batches.csv (rebuilt)"


def _q1(run: RunData, base: _Base) -> tuple[Q1Figures, np.ndarray, np.ndarray]:
    """Q1 occupancy figures, and the depth series (t, depth)."""
    qt, qd, maxsize, src = _q1_depth(run, base)
    if maxsize is None:
        maxsize = int(np.nanmax(qd)) if qd.size and np.isfinite(qd).any() and np.nanmax(qd) > 0 else 1
    win = (qt >= base.t_start) & (qt <= base.t_end) & np.isfinite(qd)
    if not win.any():
        win = np.isfinite(qd)
    d = qd[win]
    frac = d / maxsize if maxsize else d

    def share(x: np.ndarray) -> float | None:
        return _r(float(np.mean(x))) if win.any() else None

    return Q1Figures(
        source=src, maxsize=maxsize, samples=int(win.sum()), mean_depth=share(d),
        mean_occupancy=share(frac), share_empty=share(d <= 0),
        share_under_30pct=share(frac < STARVATION_UTILISATION),
        share_over_80pct=share(frac > Q1_HIGH_SHARE), share_full=share(d >= maxsize)), qt, qd


def _put_block(base: _Base, maxsize: int) -> np.ndarray:
    """Per batch, the part of its put spent blocked on a full Q1 (s)."""
    B, n, put = base.B, base.n, base.dur["put"]
    if not (n and np.isfinite(put).any()):
        return np.zeros(n)
    pe_order = np.argsort(np.where(np.isfinite(B["t_q1_put_end"]), B["t_q1_put_end"], np.inf), kind="stable")
    ge_in_put_order = B["t_q1_get_end"][pe_order]
    slot = np.full(n, -np.inf)
    if n > maxsize:
        slot[maxsize:] = ge_in_put_order[: n - maxsize]
    blk = np.zeros(n)
    blk[pe_order] = np.clip(np.fmin(slot, B["t_q1_put_end"][pe_order]) - B["t_q1_put_start"][pe_order], 0, None)
    return np.where(np.isfinite(blk), blk, 0.0)


def _caller_put_own(summary: dict[str, Any]) -> float | None:
    """The put's own cost over the run (s) as the putting side's clock saw it: time in
    put calls less time waiting for room (summary.json ``q1``); None when not recorded."""
    q = summary.get("q1") if isinstance(summary, dict) else None
    if not isinstance(q, dict):
        return None

    def num(k: str) -> float | None:
        v = q.get(k)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else None

    put_s, puts, mean_ms = num("put_s"), num("puts"), num("put_mean_ms")
    if put_s is None and puts and mean_ms is not None:
        put_s = puts * mean_ms / 1e3
    if not put_s:
        return None
    return max(put_s - (num("blocked_s") or 0.0), 0.0)


def _busy(base: _Base, q1f: Q1Figures, parse_loop: np.ndarray, parse_recv: np.ndarray, threads: int,
          put_over: np.ndarray, caller_put_own: float | None = None,
          ) -> tuple[LoopFigures, UpstreamFigures, tuple[np.ndarray, np.ndarray]]:
    """The loop's and the receiver side's busy shares and where their time went;
    also the loop's waits on an empty Q1 as intervals."""
    span, get_wait = base.span, base.dur["get_wait"]
    # as a union (contract BUSY_FIGURES): several inference loops (Ray inference
    # actors) wait at the same times, and their waits must not count twice
    ws, we = interval_union(*_clip(base.B["t_q1_get_start"], base.B["t_q1_get_start"] + get_wait,
                                   base.t_start, base.t_end))
    wait_total = _measure(ws, we)
    if np.isfinite(get_wait).any():
        u_loop, src = 1.0 - wait_total / span, "q1 get waits"
    else:
        u_loop, src = 1.0 - (q1f.share_empty or 0.0), "q1 empty share"
    put_own = np.where(np.isfinite(put_over), put_over, 0.0)
    put_total = float(np.nansum(np.clip(put_own, 0, None)))
    put_source = "batches.csv"
    if caller_put_own is not None:
        put_total, put_source = caller_put_own, "summary.json q1 (put_s - blocked_s)"
    B = base.B
    put_threads = max(1, max_concurrency(B["t_q1_put_start"], B["t_q1_put_end"]))
    u_put = put_total / (put_threads * span)
    u_up = max((float(np.nansum(parse_recv)) + put_total) / (threads * span), u_put)
    # where the loop's busy time went (totals, so rare long costs such as a
    # polling get's sleep count in full, which medians would hide)
    busy_total = max(span - wait_total, 0.0)
    q_get = float(np.nansum(np.clip(base.dur["get_over"], 0, None)))
    p_loop = float(np.nansum(parse_loop))
    loop = LoopFigures(
        busy_share=_r(u_loop), busy_source=src, wait_on_empty_q1_s=_r(wait_total),
        time_s=LoopTime(busy=_r(busy_total), wait_on_empty_q1=_r(wait_total), q1_get_overhead=_r(q_get),
                        parse=_r(p_loop), inference=_r(max(busy_total - q_get - p_loop, 0.0))))
    up = UpstreamFigures(busy_share=_r(u_up), put_busy_share=_r(u_put), time_s=UpstreamTime(
        threads=threads, parse=_r(float(np.nansum(parse_recv))), q1_put_overhead=_r(put_total),
        put_threads=put_threads, put_source=put_source))
    return loop, up, (ws, we)


def _device_intervals(run: RunData, base: _Base) -> tuple[Any, ...]:
    """(compute starts, compute ends, all starts, all ends, device per compute or
    None, device per interval of all or None, source) relative to t0."""
    g, B, t0 = run.gpu, base.B, base.t0
    if g is not None and g.get("t_start", np.empty(0)).size and "stream" in g:
        # gpu.csv is the device's own record (it may hold intervals no batch row has)
        is_c = g["stream"] == 1
        dev = g.get("device")
        return (g["t_start"][is_c] - t0, g["t_end"][is_c] - t0, g["t_start"] - t0, g["t_end"] - t0,
                None if dev is None else dev[is_c], dev, "gpu.csv")
    all_s = np.concatenate([B["t_h2d_start"], B["t_compute_start"], B["t_d2h_start"]])
    all_e = np.concatenate([B["t_h2d_end"], B["t_compute_end"], B["t_d2h_end"]])
    return B["t_compute_start"], B["t_compute_end"], all_s, all_e, None, None, "batches.csv"


def _device(run: RunData, base: _Base, waits: tuple[np.ndarray, np.ndarray],
            streams_overlap: bool, series: dict[str, Any]) -> DeviceFigures:
    """The inference device's busy shares and idle gaps (adds plot series)."""
    c_s, c_e, all_s, all_e, dev_c, dev_all, src = _device_intervals(run, base)
    t_start, t_end, span = base.t_start, base.t_end, base.span
    cs, ce = _clip(*interval_union(c_s, c_e), t_start, t_end)
    busy_c = _measure(cs, ce)
    devices = np.unique(dev_c) if dev_c is not None else np.empty(0)
    by_device = None
    if dev_c is not None and devices.size > 1:
        # several inference devices (Ray actors): the busy share is each one's own,
        # averaged; the idle gaps below are those of the union (no device busy)
        per = [_measure(*_clip(*interval_union(c_s[dev_c == d], c_e[dev_c == d]), t_start, t_end))
               for d in devices]
        by_device = [_r(x / span) for x in per]
        busy_c = float(np.mean(per))
    as_, ae = _clip(*interval_union(all_s, all_e), t_start, t_end)
    busy_any = _measure(as_, ae)
    if dev_all is not None and np.unique(dev_all).size > 1:
        # as for compute: each device's own share, averaged (BUSY_FIGURES)
        busy_any = float(np.mean([
            _measure(*_clip(*interval_union(all_s[dev_all == d], all_e[dev_all == d]), t_start, t_end))
            for d in np.unique(dev_all)]))
    gaps = cs[1:] - ce[:-1] if cs.size > 1 else np.empty(0)
    if gaps.size:
        g_at = int(np.argmax(gaps))
        series["longest_gap"] = (float(ce[g_at]), float(cs[g_at + 1]))
    idle_s = np.concatenate([[t_start], ce])
    idle_e = np.concatenate([cs, [t_end]])
    keep = idle_e > idle_s
    idle = (idle_s[keep], idle_e[keep])
    idle_total = _measure(*idle)
    on_empty = _intersection_measure(idle, waits) if idle_total > 0 else 0.0
    series["compute_union"] = (cs, ce)
    dev_id = str(run.summary.get("device") or "") or None
    dev = (dev_id or "").lower()
    name = "GPU" if dev.startswith(("cuda", "gpu")) else "CPU" if dev.startswith("cpu") else "device"
    return DeviceFigures(
        source=src, name=name, id=dev_id, busy_compute_share=_r(busy_c / span),
        busy_any_stream_share=_r(busy_any / span),
        busy_compute_share_by_device=by_device, idle_gaps=_dist(gaps), idle_s=_r(idle_total),
        idle_share_waiting_on_empty_q1=_r(on_empty / idle_total) if idle_total > 0 else None,
        streams_overlap=streams_overlap)


def _arrivals(base: _Base, series: dict[str, Any]) -> ArrivalFigures:
    """Arrival and processing rates, burstiness and long gaps (adds series)."""
    arrivals, received = base.arrivals, int(base.arrivals.size)
    arr_span = float(arrivals[-1] - arrivals[0]) if received > 1 else 0.0
    ia = np.diff(arrivals)
    ia_mean = float(ia.mean()) if ia.size else 0.0
    long_thr = max(LONG_GAP_FACTOR * float(np.median(ia)), LONG_GAP_MIN_S) if ia.size else LONG_GAP_MIN_S
    long_idx = np.nonzero(ia > long_thr)[0]
    series["long_gaps"] = ((arrivals[long_idx], arrivals[long_idx + 1]) if long_idx.size
                           else (np.empty(0), np.empty(0)))
    mb = base.msg_bytes
    nb = mb[np.isfinite(mb)] if mb is not None else np.empty(0)
    return ArrivalFigures(
        rate_bps=_r((received - 1) / arr_span if arr_span > 0 else None),
        throughput_bps=_r(base.n / base.span if base.n else 0.0),
        interarrival=_dist(ia),
        interarrival_cv=_r(float(ia.std() / ia_mean)) if ia.size > 1 and ia_mean > 0 else None,
        long_gaps=LongGaps(
            threshold_ms=_ms(long_thr), count=int(long_idx.size),
            total_s=_r(float(ia[long_idx].sum())) if long_idx.size else 0.0,
            longest_s=_r(float(ia.max())) if ia.size else None),
        achieved_byte_rate_Bps=_r(float(nb.sum()) / arr_span, 1) if arr_span > 0 and nb.size else None)


@dataclass
class _Cycle:
    """The loop's cycle: measured while fed, or modelled from stage medians (s)."""

    med: dict[str, float | None]
    gpu_async: bool
    gpu_cycle: float
    host: float
    model_cycle: float
    cycle: float
    source: str


def _cycle(base: _Base, parse_loop: np.ndarray, put_over: np.ndarray, in_loop: bool) -> _Cycle:
    B, n, d = base.B, base.n, base.dur
    med = {k: _med(v) for k, v in (("parse", d["parse"]), ("put", d["put"]), ("get", d["get"]),
                                   ("get_overhead", d["get_over"]), ("put_overhead", put_over),
                                   ("h2d", d["h2d"]), ("compute", d["compute"]), ("d2h", d["d2h"]))}
    # async device: the loop takes the next batch before this one's D2H is done
    nxt = B["t_q1_get_start"][1:] if n > 1 else np.empty(0)
    ov = nxt < B["t_d2h_end"][:-1] - 1e-6 if n > 1 else np.empty(0, dtype=bool)
    gpu_async = bool(np.mean(ov) > 0.5) if ov.size else True
    streams = [med[k] or 0.0 for k in ("h2d", "compute", "d2h")]
    host = (med["get_overhead"] or 0.0) + (_med(parse_loop) or 0.0 if in_loop else 0.0)
    gpu_cycle = max(streams) if gpu_async else sum(streams)
    model_cycle = max(host, gpu_cycle) if gpu_async else host + gpu_cycle
    get_wait = d["get_wait"]
    fed = (get_wait[1:] <= 1e-4) & (get_wait[:-1] <= 1e-4) if n > 1 else np.empty(0, dtype=bool)
    fed_cycles = np.diff(B["t_q1_get_start"])[fed] if n > 1 else np.empty(0)
    fed_cycles = fed_cycles[np.isfinite(fed_cycles) & (fed_cycles > 0)]
    if fed_cycles.size >= max(10, 0.05 * n):
        return _Cycle(med, gpu_async, gpu_cycle, host, model_cycle, float(np.median(fed_cycles)),
                      "measured: loop cycle while Q1 held a batch")
    src = "stage times: max(host part, busiest stream)" if gpu_async else "stage times: sum (serial)"
    return _Cycle(med, gpu_async, gpu_cycle, host, model_cycle, model_cycle, src)


def _capacity(cy: _Cycle, arrival_rate: float | None) -> CapacityFigures:
    cap = 1.0 / cy.cycle if cy.cycle > 0 else None
    # what the loop could do if parsing left it
    host_np = cy.med["get_overhead"] or 0.0
    cycle_np = max(host_np, cy.gpu_cycle) if cy.gpu_async else host_np + cy.gpu_cycle
    return CapacityFigures(
        bps=_r(cap), source=cy.source,
        from_stage_times_bps=_r(1.0 / cy.model_cycle if cy.model_cycle > 0 else None),
        without_loop_parse_bps=_r(1.0 / cycle_np if cycle_np > 0 else None),
        arrival_vs_capacity=_r(arrival_rate / cap) if cap and arrival_rate else None)


def _costs(base: _Base, cy: _Cycle, parse_loop: np.ndarray, put_over: np.ndarray, loop: LoopFigures,
           in_loop: bool) -> CostFigures:
    med, d = cy.med, base.dur
    pb = PerBatchMs(
        parse=_ms(med["parse"]), parse_in_loop=_ms(_med(parse_loop)) if in_loop else 0.0,
        q1_put=_ms(med["put"]), q1_put_overhead=_ms(med["put_overhead"]),
        q1_get=_ms(med["get"]), q1_get_overhead=_ms(med["get_overhead"]),
        q1_op_overhead=_ms((med["put_overhead"] or 0.0) + (med["get_overhead"] or 0.0)),
        h2d=_ms(med["h2d"]), compute=_ms(med["compute"]), d2h=_ms(med["d2h"]),
        gpu_cycle=_ms(cy.gpu_cycle), loop_host=_ms(cy.host),
        # the part of the measured loop cycle that is neither parse nor Q1 get:
        # submitting to the inference stage (staging copies, waiting for a buffer)
        loop_inference=_ms(max(cy.cycle - cy.host, 0.0)) if cy.source.startswith("measured") else None)
    c_ms = med["compute"] or 0.0
    busy_total = loop.time_s.busy or 0.0
    return CostFigures(
        per_batch_ms=pb,
        parse_vs_compute=_r((med["parse"] or 0.0) / c_ms) if c_ms > 0 and med["parse"] is not None else None,
        queue_op_vs_compute=_r(((med["put_overhead"] or 0.0) + (med["get_overhead"] or 0.0)) / c_ms)
        if c_ms > 0 else None,
        parse_share_of_loop=_r(float(np.nansum(parse_loop)) / busy_total) if in_loop and busy_total > 0 else 0.0,
        stage_distributions={"h2d": _dist(d["h2d"]), "compute": _dist(d["compute"]), "d2h": _dist(d["d2h"]),
                             "parse": _dist(d["parse"]), "q1_get_overhead": _dist(d["get_over"]),
                             "q1_put_overhead": _dist(put_over)})


def _receiver(rx: Any) -> ReceiverFigures:
    """The receiver thread's own timing from summary.json (older runs: not measured)."""
    if not isinstance(rx, dict):
        return ReceiverFigures()

    def num(key: str) -> float | None:
        v = rx.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else None

    wakeups = num("wakeups")
    return ReceiverFigures(
        busy_share=num("busy_share"), span_s=num("span_s"), wait_s=num("wait_s"), read_s=num("read_s"),
        wakeups=None if wakeups is None else int(wakeups), bytes_per_wakeup=num("bytes_per_wakeup"),
        rx_queue_bytes_mean=num("rx_queue_bytes_mean"), rx_queue_bytes_max=num("rx_queue_bytes_max"))


def compute_evidence(run: RunData) -> Evidence:
    """Every figure of report.json's ``evidence`` and the series for the plots."""
    base = _base(run)
    B, d = base.B, base.dur
    series: dict[str, Any] = {"batches": B, "arrivals": base.arrivals,
                              "t_start": base.t_start, "t_end": base.t_end}
    parse_f, parse_loop, parse_recv, threads = _parse_where(base)
    in_loop = parse_f.location == "inference_loop"
    q1f, qt, qd = _q1(run, base)
    series["q1_t"], series["q1_depth"], series["q1_maxsize"] = qt, qd, q1f.maxsize
    put_block = _put_block(base, q1f.maxsize)
    put_over = d["put"] - put_block
    loop, up, waits = _busy(base, q1f, parse_loop, parse_recv, threads, put_over,
                            _caller_put_own(run.summary))
    cy = _cycle(base, parse_loop, put_over, in_loop)
    device = _device(run, base, waits, cy.gpu_async, series)
    arrivals = _arrivals(base, series)
    capacity = _capacity(cy, arrivals.rate_bps)
    # per batch: the put's own cost as the upstream's figures took it (the caller's
    # whole calls where recorded)
    put_med = cy.med["put_overhead"] or 0.0
    if up.time_s.put_source != "batches.csv" and base.n:
        put_med = (up.time_s.q1_put_overhead or 0.0) / base.n
    up_cost = (_med(parse_recv) or 0.0) + put_med
    caps = [threads / up_cost] if up_cost > 0 else []
    if put_med > 0:
        caps.append(up.time_s.put_threads / put_med)
    up = replace(up, capacity_bps=_r(min(caps) if caps else None))
    costs = _costs(base, cy, parse_loop, put_over, loop, in_loop)
    costs = replace(costs, starvation=bool((device.busy_any_stream_share or 0) < 0.9 and (
        (q1f.share_under_30pct or 0) > 0.3 or (q1f.share_empty or 0) > 0.2)))
    # waits counted from the first arrival: the loop's wait for the very first batch
    # is start-up, not starvation
    wait_in_run = np.clip(np.fmin(B["t_q1_put_end"], B["t_q1_get_end"])
                          - np.fmax(B["t_q1_get_start"], base.t_start), 0, None)
    series.update({"parse": d["parse"], "put": d["put"], "get": d["get"], "get_wait": d["get_wait"],
                   "get_over": d["get_over"], "get_wait_in_run": np.where(np.isfinite(wait_in_run), wait_in_run, 0.0),
                   "put_block": put_block, "put_over": put_over, "h2d": d["h2d"], "compute": d["compute"],
                   "d2h": d["d2h"], "queue_time": B["t_q1_get_end"] - B["t_q1_put_start"],
                   "capacity_bps": 1.0 / cy.cycle if cy.cycle > 0 else None})
    emitter = None
    if run.emit is not None:
        emitter = _emit_evidence(run, base.t0, base.arrivals, series["long_gaps"], arrivals.achieved_byte_rate_Bps)
        series["emit"] = {k: (v - base.t0 if k.startswith("t_") else v) for k, v in run.emit.items()
                          if isinstance(v, np.ndarray)}
    counts = Counts(batches_processed=base.n, messages_received=int(base.arrivals.size), span_s=_r(base.span),
                    quarantined=int(run.summary.get("quarantined") or run.quarantined_files or 0),
                    sequence_numbers=run.has_seq, consumer_side_only=run.emit is None)
    cap = shaping_cap(run.root)
    figures = Figures(counts=counts, parse=parse_f, q1=q1f, loop=loop, upstream=up, device=device,
                      arrivals=arrivals, capacity=capacity, costs=costs, emitter=emitter,
                      receiver=_receiver(run.summary.get("receiver")), shaping_cap=cap[0], capped_phases=cap[1])
    return Evidence(figures, series, base.t0)


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


def _emit_sending(e: dict[str, Any], tf: np.ndarray, tl: np.ndarray, ts: np.ndarray, sent: np.ndarray,
                  achieved_Bps: float | None) -> EmitterSending:
    """Rates, sending and blocked shares over the emitter's own span."""
    lo, hi = float(tf[sent].min()), float(tl[sent].max())
    esp = max(hi - lo, 1e-9)
    wb = e["wire_bytes"][sent]
    emitted_Bps = _r(float(np.nansum(wb)) / esp, 1)
    sch = np.sort(ts[np.isfinite(ts)])
    sd = (tl - tf)[sent]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_msg = np.where(sd > 0, wb / sd, np.nan)
    us, ue = interval_union(tf[sent], tl[sent])
    return EmitterSending(
        emitted_byte_rate_Bps=emitted_Bps,
        emitted_rate_bps=_r(float(sent.sum()) / esp),
        offered_rate_bps=_r((sch.size - 1) / float(sch[-1] - sch[0])) if sch.size > 1 and sch[-1] > sch[0] else None,
        achieved_vs_emitted_bytes=_r(achieved_Bps / emitted_Bps) if achieved_Bps and emitted_Bps else None,
        send_rate_while_sending_Bps=_r(pct(per_msg, 50), 1),
        sending_share=_r(_measure(us, ue) / esp),
        blocked_share=_r(_blocked_share(e, sent, esp)),
        schedule_lag=_dist((tf - ts)[sent]),
        blocked_s_by_phase=_blocked_by_phase(e, sent))


def _blocked_by_phase(e: dict[str, Any], sent: np.ndarray) -> dict[str, float]:
    """Backpressure seconds (blocked_s) summed by the phase of the message held back."""
    bl = e["blocked_s"][sent]
    ph = np.asarray(e["phase"])[sent]
    ok = np.isfinite(bl)
    return {str(p): round(float(bl[ok & (ph == p)].sum()), 4) for p in np.unique(ph[ok])} if ok.any() else {}


def _transport_latency(run: RunData, e: dict[str, Any]) -> Dist:
    """Last byte sent to arrival, matched by (rank, seq)."""
    key_e = e["rank"] * 1e9 + e["seq"]
    b = run.batches
    key_b = b["rank"] * 1e9 + b["seq"]
    ok = np.isfinite(key_b)
    order = np.argsort(key_e, kind="stable")
    ke = key_e[order]
    pos = np.clip(np.searchsorted(ke, key_b[ok]), 0, max(ke.size - 1, 0))
    match = ke[pos] == key_b[ok] if ke.size else np.zeros(0, dtype=bool)
    return _dist((b["t_arrival"][ok] - e["t_last_byte"][order][pos])[match])


def _emit_gaps(e: dict[str, Any], tf: np.ndarray, tl: np.ndarray, ts: np.ndarray, sent: np.ndarray,
               ga: np.ndarray, gb: np.ndarray) -> EmitterGaps:
    """What the emitter was doing during each long arrival gap [ga, gb]."""
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
    # the phase of the emitter's last message before each gap
    sch = np.argsort(ts, kind="stable")
    k = np.clip(np.searchsorted(ts[sch], ga, side="right") - 1, 0, None)
    names, counts = np.unique(e["phase"][sch][k], return_counts=True)
    return EmitterGaps(
        count=int(ga.size),
        share_emitter_silent=_r(float(np.mean(silent))),
        share_emitter_blocked=_r(float(np.mean(blocked))),
        share_bytes_in_flight=_r(float(np.mean(flight))),
        share_other=_r(float(np.mean(~silent & ~blocked & ~flight))),
        share_fault_stall=_r(float(np.mean(fs))),
        silent_time_share=_r(float(np.sum(silent_frac * glen) / np.sum(glen))),
        phase_before_gap={str(a): int(c) for a, c in zip(names, counts, strict=True)})


def _emit_evidence(run: RunData, t0: float, arrivals: np.ndarray,
                   long_gaps: tuple[np.ndarray, np.ndarray], achieved_Bps: float | None) -> EmitterFigures:
    """How the emitter's own record lines up with what arrived."""
    e = run.emit
    assert e is not None
    tf = e["t_first_byte"] - t0
    tl = e["t_last_byte"] - t0
    ts = e["t_sched"] - t0
    sent = np.isfinite(tf) & np.isfinite(tl)
    ga, gb = long_gaps
    return EmitterFigures(
        attempts=int(ts.size), completed=int(sent.sum()),
        sending=_emit_sending(e, tf, tl, ts, sent, achieved_Bps) if sent.any() else None,
        last_byte_to_arrival=_transport_latency(run, e) if run.has_seq and sent.any() else None,
        long_gaps=_emit_gaps(e, tf, tl, ts, sent, ga, gb) if ga.size else None)
