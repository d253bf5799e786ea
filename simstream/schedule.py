"""The schedule: a pure function of (profile, rank) giving the planned send attempts.

:class:`Schedule` walks the timeline's phases, offers messages at each phase's
rate, applies stalls (which shift everything after them), decides which faults
strike (the envelope in ``simstream.faults``), draws latency and jitter, and
keeps the order of one TCP stream (a message never leaves before the previous
one). Times are seconds since the start of the run.

Determinism: every random draw comes from RNGs seeded by (profile.seed, rank,
purpose), consumed in sequence-number order, so the same profile and seed give
the same send times, sizes and faults. The one input from outside is ``now``
in as-fast-as-possible phases (``rate_hz: null``): how many messages such a
phase holds depends on how fast the link drains them. The engine passes the
real elapsed time; a dry run passes nothing and the schedule estimates it
from the bandwidth cap (or ``link_estimate_mbps`` when uncapped).
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from simstream.faults import AppliedFault, FaultRule, make_fault
from simstream.faults.duplicate import Duplicate
from simstream.faults.stall import Stall
from simstream.profile import Profile
from simstream.timing import (
    JitterModel,
    PhaseWindow,
    effective_network,
    message_times,
    phase_windows,
    preserve_order,
)

__all__ = ["PlannedSend", "Schedule", "format_planned", "iter_schedule", "messages_per_rank"]

#: assumed loopback speed for as-fast-as-possible phases in a dry run
DEFAULT_LINK_ESTIMATE_MBPS = 10_000.0


@dataclass(frozen=True)
class PlannedSend:
    """One planned attempt. Times in seconds since the start of the run.

    ``t_offered``: when the producer offers the message (phase rate, stall
    shifts). ``t_sched``: when its first byte should go out: offered time plus
    the drawn latency/jitter, never before the previous attempt's t_sched.
    ``nbytes_estimate``: events x event size (the encoded file adds a little).
    ``bandwidth_mbps``: the cap in force for it (its phase's), None = uncapped.
    ``duplicate``: this attempt is the second copy of the same seq.
    """

    rank: int
    seq: int
    phase: str
    phase_index: int
    t_offered: float
    t_sched: float
    delay_s: float
    events: int
    nbytes_estimate: int | None
    faults: tuple[AppliedFault, ...] = ()
    duplicate: bool = False
    bandwidth_mbps: float | None = None

    @property
    def fault_names(self) -> list[str]:
        return [f.name for f in self.faults]

    def stall_s(self) -> float:
        return sum(f.shift_s for f in self.faults if isinstance(f, Stall))


def messages_per_rank(profile: Profile) -> tuple[int | None, int]:
    """(number of messages per rank or None = endless, events in the last one)."""
    src = profile.source
    n: int | None = None
    last = src.batch_size
    if src.total_events is not None:
        n = math.ceil(src.total_events / src.batch_size)
        last = src.total_events - (n - 1) * src.batch_size
    if profile.stop.messages is not None and (n is None or profile.stop.messages < n):
        n = profile.stop.messages
        last = src.batch_size
    return n, last


@dataclass
class _TimeRuleState:
    rule: FaultRule
    next_t: float | None


@dataclass
class Schedule:
    """Iterator-like planner for one rank. Call :meth:`next` until it returns None.

    ``end_reason`` then says why: ``messages`` (stop.messages or
    source.total_events reached), ``duration`` (stop.duration_s), ``timeline``
    (a non-repeating timeline is over) or ``silent`` (an open-ended phase with
    rate 0: nothing more will be sent; the run lasts until stop.duration_s).
    """

    profile: Profile
    rank: int = 0
    link_estimate_mbps: float = DEFAULT_LINK_ESTIMATE_MBPS
    #: changes made while the run goes on (``simstream.emitter.control.LiveConditions``):
    #: live network fields, a live rate and injected faults, read as each message is
    #: planned; None for a schedule that is the profile's alone
    live: Any = None
    end_reason: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        p = self.profile
        seed = p.seed
        # separate streams, so e.g. adding a fault does not move the jitter draws
        self._rng_jitter = random.Random(f"simstream:{seed}:{self.rank}:jitter")
        self._rng_trigger = random.Random(f"simstream:{seed}:{self.rank}:trigger")
        self._rng_fault = random.Random(f"simstream:{seed}:{self.rank}:fault")
        # container faults (link_cut, host_pause, host_kill) are the docker driver's:
        # the emitter warns of them at its start and plans none
        rules = [FaultRule.from_spec(f) for f in p.faults if not f.is_host_fault]
        rules = [r for r in rules if r.trigger.applies_to(self.rank)]
        self._msg_rules = [r for r in rules if not r.trigger.has_time_trigger
                           or r.trigger.has_message_trigger]
        self._time_rules = [_TimeRuleState(r, r.trigger.next_time(-1.0)) for r in rules
                            if r.trigger.has_time_trigger]
        self._n_messages, self._last_events = messages_per_rank(p)
        self._windows = phase_windows(p.timeline)
        self._window: PhaseWindow | None = next(self._windows, None)
        self._times: Iterator[float] | None = None
        self._shift = 0.0
        self._seq = 0
        self._prev_t_sched: float | None = None
        self._pending: deque[PlannedSend] = deque()
        self._virtual_now = 0.0
        self._event_nbytes = p.source.event_nbytes
        self._last_offered: float | None = None
        # after a live rate ends, the timeline's times before this one are skipped
        self._resume_after: float | None = None

    # -- public

    @property
    def shift_s(self) -> float:
        """Total stall time inserted so far (seconds)."""
        return self._shift

    def delay(self, by_s: float) -> None:
        """Move everything not yet planned later by ``by_s`` seconds (a pause)."""
        if by_s > 0:
            self._shift += by_s
            if self._last_offered is not None:
                self._last_offered += by_s
            if self._resume_after is not None:
                self._resume_after += by_s

    def next(self, now: float | None = None) -> PlannedSend | None:
        """The next planned attempt, or None when the schedule is over.

        ``now``: seconds since the start, used only in as-fast-as-possible
        phases (see the module docstring).
        """
        if self._pending:
            return self._pending.popleft()
        if self.end_reason is not None:
            return None
        if self._n_messages is not None and self._seq >= self._n_messages:
            self._end("messages")
            return None
        found = self._next_offer(now)
        if found is None:
            return None
        window, t_offered, t_clock = found
        return self._plan(window, t_offered, t_clock)

    # -- internals

    def _end(self, reason: str) -> None:
        self.end_reason = reason

    def _advance_window(self) -> None:
        self._window = next(self._windows, None)
        self._times = None

    def _next_offer(self, now: float | None) -> tuple[PhaseWindow, float, float] | None:
        """(window, offered time, clock time for triggers/stop) of the next message."""
        stop_s = self.profile.stop.duration_s
        live_rate = self.live.rate_hz if self.live is not None else None
        if live_rate is not None:
            return self._next_live_offer(live_rate, now)
        if all(ph.rate_hz == 0 for ph in self.profile.timeline.phases):
            self._end("silent")  # every phase is silent: nothing will ever go
            return None
        for _ in range(1_000_000):  # bounded: each pass consumes a window or yields
            w = self._window
            if w is None:
                self._end("timeline")
                return None
            rate = w.phase.rate_hz
            if rate == 0:
                if w.end_s is None:
                    self._end("silent")
                    return None
                if stop_s is not None and w.end_s + self._shift >= stop_s:
                    self._end("duration")
                    return None
                self._advance_window()
                continue
            if rate is None:
                t_offered = w.start_s + self._shift
                t_now = self._virtual_now if now is None else now
                t_clock = max(t_offered, t_now)
                if w.end_s is not None and t_clock >= w.end_s + self._shift:
                    self._advance_window()
                    continue
                return w, t_offered, t_clock
            if self._times is None:
                self._times = message_times(w)
            tau = next(self._times, None)
            if tau is None:
                self._advance_window()
                continue
            t = tau + self._shift
            if self._resume_after is not None:
                if t <= self._resume_after:
                    continue  # offered while a live rate was in force
                self._resume_after = None
            return w, t, t
        raise RuntimeError("schedule found no message in 10^6 windows")  # pragma: no cover

    def _next_live_offer(self, rate_hz: float, now: float | None
                         ) -> tuple[PhaseWindow, float, float] | None:
        """The next offer at a live rate: 1/rate after the previous one (or now, for
        the first); the timeline's phases still pass by the clock (names, network)."""
        last = self._last_offered
        t_now = self._virtual_now if now is None else now
        t = max(t_now, 0.0) if last is None else last + 1.0 / rate_hz
        for _ in range(1_000_000):  # bounded: each pass consumes a window
            w = self._window
            if w is None:
                self._end("timeline")
                return None
            if w.end_s is not None and t >= w.end_s + self._shift:
                self._advance_window()
                continue
            # when the live rate ends, the timeline goes on after this message
            self._times = None
            self._resume_after = t
            return w, t, t
        raise RuntimeError("schedule found no window in 10^6")  # pragma: no cover

    def _strikes(self, rule: FaultRule, seq: int) -> bool:
        trig = rule.trigger
        if trig.has_message_trigger:
            if not trig.message_occurs(seq):
                return False
        elif trig.has_time_trigger:
            return False  # purely time-triggered: handled by _time_strikes
        return trig.passes_probability(self._rng_trigger)

    def _time_strikes(self, st: _TimeRuleState, t_clock: float) -> int:
        """How many of this rule's occurrences up to t_clock strike (each draws once)."""
        hits = 0
        guard = 0
        while st.next_t is not None and st.next_t <= t_clock and guard < 100_000:
            if st.rule.trigger.passes_probability(self._rng_trigger):
                hits += 1
            st.next_t = st.rule.trigger.next_time(st.next_t)
            guard += 1
        return hits

    def _plan(self, w: PhaseWindow, t_offered: float, t_clock: float) -> PlannedSend | None:
        seq = self._seq
        faults: list[AppliedFault] = []
        # stalls first: they move this message (and everything after it) later
        for r in self._msg_rules:
            if r.kind == "stall" and self._strikes(r, seq):
                st = make_fault(r.spec, self._rng_fault)
                faults.append(st)
                self._shift += st.shift_s  # type: ignore[attr-defined]
                t_offered += st.shift_s  # type: ignore[attr-defined]
                t_clock += st.shift_s  # type: ignore[attr-defined]
        injected = self.live.take_faults(self.rank) if self.live is not None else []
        for spec in injected:
            if spec.kind == "stall":
                st = make_fault(spec, self._rng_fault)
                faults.append(st)
                self._shift += st.shift_s  # type: ignore[attr-defined]
                t_offered += st.shift_s  # type: ignore[attr-defined]
                t_clock += st.shift_s  # type: ignore[attr-defined]
        for _ in range(1000):  # a shift can bring the next time occurrence into reach
            moved = False
            for ts in self._time_rules:
                if ts.rule.kind != "stall":
                    continue
                for _hit in range(self._time_strikes(ts, t_clock)):
                    st = make_fault(ts.rule.spec, self._rng_fault)
                    faults.append(st)
                    self._shift += st.shift_s  # type: ignore[attr-defined]
                    t_offered += st.shift_s  # type: ignore[attr-defined]
                    t_clock += st.shift_s  # type: ignore[attr-defined]
                    moved = True
            if not moved:
                break
        stop_s = self.profile.stop.duration_s
        if stop_s is not None and t_clock >= stop_s:
            self._end("duration")
            return None
        # the other faults: message triggers and probability, then time occurrences
        for r in self._msg_rules:
            if r.kind != "stall" and self._strikes(r, seq):
                faults.append(make_fault(r.spec, self._rng_fault))
        for ts in self._time_rules:
            if ts.rule.kind != "stall" and self._time_strikes(ts, t_clock):
                # several occurrences before one message collapse into one strike
                faults.append(make_fault(ts.rule.spec, self._rng_fault))
        for spec in injected:
            if spec.kind != "stall":
                faults.append(make_fault(spec, self._rng_fault))
        net = effective_network(self.profile.network, w.phase.network)
        if self.live is not None:
            net = effective_network(net, self.live.network)
        delay = JitterModel.from_network(net).draw_s(self._rng_jitter)
        t_sched = preserve_order(t_offered + delay, self._prev_t_sched)
        self._prev_t_sched = t_sched
        last = self._n_messages is not None and seq == self._n_messages - 1
        events = self._last_events if last else self.profile.source.batch_size
        nbytes = events * self._event_nbytes
        dup = [f for f in faults if isinstance(f, Duplicate)]
        first_faults = tuple(f for f in faults if not isinstance(f, Duplicate))
        planned = PlannedSend(
            rank=self.rank, seq=seq, phase=w.phase.name, phase_index=w.index,
            t_offered=t_offered, t_sched=t_sched, delay_s=delay, events=events,
            nbytes_estimate=nbytes, faults=first_faults, duplicate=False,
            bandwidth_mbps=net.bandwidth_mbps,
        )
        if dup:
            # the copy carries the same bytes; cutting faults act on the first only
            self._pending.append(PlannedSend(
                rank=self.rank, seq=seq, phase=w.phase.name, phase_index=w.index,
                t_offered=t_offered, t_sched=t_sched, delay_s=delay, events=events,
                nbytes_estimate=nbytes, faults=(dup[0],), duplicate=True,
                bandwidth_mbps=net.bandwidth_mbps,
            ))
        self._seq += 1
        self._last_offered = t_offered
        link_mbps = net.bandwidth_mbps or self.link_estimate_mbps
        copies = 2 if dup else 1
        self._virtual_now = (max(self._virtual_now, t_sched)
                             + copies * nbytes * 8 / (link_mbps * 1e6))
        return planned


def iter_schedule(profile: Profile, rank: int = 0, *, limit: int | None = None,
                  link_estimate_mbps: float = DEFAULT_LINK_ESTIMATE_MBPS
                  ) -> Iterator[PlannedSend]:
    """Planned attempts of one rank as a dry run sees them (at most ``limit``)."""
    sched = Schedule(profile, rank, link_estimate_mbps=link_estimate_mbps)
    n = 0
    while limit is None or n < limit:
        p = sched.next()
        if p is None:
            return
        yield p
        n += 1


def planned_record(p: PlannedSend, url: str | None = None) -> dict[str, Any]:
    """A JSON-ready record of a planned attempt (the dry run's --log lines)."""
    return {
        "rank": p.rank, "seq": p.seq, "phase": p.phase, "t_sched": round(p.t_sched, 9),
        "t_offered": round(p.t_offered, 9), "delay_s": round(p.delay_s, 9),
        "events": p.events, "nbytes_estimate": p.nbytes_estimate, "faults": p.fault_names,
        "duplicate": p.duplicate, "bandwidth_mbps": p.bandwidth_mbps, "url": url,
    }


def format_planned(p: PlannedSend, *, as_json: bool = False, url: str | None = None) -> str:
    """One line for a planned attempt: human-readable, or a JSON object."""
    if as_json:
        return json.dumps(planned_record(p, url))
    faults = ",".join(p.fault_names) + (" (copy)" if p.duplicate else "")
    cap = f"{p.bandwidth_mbps:g} Mbit/s" if p.bandwidth_mbps else "uncapped"
    return (f"rank {p.rank:>3} seq {p.seq:>7} t={p.t_sched:10.6f}s "
            f"phase {p.phase:<12} events {p.events:>4} ~{(p.nbytes_estimate or 0) / 1e6:8.3f} MB "
            f"{cap:<16} {faults}").rstrip()
