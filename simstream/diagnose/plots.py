"""The report's plots (matplotlib, Agg backend, PNG). Each function takes the
evidence series (relative seconds) and writes one file; big runs are binned so
a figure costs the same for 1 000 or 100 000 batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simstream.diagnose.evidence import Evidence  # noqa: E402

__all__ = ["STAGE_COLOURS", "write_compare_plots", "write_plots"]

STAGE_COLOURS = {
    "parse": "#8c564b", "queue": "#7f7f7f", "h2d": "#1f77b4", "compute": "#2ca02c", "d2h": "#ff7f0e",
}
DPI = 90


def _legend(ax: Any, **kw: Any) -> None:
    """A legend only when something is labelled (an empty run has nothing)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _save(fig: Any, path: Path, left_in: float = 1.1) -> Path:
    # fixed margins: tight_layout costs ~0.1 s a figure and the layouts are known
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=min(0.5, left_in / w), right=1 - 0.2 / w, bottom=0.55 / h, top=1 - 0.35 / h,
                        wspace=0.35)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def q1_occupancy(ev: Evidence, path: Path) -> Path:
    s = ev.series
    t, d, m = s["q1_t"], s["q1_depth"], max(s["q1_maxsize"] or 1, 1)
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.axhspan(0, 30, color="#d62728", alpha=0.08, label="under 30 % (starving)")
    ax.axhspan(80, 100, color="#2ca02c", alpha=0.08, label="over 80 % (healthy)")
    ax.axhline(30, color="#d62728", lw=0.8, ls="--")
    ax.axhline(80, color="#2ca02c", lw=0.8, ls="--")
    ga, gb = s["long_gaps"]
    if ga.size:
        # one collection for all gaps: a patch per gap costs ms each on long runs
        ax.broken_barh(list(zip(ga, gb - ga, strict=True)), (-2, 107), color="#9467bd", alpha=0.12, lw=0)
    if t.size:
        ax.step(t, 100.0 * d / m, where="post", lw=0.8, color="black", label="Q1 occupancy")
    ax.set_ylim(-2, 105)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel(f"Q1 occupancy (% of {m})")
    ax.set_title("Q1 occupancy (purple: long arrival gaps)")
    _legend(ax, loc="upper right", fontsize=7, ncol=3)
    return _save(fig, path)


def rates(ev: Evidence, path: Path) -> Path:
    s = ev.series
    t_lo, t_hi = s["t_start"], s["t_end"]
    span = max(t_hi - t_lo, 1e-6)
    width = max(span / 300.0, 0.1)
    edges = np.arange(t_lo, t_hi + width, width)
    fig, ax = plt.subplots(figsize=(10, 3.2))
    if edges.size > 1:
        arr = np.histogram(s["arrivals"], edges)[0] / width
        done = s["batches"]["t_compute_end"]
        proc = np.histogram(done[np.isfinite(done)], edges)[0] / width
        mid = edges[:-1]
        ax.step(mid, arr, where="post", lw=1.0, color="#9467bd", label="arrivals (producer)")
        ax.step(mid, proc, where="post", lw=1.0, color="#2ca02c", label="processed (consumer)")
    cap = s.get("capacity_bps")
    if cap:
        ax.axhline(cap, color="black", ls="--", lw=0.8, label=f"consumer capacity {cap:.1f}/s")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("batches per second")
    ax.set_title(f"Producer arrival rate vs consumer processing rate ({width:.2g} s bins)")
    _legend(ax, loc="upper right", fontsize=7)
    return _save(fig, path)


def gpu_window(ev: Evidence) -> tuple[float, float]:
    """A representative window: around the longest device compute idle gap (else the middle)."""
    s = ev.series
    b = s["batches"]
    cs = b["t_compute_start"]
    ok = np.isfinite(cs)
    if not ok.any():
        return s["t_start"], s["t_end"]
    cs_sorted = np.sort(cs[ok])
    if "longest_gap" in s:
        g0, g1 = s["longest_gap"]
    else:
        g0 = g1 = float(cs_sorted[cs_sorted.size // 2])
    i0 = max(0, int(np.searchsorted(cs_sorted, g0)) - 8)
    i1 = min(cs_sorted.size - 1, int(np.searchsorted(cs_sorted, g1)) + 8)
    lo = min(float(cs_sorted[i0]), g0)
    hi = max(float(cs_sorted[i1]), g1)
    pad = 0.05 * max(hi - lo, 1e-3)
    return lo - pad, hi + pad


def gpu_timeline(ev: Evidence, path: Path) -> Path:
    s = ev.series
    b = s["batches"]
    lo, hi = gpu_window(ev)
    buf = b["buffer"]
    bufs = sorted({int(x) for x in buf[np.isfinite(buf)]}) or [0]
    rows: list[tuple[str, str, str, str | None]] = [
        ("receiver: arrival", "t_arrival", "t_arrival", None),
        ("parse", "t_parse_start", "t_parse_end", STAGE_COLOURS["parse"]),
        ("Q1 put: blocked (full)", "t_q1_put_start", "_blk_end", "#c6dbef"),
        ("Q1 put: op", "_blk_end", "t_q1_put_end", "#999999"),
        ("Q1 get: empty wait", "t_q1_get_start", "_wait_end", "#f2b8b8"),
        ("Q1 get: op", "_op_start", "t_q1_get_end", STAGE_COLOURS["queue"]),
    ]
    b = dict(b)
    b["_wait_end"] = b["t_q1_get_start"] + np.nan_to_num(s["get_wait"], nan=0.0)
    b["_op_start"] = b["_wait_end"]
    b["_blk_end"] = b["t_q1_put_start"] + np.nan_to_num(s["put_block"], nan=0.0)
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.38 * (len(rows) + 3 * len(bufs))))
    labels: list[str] = []
    y = 0
    sel = ((np.nan_to_num(b["t_compute_end"], nan=-1) >= lo) & (np.nan_to_num(b["t_arrival"], nan=1e18) <= hi))
    sel |= (np.nan_to_num(b["t_q1_get_end"], nan=-1) >= lo) & (np.nan_to_num(b["t_q1_get_start"], nan=1e18) <= hi)
    for label, a, z, colour in rows:
        st, en = b[a][sel], b[z][sel]
        ok = np.isfinite(st) & np.isfinite(en) & ((en > st) | (colour is None))
        if colour is None:
            ax.plot(st[ok], np.full(ok.sum(), y + 0.4), "|", color="#9467bd", ms=10)
        else:
            ax.broken_barh(list(zip(st[ok], np.maximum(en[ok] - st[ok], 1e-5), strict=True)),
                           (y, 0.8), color=colour)
        labels.append(label)
        y += 1
    for stream in ("h2d", "compute", "d2h"):
        for bf in bufs:
            m = sel & (buf == bf)
            st, en = b[f"t_{stream}_start"][m], b[f"t_{stream}_end"][m]
            ok = np.isfinite(st) & np.isfinite(en) & ((en > st) | (colour is None))
            ax.broken_barh(list(zip(st[ok], np.maximum(en[ok] - st[ok], 1e-5), strict=True)),
                           (y, 0.8), color=STAGE_COLOURS[stream])
            labels.append(f"{stream} buf {bf}")
            y += 1
    if "longest_gap" in s:
        g0, g1 = s["longest_gap"]
        ax.axvspan(g0, g1, color="#d62728", alpha=0.1, lw=0, label=f"longest idle gap {1e3 * (g1 - g0):.1f} ms")
        _legend(ax, loc="upper right", fontsize=7)
    ax.set_yticks(np.arange(len(labels)) + 0.4)
    ax.set_yticklabels(labels, fontsize=7)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    ax.set_xlim(lo, hi)
    ax.invert_yaxis()
    ax.set_xlabel("time since start (s)")
    ax.set_title("Inference device timeline around the longest compute idle gap")
    return _save(fig, path, left_in=1.5)


def stage_breakdown(ev: Evidence, path: Path) -> Path:
    s = ev.series
    parts = {
        "parse": s["parse"], "queue": s["queue_time"], "h2d": s["h2d"],
        "compute": s["compute"], "d2h": s["d2h"],
    }
    n = s["parse"].size
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    if n:
        nbins = min(n, 300)
        edges = np.linspace(0, n, nbins + 1).astype(int)
        edges = np.unique(edges)
        counts = np.diff(edges)
        ys = []
        for v in parts.values():
            vv = np.nan_to_num(v, nan=0.0) * 1e3
            ys.append(np.add.reduceat(vv, edges[:-1]) / counts)
        ax.stackplot(edges[:-1], *ys, labels=list(parts), colors=[STAGE_COLOURS[k] for k in parts],
                     step="post")
    ax.set_xlabel("batch (processing order)")
    ax.set_ylabel("ms per batch (binned mean)")
    ax.set_title("Per-batch stage breakdown (queue = put start to get end)")
    _legend(ax, loc="upper right", fontsize=7, ncol=5)
    service = {
        "parse": s["parse"], "Q1 put op": s["put_over"], "Q1 get op": s["get_over"],
        "h2d": s["h2d"], "compute": s["compute"], "d2h": s["d2h"],
    }
    med = [float(np.nanmedian(v)) * 1e3 if np.isfinite(v).any() else 0.0 for v in service.values()]
    cols = [STAGE_COLOURS["parse"], "#bbbbbb", STAGE_COLOURS["queue"], STAGE_COLOURS["h2d"],
            STAGE_COLOURS["compute"], STAGE_COLOURS["d2h"]]
    ax2.barh(list(service), med, color=cols)
    ax2.invert_yaxis()
    ax2.set_xlabel("median ms (own cost, no waiting)")
    ax2.set_title("Service time per batch")
    return _save(fig, path)


def idle_gaps(ev: Evidence, path: Path) -> Path:
    cs, ce = ev.series["compute_union"]
    gaps = (cs[1:] - ce[:-1]) * 1e3 if cs.size > 1 else np.empty(0)
    fig, ax = plt.subplots(figsize=(6, 3))
    gaps = gaps[gaps > 0]
    if gaps.size:
        lo, hi = max(gaps.min(), 1e-3), max(gaps.max(), 1e-2)
        bins = np.logspace(np.log10(lo), np.log10(hi * 1.01), 40)
        ax.hist(gaps, bins=bins.tolist(), color="#d62728")
        ax.set_xscale("log")
    ax.set_xlabel("device compute idle gap (ms)")
    ax.set_ylabel("count")
    ax.set_title("Idle gaps between compute intervals")
    return _save(fig, path)


def write_plots(ev: Evidence, out_dir: Path) -> dict[str, Path]:
    """All report plots into ``out_dir`` (created); name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "q1_occupancy": q1_occupancy(ev, out_dir / "q1_occupancy.png"),
        "rates": rates(ev, out_dir / "rates.png"),
        "gpu_timeline": gpu_timeline(ev, out_dir / "gpu_timeline.png"),
        "stages": stage_breakdown(ev, out_dir / "stages.png"),
        "idle_gaps": idle_gaps(ev, out_dir / "idle_gaps.png"),
    }


def write_compare_plots(evs: dict[str, Evidence], out_dir: Path) -> dict[str, Path]:
    """Random vs socket: ECDFs of H2D/compute/D2H and the per-batch stage medians."""
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = {"random": "#1f77b4", "socket": "#d62728"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, stage in zip(axes, ("h2d", "compute", "d2h"), strict=True):
        for mode, ev in evs.items():
            x = ev.series[stage]
            x = np.sort(x[np.isfinite(x)]) * 1e3
            if x.size:
                ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", color=colours.get(mode),
                        label=mode)
        ax.set_title(f"{stage} time per batch")
        ax.set_xlabel("ms")
        ax.set_ylabel("ECDF")
        _legend(ax, fontsize=7)
    p1 = _save(fig, out_dir / "compare_stages_ecdf.png")

    fig, ax = plt.subplots(figsize=(9, 3.4))
    names = ["parse", "Q1 wait (empty)", "Q1 get op", "h2d", "compute", "d2h", "device compute idle gap"]
    width = 0.38
    for k, (mode, ev) in enumerate(evs.items()):
        s = ev.series
        cs, ce = s["compute_union"]
        gaps = cs[1:] - ce[:-1] if cs.size > 1 else np.empty(0)
        vals = [s["parse"], s["get_wait_in_run"], s["get_over"], s["h2d"], s["compute"], s["d2h"], gaps]
        means = [float(np.nanmean(v)) * 1e3 if v.size and np.isfinite(v).any() else 0.0 for v in vals]
        ax.bar(np.arange(len(names)) + (k - 0.5) * width, means, width, label=mode,
               color=colours.get(mode))
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("mean ms per batch")
    ax.set_title("Where the time goes per batch: random vs socket")
    _legend(ax, fontsize=7)
    p2 = _save(fig, out_dir / "compare_where_time_goes.png")
    return {"stages_ecdf": p1, "where_time_goes": p2}
