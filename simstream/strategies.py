"""Hypothesis strategies for users' property tests: valid simstream objects only.

Every strategy draws objects the profile's validation accepts (a Profile, a
NetworkConditions, a Timeline, a Fault) or, for :func:`payloads`, messages as
the emitter would send them. Each takes ``min_*``/``max_*`` keywords, and
everything shrinks towards the calm case: no latency or jitter, no bandwidth
cap, one phase, no faults, small messages.

    from hypothesis import given
    from simstream.strategies import network_conditions

    @given(network_conditions(max_latency_ms=50, min_bandwidth_mbps=10))
    def test_my_consumer(net): ...

Needs hypothesis (``pip install simstream[test]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from simstream.profile import (
    FAULT_KINDS,
    Fault,
    NetworkConditions,
    NetworkOverride,
    Phase,
    Profile,
    Source,
    Timeline,
    parse_profile,
)

__all__ = [
    "fault_schedules",
    "faults",
    "network_conditions",
    "network_overrides",
    "payloads",
    "phases",
    "profiles",
    "sources",
    "timelines",
]

_JITTER_DISTRIBUTIONS = ("normal", "uniform", "pareto", "paretonormal")


def _floats(lo: float, hi: float, *, places: int = 3) -> st.SearchStrategy[float]:
    """Floats in [lo, hi] rounded to ``places`` (readable falsifying examples);
    shrink towards lo."""
    if hi < lo:
        raise ValueError(f"max ({hi}) is below min ({lo})")
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(
        lambda x: min(hi, max(lo, round(x, places))))


def network_conditions(*, min_latency_ms: float = 0.0, max_latency_ms: float = 100.0,
                       min_jitter_ms: float = 0.0, max_jitter_ms: float = 20.0,
                       min_bandwidth_mbps: float | None = None,
                       max_bandwidth_mbps: float | None = None,
                       distributions: Sequence[str] = _JITTER_DISTRIBUTIONS,
                       ) -> st.SearchStrategy[NetworkConditions]:
    """A profile's ``network`` section. Bandwidth: uncapped (None) or a cap in
    [min_bandwidth_mbps or 1, max_bandwidth_mbps or 10,000] Mbit/s; with
    ``max_bandwidth_mbps`` always capped. Shrinks to no latency, no jitter,
    uncapped."""
    lo_bw = 1.0 if min_bandwidth_mbps is None else float(min_bandwidth_mbps)
    hi_bw = 10_000.0 if max_bandwidth_mbps is None else float(max_bandwidth_mbps)
    if lo_bw <= 0:
        raise ValueError(f"min_bandwidth_mbps {min_bandwidth_mbps} is not > 0")
    capped = _floats(lo_bw, hi_bw, places=1).filter(lambda x: x > 0)
    bandwidth = capped if max_bandwidth_mbps is not None else st.one_of(st.none(), capped)
    return st.builds(
        NetworkConditions,
        latency_ms=_floats(min_latency_ms, max_latency_ms),
        jitter_ms=_floats(min_jitter_ms, max_jitter_ms),
        jitter_distribution=st.sampled_from(list(distributions)),
        bandwidth_mbps=bandwidth,
    )


def network_overrides(*, max_latency_ms: float = 100.0, max_jitter_ms: float = 20.0,
                      min_bandwidth_mbps: float = 1.0, max_bandwidth_mbps: float = 10_000.0,
                      ) -> st.SearchStrategy[NetworkOverride]:
    """A phase's ``network`` override (unset keys inherit); shrinks to no override key."""
    return st.builds(
        NetworkOverride,
        latency_ms=st.none() | _floats(0.0, max_latency_ms),
        jitter_ms=st.none() | _floats(0.0, max_jitter_ms),
        jitter_distribution=st.none() | st.sampled_from(_JITTER_DISTRIBUTIONS),
        bandwidth_mbps=st.none() | _floats(min_bandwidth_mbps, max_bandwidth_mbps,
                                           places=1).filter(lambda x: x > 0),
    )


def phases(*, min_rate_hz: float = 1.0, max_rate_hz: float = 100.0,
           min_duration_s: float = 0.1, max_duration_s: float = 5.0,
           silent: bool = True, as_fast_as_possible: bool = False,
           network: bool = True, open_ended: bool = False) -> st.SearchStrategy[Phase]:
    """One timeline phase with a duration (None too with ``open_ended``); rate in
    [min_rate_hz, max_rate_hz], 0 (silent) with ``silent``, None (as fast as
    possible) with ``as_fast_as_possible``."""
    rates: st.SearchStrategy[float | None] = _floats(min_rate_hz, max_rate_hz, places=2)
    if silent:
        rates = rates | st.just(0.0)
    if as_fast_as_possible:
        rates = rates | st.none()
    durations: st.SearchStrategy[float | None] = _floats(min_duration_s, max_duration_s)
    if open_ended:
        durations = st.none() | durations
    return st.builds(
        Phase,
        name=st.sampled_from(["steady", "burst", "calm", "gap", "drift"]),
        duration_s=durations,
        rate_hz=rates,
        network=st.none() | network_overrides() if network else st.none(),
    )


def timelines(*, min_phases: int = 1, max_phases: int = 4, min_rate_hz: float = 1.0,
              max_rate_hz: float = 100.0, max_duration_s: float = 5.0, silent: bool = True,
              as_fast_as_possible: bool = False, network: bool = True,
              ) -> st.SearchStrategy[Timeline]:
    """A valid timeline: every phase but an open-ended last has a duration; at least
    one phase sends. Shrinks to one phase, repeating."""

    @st.composite
    def build(draw: st.DrawFn) -> Timeline:
        kw: dict[str, Any] = dict(min_rate_hz=min_rate_hz, max_rate_hz=max_rate_hz,
                  max_duration_s=max_duration_s, silent=silent,
                  as_fast_as_possible=as_fast_as_possible, network=network)
        ph = draw(st.lists(phases(**kw), min_size=min_phases, max_size=max_phases))
        if all(p.rate_hz == 0 for p in ph):
            ph[0] = ph[0].model_copy(update={"rate_hz": min_rate_hz})
        names = [f"{p.name}{i}" if i else p.name for i, p in enumerate(ph)]
        ph = [p.model_copy(update={"name": n}) for p, n in zip(ph, names, strict=True)]
        repeat = draw(st.booleans().map(lambda b: not b))  # shrinks to repeat: true
        return Timeline.model_validate({"repeat": repeat,
                                        "phases": [p.model_dump() for p in ph]})

    return build()


_FAULT_ATTRS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "reset": {},
    "truncate": {"fraction": _floats(0.01, 0.99).filter(lambda x: 0 < x < 1)},
    "corrupt": {"nbytes": st.integers(1, 64)},
    "stall": {"duration_ms": _floats(0.0, 500.0, places=1)},
    "duplicate": {},
    "slow_close": {"duration_ms": st.none() | _floats(0.0, 200.0, places=1)},
}


def faults(*, kinds: Sequence[str] = FAULT_KINDS, max_message: int = 100,
           max_at_s: float = 10.0, ranks: int = 1, max_stall_ms: float = 500.0,
           ) -> st.SearchStrategy[Fault]:
    """One fault with a trigger (``at_message`` < max_message, ``every_messages``,
    ``at_s``/``every_s`` < max_at_s, ``probability``) and its own attributes;
    ``rank`` one of ``ranks`` or every rank. Shrinks to a reset at message 0."""
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown or not kinds:
        raise ValueError(f"kinds {list(kinds)}: expected a non-empty subset of {FAULT_KINDS}")

    @st.composite
    def build(draw: st.DrawFn) -> Fault:
        kind = draw(st.sampled_from(list(kinds)))
        trigger: dict[str, Any] = draw(st.one_of(
            st.builds(dict, at_message=st.integers(0, max(0, max_message - 1))),
            st.builds(dict, every_messages=st.integers(1, max(1, max_message))),
            st.builds(dict, at_s=_floats(0.0, max_at_s)),
            st.builds(dict, every_s=_floats(0.01, max(0.01, max_at_s)).filter(lambda x: x > 0)),
            st.builds(dict, probability=_floats(0.0, 1.0)),
        ))
        attrs = {k: draw(v) for k, v in _FAULT_ATTRS[kind].items()}
        if kind == "stall":
            attrs["duration_ms"] = min(attrs["duration_ms"], max_stall_ms)
        rank = draw(st.none() | st.integers(0, max(0, ranks - 1))) if ranks > 1 else None
        return Fault.model_validate({"kind": kind, **trigger,
                                     **{k: v for k, v in attrs.items() if v is not None},
                                     "rank": rank})

    return build()


def fault_schedules(*, min_faults: int = 0, max_faults: int = 3, **kw: Any
                    ) -> st.SearchStrategy[list[Fault]]:
    """A profile's ``faults`` list (keywords as :func:`faults`); shrinks to no faults."""
    return st.lists(faults(**kw), min_size=min_faults, max_size=max_faults)


def sources(*, min_batch_size: int = 1, max_batch_size: int = 8, max_side: int = 64,
            dtypes: Sequence[str] = ("float32", "uint16", "float16"),
            compressions: Sequence[str] = ("none", "gzip", "bitshuffle_lz4"),
            formats: Sequence[str] = ("hdf5", "npz"), max_total_events: int | None = 64,
            ) -> st.SearchStrategy[Source]:
    """A profile's ``source`` section with small events (1 x H x W, sides <= max_side)."""

    @st.composite
    def build(draw: st.DrawFn) -> Source:
        fmt = draw(st.sampled_from(list(formats)))
        comps = [c for c in compressions if fmt == "hdf5" or c in ("none", "gzip")] or ["none"]
        side = st.integers(1, max_side)
        total = None if max_total_events is None else draw(st.integers(1, max_total_events))
        return Source.model_validate({
            "batch_size": draw(st.integers(min_batch_size, max_batch_size)),
            "shape": [1, draw(side), draw(side)],
            "dtype": draw(st.sampled_from(list(dtypes))),
            "content": draw(st.sampled_from(["constant", "random", "peaks"])),
            "format": fmt,
            "compression": draw(st.sampled_from(comps)),
            "compression_level": 3,
            "total_events": total,
            "peaks_per_event": draw(st.integers(0, 5)),
        })

    return build()


def profiles(*, min_messages: int = 1, max_messages: int = 20, max_ranks: int = 1,
             max_phases: int = 3, max_faults: int = 3, max_latency_ms: float = 50.0,
             max_jitter_ms: float = 10.0, min_bandwidth_mbps: float | None = None,
             max_bandwidth_mbps: float | None = None, max_rate_hz: float = 200.0,
             fault_kinds: Sequence[str] = FAULT_KINDS, url: str = "tcp://127.0.0.1:12321",
             ) -> st.SearchStrategy[Profile]:
    """A whole valid profile that stops by itself (``stop.messages`` in
    [min_messages, max_messages] per rank), small sources, the network,
    timeline and fault schedule strategies above. Shrinks to one rank, one
    phase, no latency, uncapped, no faults."""

    @st.composite
    def build(draw: st.DrawFn) -> Profile:
        ranks = draw(st.integers(1, max(1, max_ranks)))
        n = draw(st.integers(min_messages, max_messages))
        data = {
            "name": "generated",
            "seed": draw(st.integers(0, 2**16)),
            "source": draw(sources(max_total_events=None)).model_dump(),
            "transport": {"kind": "zmq", "role": "client", "url": url, "ranks": ranks},
            "network": draw(network_conditions(
                max_latency_ms=max_latency_ms, max_jitter_ms=max_jitter_ms,
                min_bandwidth_mbps=min_bandwidth_mbps,
                max_bandwidth_mbps=max_bandwidth_mbps)).model_dump(),
            "timeline": draw(timelines(max_phases=max_phases, max_rate_hz=max_rate_hz,
                                       max_duration_s=2.0)).model_dump(),
            "faults": [f.model_dump(exclude_none=True) for f in draw(fault_schedules(
                max_faults=max_faults, kinds=fault_kinds, max_message=n, max_at_s=2.0,
                ranks=ranks, max_stall_ms=200.0))],
            "stop": {"messages": n},
        }
        return parse_profile(data, source="(simstream.strategies.profiles)")

    return build()


def payloads(*, sources: st.SearchStrategy[Source] | None = None, max_seq: int = 1000,
             max_rank: int = 3) -> st.SearchStrategy[bytes]:
    """Encoded messages exactly as the emitter sends them (an HDF5 or npz file of
    one batch, with /simstream/rank and /simstream/sequence), for fuzzing a
    consumer's parser. Small sources by default."""
    from simstream import strategies as _self

    src = sources if sources is not None else _self.sources()

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        from simstream.payload import MessageFactory

        source = draw(src)
        factory = MessageFactory(source, rank=draw(st.integers(0, max_rank)),
                                 seed=draw(st.integers(0, 2**16)))
        top = max_seq
        if source.total_events is not None:  # the source's last message is the last seq
            top = min(top, -(-source.total_events // source.batch_size) - 1)
        return bytes(factory.message(draw(st.integers(0, top))).payload)

    return build()
