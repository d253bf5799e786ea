"""The typed evidence a verdict rests on: one dataclass per figure family.

Units are in the field names: ``_s`` seconds, ``_ms`` milliseconds, ``_bps``
batches per second, ``_Bps`` bytes per second, ``share`` a fraction 0..1 of
the run's span (or of the time named). ``None`` means "not measured in this
run". ``figures_json`` writes report.json's ``evidence`` object from them;
its keys and nesting are the file format (docs/formats.md) and do not follow
the Python grouping.

``evidence.compute_evidence`` fills these from a run directory; the verdict
and the report read attributes, never keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ArrivalFigures", "CapacityFigures", "CostFigures", "Counts", "DeviceFigures", "Dist",
    "EmitterFigures", "EmitterGaps", "EmitterSending", "Figures", "LongGaps", "LoopFigures",
    "LoopTime", "ParseFigures", "PerBatchMs", "Q1Figures", "ReceiverFigures", "UpstreamFigures", "UpstreamTime",
    "figures_json",
]


@dataclass(frozen=True)
class Dist:
    """A duration's distribution in milliseconds, and how many values it has."""

    count: int = 0
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


@dataclass(frozen=True)
class Counts:
    """What the run holds and where the figures come from."""

    batches_processed: int = 0
    messages_received: int = 0
    span_s: float | None = None
    quarantined: int = 0
    sequence_numbers: bool = False
    consumer_side_only: bool = True


@dataclass(frozen=True)
class ParseFigures:
    """Where parsing ran (``inference_loop``, ``receiver``, ``unknown`` or ``none``)
    and how many parser threads overlapped at most."""

    location: str = "none"
    threads_observed: int = 0


@dataclass(frozen=True)
class Q1Figures:
    """Q1's occupancy over the run (depth in batches, shares of samples)."""

    source: str = ""
    maxsize: int = 1
    samples: int = 0
    mean_depth: float | None = None
    mean_occupancy: float | None = None
    share_empty: float | None = None
    share_under_30pct: float | None = None
    share_over_80pct: float | None = None
    share_full: float | None = None


@dataclass(frozen=True)
class LoopTime:
    """The inference loop's time over the run, in seconds."""

    busy: float | None = 0.0
    wait_on_empty_q1: float | None = 0.0
    q1_get_overhead: float | None = 0.0
    parse: float | None = 0.0
    inference: float | None = 0.0


@dataclass(frozen=True)
class LoopFigures:
    """The inference loop: busy share = 1 - (time waiting on an empty Q1) / span."""

    busy_share: float | None = None
    busy_source: str = ""
    wait_on_empty_q1_s: float | None = None
    time_s: LoopTime = field(default_factory=LoopTime)


@dataclass(frozen=True)
class UpstreamTime:
    """The receiver side's work over the run, in seconds: ``threads`` parser threads
    parsed, ``put_threads`` threads put into Q1 (the most puts open at once; one feeder
    puts for all parsers in the consumer's production layout). ``put_source`` says
    where the put's own cost was read: the producer's clock around each whole put call
    (summary.json q1) or the per-batch put intervals (batches.csv)."""

    threads: int = 1
    parse: float | None = 0.0
    q1_put_overhead: float | None = 0.0
    put_threads: int = 1
    put_source: str = "batches.csv"


@dataclass(frozen=True)
class UpstreamFigures:
    """The receiver side: busy share = the larger of (parse + put's own cost) /
    (parser threads x span), as when each parser puts its own batch, and the put's
    own cost / (put threads x span), as when one thread puts for all parsers
    (``put_busy_share``)."""

    busy_share: float | None = None
    put_busy_share: float | None = None
    time_s: UpstreamTime = field(default_factory=UpstreamTime)
    capacity_bps: float | None = None


@dataclass(frozen=True)
class DeviceFigures:
    """The inference device's timeline (a GPU, or the host for a CPU run)."""

    source: str = ""
    #: what ran the inference stage, as the report names it: "GPU", "CPU" or "device"
    name: str = "device"
    #: the consumer's own name for it (summary.json ``device``: "cpu", "cuda:0"), or None
    id: str | None = None
    busy_compute_share: float | None = None
    busy_any_stream_share: float | None = None
    busy_compute_share_by_device: list[float | None] | None = None
    idle_gaps: Dist = field(default_factory=Dist)
    idle_s: float | None = None
    idle_share_waiting_on_empty_q1: float | None = None
    streams_overlap: bool = True


@dataclass(frozen=True)
class LongGaps:
    """Arrival gaps longer than ``threshold_ms`` (stalls)."""

    threshold_ms: float | None = None
    count: int = 0
    total_s: float | None = 0.0
    longest_s: float | None = None


@dataclass(frozen=True)
class ArrivalFigures:
    """What arrived and how fast the consumer processed it."""

    rate_bps: float | None = None
    throughput_bps: float | None = None
    interarrival: Dist = field(default_factory=Dist)
    interarrival_cv: float | None = None
    long_gaps: LongGaps = field(default_factory=LongGaps)
    achieved_byte_rate_Bps: float | None = None


@dataclass(frozen=True)
class CapacityFigures:
    """What the inference loop could take (batches per second)."""

    bps: float | None = None
    source: str = ""
    from_stage_times_bps: float | None = None
    without_loop_parse_bps: float | None = None
    arrival_vs_capacity: float | None = None


@dataclass(frozen=True)
class PerBatchMs:
    """Median per-batch stage times in milliseconds."""

    parse: float | None = None
    parse_in_loop: float | None = 0.0
    q1_put: float | None = None
    q1_put_overhead: float | None = None
    q1_get: float | None = None
    q1_get_overhead: float | None = None
    q1_op_overhead: float | None = None
    h2d: float | None = None
    compute: float | None = None
    d2h: float | None = None
    gpu_cycle: float | None = None
    loop_host: float | None = None
    loop_inference: float | None = None


@dataclass(frozen=True)
class CostFigures:
    """Per-batch costs and their ratios."""

    per_batch_ms: PerBatchMs = field(default_factory=PerBatchMs)
    parse_vs_compute: float | None = None
    queue_op_vs_compute: float | None = None
    parse_share_of_loop: float | None = 0.0
    stage_distributions: dict[str, Dist] = field(default_factory=dict)
    starvation: bool = False


@dataclass(frozen=True)
class EmitterSending:
    """The emitter's sends (only when at least one message was sent)."""

    emitted_byte_rate_Bps: float | None = None
    emitted_rate_bps: float | None = None
    offered_rate_bps: float | None = None
    achieved_vs_emitted_bytes: float | None = None
    send_rate_while_sending_Bps: float | None = None
    sending_share: float | None = None
    blocked_share: float | None = None
    schedule_lag: Dist = field(default_factory=Dist)
    #: seconds the emitter was held back by backpressure, by the phase of the message
    blocked_s_by_phase: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EmitterGaps:
    """What the emitter was doing during the long arrival gaps (shares of gaps)."""

    count: int = 0
    share_emitter_silent: float | None = None
    share_emitter_blocked: float | None = None
    share_bytes_in_flight: float | None = None
    share_other: float | None = None
    share_fault_stall: float | None = None
    silent_time_share: float | None = None
    phase_before_gap: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EmitterFigures:
    """How the emit log lines up with what arrived."""

    attempts: int = 0
    completed: int = 0
    sending: EmitterSending | None = None
    last_byte_to_arrival: Dist | None = None
    long_gaps: EmitterGaps | None = None

    @property
    def blocked_share(self) -> float:
        """Share of its time the emitter was held back by backpressure (0 if unknown)."""
        return (self.sending.blocked_share or 0.0) if self.sending else 0.0

    @property
    def sending_share(self) -> float:
        """Share of its span the emitter had bytes on the wire (0 if unknown)."""
        return (self.sending.sending_share or 0.0) if self.sending else 0.0


@dataclass(frozen=True)
class ReceiverFigures:
    """The consumer's receiver thread (summary.json ``receiver``): its busy share
    (1 - time waiting for bytes / its span), reads per wake-up and the kernel's
    receive queue where sampled. None where the consumer did not measure it."""

    busy_share: float | None = None
    span_s: float | None = None
    wait_s: float | None = None
    read_s: float | None = None
    wakeups: int | None = None
    bytes_per_wakeup: float | None = None
    rx_queue_bytes_mean: float | None = None
    rx_queue_bytes_max: float | None = None

    @property
    def measured(self) -> bool:
        return self.busy_share is not None


@dataclass(frozen=True)
class Figures:
    """Every figure of a run, by family."""

    counts: Counts = field(default_factory=Counts)
    parse: ParseFigures = field(default_factory=ParseFigures)
    q1: Q1Figures = field(default_factory=Q1Figures)
    loop: LoopFigures = field(default_factory=LoopFigures)
    upstream: UpstreamFigures = field(default_factory=UpstreamFigures)
    device: DeviceFigures = field(default_factory=DeviceFigures)
    arrivals: ArrivalFigures = field(default_factory=ArrivalFigures)
    capacity: CapacityFigures = field(default_factory=CapacityFigures)
    costs: CostFigures = field(default_factory=CostFigures)
    emitter: EmitterFigures | None = None
    receiver: ReceiverFigures = field(default_factory=ReceiverFigures)
    #: the rate cap the run's shaping record says was applied (shaping.json), if any,
    #: and the phases it applied to ("*": all)
    shaping_cap: str | None = None
    capped_phases: list[str] = field(default_factory=list)


def _emitter_json(em: EmitterFigures) -> dict[str, Any]:
    out: dict[str, Any] = {"attempts": em.attempts, "completed": em.completed}
    if em.sending is not None:
        out.update(asdict(em.sending))
    if em.last_byte_to_arrival is not None:
        out["last_byte_to_arrival"] = asdict(em.last_byte_to_arrival)
    if em.long_gaps is not None:
        out["long_gaps"] = asdict(em.long_gaps)
    return out


def figures_json(f: Figures) -> dict[str, Any]:
    """report.json's ``evidence`` object (its key names are the format)."""
    d, a, c, k = f.device, f.arrivals, f.capacity, f.costs
    out: dict[str, Any] = {
        "batches_processed": f.counts.batches_processed,
        "messages_received": f.counts.messages_received,
        "span_s": f.counts.span_s,
        "parse_location": f.parse.location,
        "parser_threads_observed": f.parse.threads_observed,
        "q1": asdict(f.q1),
        "loop_time_s": asdict(f.loop.time_s),
        "upstream_time_s": asdict(f.upstream.time_s),
        "loop_busy_share": f.loop.busy_share,
        "loop_busy_source": f.loop.busy_source,
        "loop_wait_on_empty_q1_s": f.loop.wait_on_empty_q1_s,
        "upstream_busy_share": f.upstream.busy_share,
        "upstream_put_busy_share": f.upstream.put_busy_share,
        "gpu_source": d.source,
        "device": d.name,
        "device_id": d.id,
        # the busy figures under their one name (simstream.records.contract.BUSY_FIGURES)
        "loop_busy": f.loop.busy_share,
        "device_busy": d.busy_any_stream_share,
        "device_compute_busy": d.busy_compute_share,
    }
    if d.busy_compute_share_by_device is not None:
        out["gpu_busy_compute_share_by_device"] = list(d.busy_compute_share_by_device)
    out |= {
        "gpu_busy_compute_share": d.busy_compute_share,
        "gpu_busy_any_stream_share": d.busy_any_stream_share,
        "gpu_idle_gaps": asdict(d.idle_gaps),
        "gpu_idle_s": d.idle_s,
        "gpu_idle_share_waiting_on_empty_q1": d.idle_share_waiting_on_empty_q1,
        "arrival_rate_bps": a.rate_bps,
        "throughput_bps": a.throughput_bps,
        "interarrival": asdict(a.interarrival),
        "interarrival_cv": a.interarrival_cv,
        "arrival_long_gaps": asdict(a.long_gaps),
        "capacity_without_loop_parse_bps": c.without_loop_parse_bps,
        "gpu_streams_overlap": d.streams_overlap,
        "capacity_bps": c.bps,
        "capacity_source": c.source,
        "capacity_from_stage_times_bps": c.from_stage_times_bps,
        "arrival_vs_capacity": c.arrival_vs_capacity,
        "upstream_capacity_bps": f.upstream.capacity_bps,
        "per_batch_ms": asdict(k.per_batch_ms),
        "parse_vs_compute": k.parse_vs_compute,
        "queue_op_vs_compute": k.queue_op_vs_compute,
        "parse_share_of_loop": k.parse_share_of_loop,
        "stage_distributions": {name: asdict(x) for name, x in k.stage_distributions.items()},
        "starvation": k.starvation,
        "achieved_byte_rate_Bps": a.achieved_byte_rate_Bps,
        "emitter": _emitter_json(f.emitter) if f.emitter is not None else None,
        "consumer_side_only": f.counts.consumer_side_only,
        "sequence_numbers": f.counts.sequence_numbers,
        "quarantined": f.counts.quarantined,
        "receiver": asdict(f.receiver),
        "shaping_cap": f.shaping_cap,
        "capped_phases": list(f.capped_phases),
    }
    return out
