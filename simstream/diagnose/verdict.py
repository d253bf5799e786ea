"""The verdict: which stage limits the rate, from measured queue behaviour only.

The consumer is two servers around Q1: **upstream** (the receiver and its
parser threads: read, parse when parsing happens there, put) and the
**inference loop** (get, parse when parsing happens there, H2D, compute, D2H
with N-way buffering). Whichever is saturated is the limit; if neither is,
data simply did not arrive faster: the producer or the network.

Decision, in order (figures from ``evidence.compute_evidence``):

1. ``loop_busy_share`` (1 - time the loop waited on an empty Q1 / span) >= 0.85:
   the inference loop is saturated, Q1 holds batches whenever it asks. Where
   its busy time went decides (``loop_time_s``, totals over the run, so that a
   rare but long cost such as a polling get's sleep counts in full): parsing
   inside the loop vs Q1 get overhead (get time minus waiting for the put) vs
   the rest, the inference stage (submitting the batch: staging copies, H2D,
   waiting for a free buffer, i.e. the GPU's pace). The largest names the
   verdict: ``parse``, ``queue`` or ``consumer``.
   ``consumer`` is the healthy case: no starvation, Q1 stays full.
2. Otherwise the loop starves (it waited on an empty Q1 for >= 15 % of the
   run). If the upstream side is saturated (``upstream_busy_share`` =
   parser-thread work (parse + the put's own cost) / (threads x span) >= 0.85),
   where that work went decides (``upstream_time_s``): parse before Q1 ->
   ``parse``, the put's own cost -> ``queue``.
3. Otherwise nothing in the consumer was saturated: arrivals were the limit
   -> ``network`` (the producer or the network between them). The emit log,
   when present, says which (emitter silent = producer stalls; bytes in flight
   at a capped send rate = bandwidth; emitter blocked while Q1 was often full
   = consumer backpressure, which would contradict this verdict and lowers
   confidence).

Confidence (0..1) grows with the margin of the deciding share from its
threshold, with how clearly the largest cost beats the next one, and with
corroboration from figures not used to decide: Q1 occupancy (full for a
saturated loop, under 30 % for starvation), the share of GPU idle time spent
on an empty Q1, and the arrival rate against the capacity.

Nothing here reads the profile: a run recorded from a real LCLStreamer (no
emit log, no sequence numbers) gets a verdict from the consumer's records
alone, and says so.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LOOP_SATURATED", "UPSTREAM_SATURATED", "VERDICTS", "decide", "recommendations", "summary_text"]

VERDICTS = ("network", "parse", "queue", "consumer")
LOOP_SATURATED = 0.85
UPSTREAM_SATURATED = 0.85


def _g(d: dict[str, Any] | None, *path: str, default: float = 0.0) -> float:
    cur: Any = d
    for p in path:
        if not isinstance(cur, dict) or cur.get(p) is None:
            return default
        cur = cur[p]
    try:
        v = float(cur)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _dominance(top: float, second: float) -> float:
    """0 when the two costs tie, 1 when the top one is >= 3x the second."""
    if top <= 0:
        return 0.0
    r = second / top
    return max(0.0, min(1.0, (1.0 - r) / (1.0 - 1.0 / 3.0)))


def _clamp(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return max(lo, min(hi, x))


def decide(ev: dict[str, Any]) -> tuple[str, float, list[str]]:
    """(verdict, confidence, reasons) from the evidence figures."""
    pb = ev.get("per_batch_ms") or {}
    q1 = ev.get("q1") or {}
    u_loop = _g(ev, "loop_busy_share")
    u_up = _g(ev, "upstream_busy_share")
    full = _g(q1, "share_over_80pct")
    low = _g(q1, "share_under_30pct")
    idle_empty = _g(ev, "gpu_idle_share_waiting_on_empty_q1")
    reasons: list[str] = []

    if ev.get("batches_processed", 0) == 0:
        if ev.get("messages_received", 0) and ev.get("quarantined", 0):
            return "parse", 0.3, ["no batch was processed: every received message failed to decode"]
        return "network", 0.3, ["no batch was processed: nothing usable arrived"]

    if u_loop >= LOOP_SATURATED:
        lt = ev.get("loop_time_s") or {}
        if lt:
            costs = {"parse": _g(lt, "parse"), "queue": _g(lt, "q1_get_overhead"),
                     "consumer": _g(lt, "inference")}
            unit = "s in all"
        else:
            costs = {"parse": _g(pb, "parse_in_loop"), "queue": _g(pb, "q1_get_overhead"),
                     "consumer": max(_g(pb, "gpu_cycle"), _g(pb, "loop_inference"))}
            unit = "ms per batch"
        ranked = sorted(costs.items(), key=lambda kv: kv[1], reverse=True)
        verdict = ranked[0][0]
        reasons.append(
            f"the inference loop was busy {u_loop:.0%} of the run (waited on an empty Q1 only "
            f"{1 - u_loop:.0%}): it is the limit")
        reasons.append(
            f"the loop's busy time went to: parsing inside the loop {costs['parse']:.2f}, "
            f"Q1 get overhead {costs['queue']:.2f}, the inference stage (submit, copies, "
            f"compute pacing) {costs['consumer']:.2f} ({unit})")
        primary = _clamp((u_loop - LOOP_SATURATED) / (1 - LOOP_SATURATED))
        dom = _dominance(ranked[0][1], ranked[1][1])
        corr = full
        conf = 0.35 + 0.3 * primary + 0.25 * dom + 0.1 * corr
        return verdict, round(_clamp(conf, 0.05, 0.99), 3), reasons

    reasons.append(
        f"the inference loop waited on an empty Q1 {1 - u_loop:.0%} of the run (busy {u_loop:.0%}): "
        "it starves")
    if u_up >= UPSTREAM_SATURATED:
        ut = ev.get("upstream_time_s") or {}
        if ut:
            costs = {"parse": _g(ut, "parse"), "queue": _g(ut, "q1_put_overhead")}
        else:
            costs = {"parse": _g(pb, "parse") if ev.get("parse_location") != "inference_loop" else 0.0,
                     "queue": _g(pb, "q1_put_overhead")}
        verdict = max(costs, key=lambda k: costs[k])
        other = min(costs.values())
        reasons.append(
            f"the receiver's parser threads ({ev.get('parser_threads_observed', 1)}) were busy "
            f"{u_up:.0%} of the run: parsing {costs['parse']:.2f} + Q1 put overhead "
            f"{costs['queue']:.2f} ({'s in all' if ut else 'ms per batch'})")
        primary = _clamp((u_up - UPSTREAM_SATURATED) / (1 - UPSTREAM_SATURATED))
        dom = _dominance(costs[verdict], other)
        conf = 0.35 + 0.3 * primary + 0.25 * dom + 0.1 * low
        return verdict, round(_clamp(conf, 0.05, 0.99), 3), reasons

    reasons.append(
        f"the upstream side was busy only {u_up:.0%}: nothing in the consumer was saturated, "
        "arrivals set the pace")
    avc = ev.get("arrival_vs_capacity")
    if avc is not None:
        reasons.append(f"arrivals ran at {avc:.0%} of the consumer's capacity")
    primary = _clamp((LOOP_SATURATED - max(u_loop, u_up)) / 0.5)
    corr = 0.5 * low + 0.5 * idle_empty
    conf = 0.4 + 0.35 * primary + 0.25 * corr
    em = ev.get("emitter") or {}
    # an emitter blocked while Q1 was full is consumer backpressure, which contradicts
    # this verdict; blocked while Q1 sat empty is a full socket on a slow link, which fits it
    if _g(em, "blocked_share") > 0.3 and full > 0.3:
        conf -= 0.2
        reasons.append(f"yet the emitter was blocked by backpressure {_g(em, 'blocked_share'):.0%} of its "
                       f"time and Q1 was over 80 % full {full:.0%} of the run")
    return "network", round(_clamp(conf, 0.05, 0.99), 3), reasons


def _fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}/s"


def recommendations(ev: dict[str, Any], verdict: str) -> list[str]:
    """Quantitative advice, most useful first."""
    out: list[str] = []
    pb = ev.get("per_batch_ms") or {}
    cap = ev.get("capacity_bps")
    arr = ev.get("arrival_rate_bps")
    q1 = ev.get("q1") or {}
    maxsize = q1.get("maxsize")
    longest = _g(ev, "arrival_long_gaps", "longest_s")
    parse_ms = _g(pb, "parse")
    compute_ms = _g(pb, "compute")
    loc = ev.get("parse_location")
    if not ev.get("batches_processed"):
        if ev.get("messages_received"):
            return ["Every received message was quarantined: see quarantine/*.json for the reasons "
                    "(format mismatch, e.g. HDF5 sent to an npz-only parser, or a partial batch)."]
        return ["Nothing arrived: check that the producer ran and reached the consumer's address "
                "(role client/server, port), then run again."]

    if verdict == "network":
        em = ev.get("emitter") or {}
        out.append(
            f"Arrivals ({_fmt_rate(arr)}) are below what the consumer can take ({_fmt_rate(cap)}): "
            "speed up the producer or the link (more ranks/streams, a faster network, less data "
            "per batch, e.g. compression), not the consumer.")
        if em.get("long_gaps"):
            lg = em["long_gaps"]
            out.append(
                f"Of {lg['count']} long arrival gaps, {lg['share_emitter_silent']:.0%} fell while the "
                f"emitter sent nothing (producer stalls), {lg['share_bytes_in_flight']:.0%} while bytes "
                "were in flight (link too slow).")
        if em.get("send_rate_while_sending_Bps") and _g(em, "sending_share") > 0.8:
            out.append(
                f"The emitter was sending {_g(em, 'sending_share'):.0%} of the time at "
                f"{_g(em, 'send_rate_while_sending_Bps') * 8 / 1e6:.0f} Mbit/s: the link is saturated "
                "(a bandwidth cap).")
    stalls_matter = verdict == "network" or (
        verdict == "consumer" and _g(ev, "gpu_idle_share_waiting_on_empty_q1") > 0.3)
    if longest > 0 and cap and stalls_matter and _g(ev, "arrival_long_gaps", "count") > 0:
        need = int(math.ceil(longest * cap))
        cur = f" (Q1 maxsize is {maxsize})" if maxsize else ""
        if arr and arr < 0.95 * cap and verdict == "network":
            out.append(
                f"A Q1 of {need} batches would ride out the longest stall ({longest:.2f} s at "
                f"{cap:.1f} batches/s){cur}, but only if the producer's average rate exceeded the "
                "consumer's; it does not, so depth alone will not end the starvation.")
        else:
            out.append(
                f"A Q1 of {need} batches{cur} would ride out the longest observed arrival stall "
                f"({longest:.2f} s at the consumption rate of {cap:.1f} batches/s).")
    cap_np = ev.get("capacity_without_loop_parse_bps") if loc == "inference_loop" else cap
    if parse_ms > 0 and cap_np:
        em = ev.get("emitter") or {}
        # an emitter that was never held back sends on its own schedule: that rate is real demand
        offered = _g(em, "offered_rate_bps") if em and _g(em, "blocked_share") < 0.05 else 0.0
        target = min(offered, cap_np) if offered else cap_np
        basis = ("the producer's offered rate" if offered and offered < cap_np
                 else "what the rest of the inference stage can take")
        threads = max(1, int(math.ceil(parse_ms / 1e3 * target)))
        out.append(
            f"Parsing takes {parse_ms:.2f} ms per batch; feeding {target:.1f} batches/s ({basis}) needs "
            f"{threads} parser thread(s)"
            + (f" (observed {ev.get('parser_threads_observed')})." if loc == "receiver" else "."))
    if loc == "inference_loop" and parse_ms > 0:
        share = _g(ev, "parse_share_of_loop")
        if verdict == "parse" or share > 0.2:
            out.append(
                f"Move parsing out of the inference loop into receiver-side parser threads: it took "
                f"{share:.0%} of the loop's busy time ({parse_ms:.2f} ms vs {compute_ms:.2f} ms compute per batch), "
                "and the GPU waits for it.")
    if verdict == "queue":
        out.append(
            f"Q1 put/get cost {_g(pb, 'q1_op_overhead'):.2f} ms per batch against {compute_ms:.2f} ms of "
            "compute: use an in-process queue, put/get whole batches (fewer, larger items), or poll "
            "less coarsely.")
    if verdict == "consumer":
        h2d, cyc = _g(pb, "h2d"), _g(pb, "gpu_cycle")
        out.append(
            f"The inference stage is the limit at {_fmt_rate(cap)} (GPU cycle {cyc:.2f} ms per batch); "
            "Q1 stays full. Faster model (bf16/compile), more GPUs or larger batches raise the rate; "
            "the producer and network are not to blame.")
        if cyc > 0 and h2d >= 0.5 * cyc:
            out.append(
                f"H2D takes {h2d:.2f} of {cyc:.2f} ms: copy the batch in one pinned transfer "
                "instead of pinning sample by sample.")
    return out


def summary_text(ev: dict[str, Any], verdict: str, confidence: float) -> str:
    """One plain-language paragraph."""
    q1 = ev.get("q1") or {}
    busy = _g(ev, "gpu_busy_any_stream_share")
    what = {
        "network": "data arrives slower than the consumer can take it, so the limit is the "
                   "producer or the network between them",
        "parse": "decoding the batches limits the rate",
        "queue": "the cost of putting batches into and taking them out of Q1 limits the rate",
        "consumer": "the inference stage itself is the limit, which is the healthy case: it is "
                    "fed all the time",
    }[verdict]
    src = ("from the consumer's records alone (no emit log"
           + (", no sequence numbers" if not ev.get("sequence_numbers") else "") + ")"
           if ev.get("consumer_side_only") else "from the consumer's records and the emit log")
    return (
        f"Verdict {verdict} (confidence {confidence:.2f}), {src}: {what}. "
        f"The consumer processed {ev.get('batches_processed', 0)} batches at "
        f"{_fmt_rate(ev.get('throughput_bps'))} against a capacity of {_fmt_rate(ev.get('capacity_bps'))}; "
        f"arrivals came at {_fmt_rate(ev.get('arrival_rate_bps'))}. "
        f"The GPU was busy {busy:.0%} of the time; Q1 was on average {_g(q1, 'mean_occupancy'):.0%} full, "
        f"empty {_g(q1, 'share_empty'):.0%} and under 30 % {_g(q1, 'share_under_30pct'):.0%} of the time; "
        f"{_g(ev, 'gpu_idle_share_waiting_on_empty_q1'):.0%} of the GPU's idle time was spent waiting on an "
        "empty Q1."
    )
