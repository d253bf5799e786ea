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
   Q1 over 80 % full for at least half of the run (``Q1_FULL_SATURATED``)
   also means the loop is the limit, whatever its get waits say: a loop that
   starves cannot leave Q1 full. This guards the rule where get waits are
   measured across processes or actors (a busy machine delays a put's stamp,
   so a get seems to wait for data that was already queued).
2. Otherwise the loop starves (it waited on an empty Q1 for >= 15 % of the
   run). If the upstream side is saturated (``upstream_busy_share`` >= 0.85: the
   larger of parser-thread work (parse + the put's own cost) / (threads x span)
   and the put's own cost / (put threads x span), since one feeder thread puts
   for all parsers in the consumer's layout), where that work went decides
   (``upstream_time_s``, each per thread that did it): parse before Q1 ->
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

from simstream.diagnose.cause import Cause, network_cause
from simstream.diagnose.figures import Figures

__all__ = ["LOOP_SATURATED", "Q1_FULL_SATURATED", "UPSTREAM_SATURATED", "VERDICTS", "decide", "recommendations", "summary_text"]

VERDICTS = ("network", "parse", "queue", "consumer")
LOOP_SATURATED = 0.85
Q1_FULL_SATURATED = 0.5
UPSTREAM_SATURATED = 0.85


def _v(x: float | None) -> float:
    """A figure as a number: 0 when it was not measured."""
    if x is None:
        return 0.0
    v = float(x)
    return v if math.isfinite(v) else 0.0


def _dominance(top: float, second: float) -> float:
    """0 when the two costs tie, 1 when the top one is >= 3x the second."""
    if top <= 0:
        return 0.0
    r = second / top
    return max(0.0, min(1.0, (1.0 - r) / (1.0 - 1.0 / 3.0)))


def _clamp(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return max(lo, min(hi, x))


def _loop_bound(f: Figures, u_loop: float) -> tuple[str, float, list[str]]:
    """Rule 1: the loop is saturated; the largest share of its busy time decides."""
    lt = f.loop.time_s
    costs = {"parse": _v(lt.parse), "queue": _v(lt.q1_get_overhead), "consumer": _v(lt.inference)}
    ranked = sorted(costs.items(), key=lambda kv: kv[1], reverse=True)
    verdict = ranked[0][0]
    reasons = [
        f"the inference loop was busy {u_loop:.0%} of the run (waited on an empty Q1 only "
        f"{1 - u_loop:.0%}): it is the limit",
        f"the loop's busy time went to: parsing inside the loop {costs['parse']:.2f}, "
        f"Q1 get overhead {costs['queue']:.2f}, the inference stage (submit, copies, "
        f"compute pacing) {costs['consumer']:.2f} (s in all)"]
    full = _v(f.q1.share_over_80pct)
    if u_loop < LOOP_SATURATED:
        reasons[0] = (f"Q1 was over 80 % full {full:.0%} of the run: the inference loop is the limit "
                      f"(its get waits, {1 - u_loop:.0%} of the run, were not waits for data)")
    primary = _clamp((u_loop - LOOP_SATURATED) / (1 - LOOP_SATURATED))
    dom = _dominance(ranked[0][1], ranked[1][1])
    conf = 0.35 + 0.3 * primary + 0.25 * dom + 0.1 * _v(f.q1.share_over_80pct)
    return verdict, round(_clamp(conf, 0.05, 0.99), 3), reasons


def _upstream_bound(f: Figures, u_up: float) -> tuple[str, float, list[str]]:
    """Rule 2: the receiver's parser threads are saturated; parse vs put cost decides."""
    ut = f.upstream.time_s
    costs = {"parse": _v(ut.parse), "queue": _v(ut.q1_put_overhead)}
    # each cost per thread that carried it: parser threads parse, put threads put
    per_thread = {"parse": costs["parse"] / max(ut.threads, 1), "queue": costs["queue"] / max(ut.put_threads, 1)}
    verdict = max(per_thread, key=lambda k: per_thread[k])
    other = min(per_thread.values())
    reasons = [
        f"the receiver side was busy {u_up:.0%} of the run (its busiest part: the parser threads "
        f"({ut.threads}) together, or the putting into Q1 alone ({ut.put_threads} thread(s), busy "
        f"{_v(f.upstream.put_busy_share):.0%})): parsing {costs['parse']:.2f} + Q1 put overhead "
        f"{costs['queue']:.2f} (s in all)"]
    primary = _clamp((u_up - UPSTREAM_SATURATED) / (1 - UPSTREAM_SATURATED))
    dom = _dominance(per_thread[verdict], other)
    conf = 0.35 + 0.3 * primary + 0.25 * dom + 0.1 * _v(f.q1.share_under_30pct)
    return verdict, round(_clamp(conf, 0.05, 0.99), 3), reasons


def _arrival_bound(f: Figures, u_loop: float, u_up: float) -> tuple[str, float, list[str]]:
    """Rule 3: nothing in the consumer was saturated: arrivals set the pace."""
    reasons = [
        f"the receiver side (parser threads, putting into Q1) was busy only {u_up:.0%}: neither it nor "
        "the inference loop was saturated, arrivals set the pace"]
    avc = f.capacity.arrival_vs_capacity
    if avc is not None:
        reasons.append(f"arrivals ran at {avc:.0%} of the consumer's capacity")
    primary = _clamp((LOOP_SATURATED - max(u_loop, u_up)) / 0.5)
    corr = 0.5 * _v(f.q1.share_under_30pct) + 0.5 * _v(f.device.idle_share_waiting_on_empty_q1)
    conf = 0.4 + 0.35 * primary + 0.25 * corr
    full = _v(f.q1.share_over_80pct)
    blocked = f.emitter.blocked_share if f.emitter else 0.0
    # an emitter blocked while Q1 was full is consumer backpressure, which contradicts
    # this verdict; blocked while Q1 sat empty is a full socket on a slow link, which fits it
    if blocked > 0.3 and full > 0.3:
        conf -= 0.2
        reasons.append(f"yet the emitter was blocked by backpressure {blocked:.0%} of its "
                       f"time and Q1 was over 80 % full {full:.0%} of the run")
    return "network", round(_clamp(conf, 0.05, 0.99), 3), reasons


def decide(f: Figures) -> tuple[str, float, list[str]]:
    """(verdict, confidence, reasons) from the evidence figures."""
    if f.counts.batches_processed == 0:
        if f.counts.messages_received and f.counts.quarantined:
            return "parse", 0.3, ["no batch was processed: every received message failed to decode"]
        return "network", 0.3, ["no batch was processed: nothing usable arrived"]
    u_loop, u_up = _v(f.loop.busy_share), _v(f.upstream.busy_share)
    if u_loop >= LOOP_SATURATED or _v(f.q1.share_over_80pct) >= Q1_FULL_SATURATED:
        return _loop_bound(f, u_loop)
    starve = (f"the inference loop waited on an empty Q1 {1 - u_loop:.0%} of the run (busy {u_loop:.0%}): "
              "it starves")
    if u_up >= UPSTREAM_SATURATED:
        verdict, conf, reasons = _upstream_bound(f, u_up)
    else:
        verdict, conf, reasons = _arrival_bound(f, u_loop, u_up)
    return verdict, conf, [starve, *reasons]


def _fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}/s"


def _network_recs(f: Figures, cause: Cause) -> list[str]:
    if cause.cause == "receive":
        out = [
            f"Arrivals ({_fmt_rate(f.arrivals.rate_bps)}) are below what the inference stage can take "
            f"({_fmt_rate(f.capacity.bps)}), but the consumer's receive path pushed back: "
            f"{cause.why}. Read with fewer copies (zero-copy receive, one pinned buffer), spread the "
            "stream over more connections and receiver threads, or give the receiver a core of its own: "
            "the consumer's fast receive layout does the first two (consumer.layout: fast, or "
            "`simstream consume --layout fast`, with one address per emitter rank in transport.urls: "
            "one socket and receiver thread per address, frames decoded in parallel straight into Q1; "
            "BENCHMARKS.md, fast receive layout)."]
    else:
        out = [
            f"Arrivals ({_fmt_rate(f.arrivals.rate_bps)}) are below what the consumer can take "
            f"({_fmt_rate(f.capacity.bps)}): speed up the producer or the link (more ranks/streams, a "
            "faster network, less data per batch, e.g. compression), not the consumer."]
    em = f.emitter
    if em is None:
        return out
    lg = em.long_gaps
    if lg is not None:
        out.append(
            f"Of {lg.count} long arrival gaps, {_v(lg.share_emitter_silent):.0%} fell while the "
            f"emitter sent nothing (producer stalls), {_v(lg.share_bytes_in_flight):.0%} while bytes "
            "were in flight (link too slow).")
    rate = em.sending.send_rate_while_sending_Bps if em.sending else None
    if rate and em.sending_share > 0.8 and cause.cause == "link":
        out.append(
            f"The emitter was sending {em.sending_share:.0%} of the time at {rate * 8 / 1e6:.0f} Mbit/s: "
            + (f"the link is saturated (a bandwidth cap: {f.shaping_cap})." if f.shaping_cap
               else "the path between them carried no more (no rate cap was applied)."))
    return out


def _stall_recs(f: Figures, verdict: str) -> list[str]:
    """How deep Q1 would have to be to ride out the longest arrival stall."""
    longest = _v(f.arrivals.long_gaps.longest_s)
    cap, arr, maxsize = f.capacity.bps, f.arrivals.rate_bps, f.q1.maxsize
    stalls_matter = verdict == "network" or (
        verdict == "consumer" and _v(f.device.idle_share_waiting_on_empty_q1) > 0.3)
    if not (longest > 0 and cap and stalls_matter and f.arrivals.long_gaps.count > 0):
        return []
    need = int(math.ceil(longest * cap))
    cur = f" (Q1 maxsize is {maxsize})" if maxsize else ""
    if arr and arr < 0.95 * cap and verdict == "network":
        return [f"A Q1 of {need} batches would ride out the longest stall ({longest:.2f} s at "
                f"{cap:.1f} batches/s){cur}, but only if the producer's average rate exceeded the "
                "consumer's; it does not, so depth alone will not end the starvation."]
    return [f"A Q1 of {need} batches{cur} would ride out the longest observed arrival stall "
            f"({longest:.2f} s at the consumption rate of {cap:.1f} batches/s)."]


def _parse_recs(f: Figures, verdict: str) -> list[str]:
    """Parser threads needed, and moving parsing out of the loop."""
    out: list[str] = []
    pb = f.costs.per_batch_ms
    parse_ms, compute_ms, loc = _v(pb.parse), _v(pb.compute), f.parse.location
    cap_np = f.capacity.without_loop_parse_bps if loc == "inference_loop" else f.capacity.bps
    if parse_ms > 0 and cap_np:
        em = f.emitter
        # an emitter that was never held back sends on its own schedule: that rate is real demand
        offered = _v(em.sending.offered_rate_bps) if em and em.sending and em.blocked_share < 0.05 else 0.0
        target = min(offered, cap_np) if offered else cap_np
        basis = ("the producer's offered rate" if offered and offered < cap_np
                 else "what the rest of the inference stage can take")
        threads = max(1, int(math.ceil(parse_ms / 1e3 * target)))
        out.append(
            f"Parsing takes {parse_ms:.2f} ms per batch; feeding {target:.1f} batches/s ({basis}) needs "
            f"{threads} parser thread(s)"
            + (f" (observed {f.parse.threads_observed})." if loc == "receiver" else "."))
    if loc == "inference_loop" and parse_ms > 0:
        share = _v(f.costs.parse_share_of_loop)
        if verdict == "parse" or share > 0.2:
            out.append(
                f"Move parsing out of the inference loop into receiver-side parser threads: it took "
                f"{share:.0%} of the loop's busy time ({parse_ms:.2f} ms vs {compute_ms:.2f} ms compute per batch), "
                "and the device waits for it.")
    return out


def _stage_recs(f: Figures, verdict: str) -> list[str]:
    pb = f.costs.per_batch_ms
    compute_ms = _v(pb.compute)
    if verdict == "queue":
        return [f"Q1 put/get cost {_v(pb.q1_op_overhead):.2f} ms per batch against {compute_ms:.2f} ms of "
                "compute: use an in-process queue, put/get whole batches (fewer, larger items), or poll "
                "less coarsely. On Ray, consumer.layout: fast (`--layout fast`) keeps the queue in "
                "process: each inference actor receives its share of the addresses itself, with no "
                "shard actors and no object store between the socket and the device "
                "(BENCHMARKS.md, the GPU session, run 3)."]
    if verdict != "consumer":
        return []
    h2d, cyc = _v(pb.h2d), _v(pb.gpu_cycle)
    out = [f"The inference stage is the limit at {_fmt_rate(f.capacity.bps)} (device cycle {cyc:.2f} ms per batch); "
           "Q1 stays full. Faster model (bf16/compile), more devices or larger batches raise the rate; "
           "the producer and network are not to blame."]
    if cyc > 0 and h2d >= 0.5 * cyc:
        out.append(f"H2D takes {h2d:.2f} of {cyc:.2f} ms: copy the batch in one pinned transfer "
                   "instead of pinning sample by sample.")
    return out


def recommendations(f: Figures, verdict: str, cause: Cause | None = None) -> list[str]:
    """Quantitative advice, most useful first."""
    if not f.counts.batches_processed:
        if f.counts.messages_received:
            return ["Every received message was quarantined: see quarantine/*.json for the reasons "
                    "(format mismatch, e.g. HDF5 sent to an npz-only parser, or a partial batch)."]
        return ["Nothing arrived: check that the producer ran and reached the consumer's address "
                "(role client/server, port), then run again."]
    out = _network_recs(f, cause or network_cause(f)) if verdict == "network" else []
    return out + _stall_recs(f, verdict) + _parse_recs(f, verdict) + _stage_recs(f, verdict)


_NETWORK_WHAT = {
    "producer": "data arrives slower than the consumer can take it because the producer sends no faster",
    "link": "data arrives slower than the consumer can take it because the link between them carries no more",
    "receive": "data arrives slower than the inference stage can take it because the consumer's receive "
               "path (socket reads and copies) pushes back on the producer",
    "unknown": "data arrives slower than the consumer can take it, so the limit is the "
               "producer or the network between them",
}


def _device_words(f: Figures) -> str:
    """``inference device (cpu)``, or the device's kind where the run does not name it."""
    return f"inference device ({f.device.id})" if f.device.id else f.device.name


def summary_text(f: Figures, verdict: str, confidence: float, cause: Cause | None = None) -> str:
    """One plain-language paragraph; its first sentence names the verdict and, for
    ``network``, the cause."""
    q1 = f.q1
    busy = _v(f.device.busy_any_stream_share)
    if verdict == "network" and cause is None:
        cause = network_cause(f)
    head = f"Verdict {verdict}" + (f", cause {cause.cause}" if verdict == "network" and cause else "")
    what = {
        "network": _NETWORK_WHAT[cause.cause] + f" ({cause.why})" if cause else "",
        "parse": "decoding the batches limits the rate",
        "queue": "the cost of putting batches into and taking them out of Q1 limits the rate",
        "consumer": "the inference stage itself is the limit, which is the healthy case: it is "
                    "fed all the time",
    }[verdict]
    src = ("from the consumer's records alone (no emit log"
           + (", no sequence numbers" if not f.counts.sequence_numbers else "") + ")"
           if f.counts.consumer_side_only else "from the consumer's records and the emit log")
    return (
        f"{head} (confidence {confidence:.2f}), {src}: {what}. "
        f"The consumer processed {f.counts.batches_processed} batches at "
        f"{_fmt_rate(f.arrivals.throughput_bps)} against a capacity of {_fmt_rate(f.capacity.bps)}; "
        f"arrivals came at {_fmt_rate(f.arrivals.rate_bps)}. "
        f"The {_device_words(f)} was busy {busy:.0%} of the time (device busy: the share of the run "
        f"any of its streams worked, H2D, compute or D2H); Q1 was on average {_v(q1.mean_occupancy):.0%} full, "
        f"empty {_v(q1.share_empty):.0%} and under 30 % {_v(q1.share_under_30pct):.0%} of the time; "
        f"{_v(f.device.idle_share_waiting_on_empty_q1):.0%} of its compute idle time was spent waiting on an "
        "empty Q1."
    )
