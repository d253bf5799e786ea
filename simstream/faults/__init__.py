"""Faults, Toxiproxy style: one fault per module, a registry by snake_case name.

Layout: ``attempt`` holds what a fault acts on (``Attempt``); each other module
(``reset``, ``truncate``, ``corrupt``, ``stall``, ``duplicate``, ``slow_close``)
holds one small frozen config object with one method, ``apply(attempt) ->
attempt``, that acts on a message attempt. The envelope that decides *when* a
fault strikes (trigger, probability, rank) is separate: :class:`Trigger` here,
evaluated by ``simstream.schedule``.

Random choices a fault needs (where a reset cuts, which bytes a corruption
flips) are drawn once, when the schedule is planned, from the schedule's seeded
RNG (:meth:`from_spec`), so the same profile and seed give the same faults.
Faults never drop data silently: an attempt they cut ends in the emit log with
outcome ``cut``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simstream.faults.attempt import AppliedFault, Attempt
from simstream.faults.corrupt import Corrupt
from simstream.faults.duplicate import Duplicate
from simstream.faults.reset import Reset
from simstream.faults.slow_close import SlowClose
from simstream.faults.stall import Stall
from simstream.faults.truncate import Truncate

if TYPE_CHECKING:
    from simstream.profile import Fault as FaultSpec

__all__ = [
    "FAULTS",
    "AppliedFault",
    "Attempt",
    "FaultRule",
    "Trigger",
    "fault_class",
    "make_fault",
]


def _registry() -> dict[str, type]:
    return {c.name: c for c in (Reset, Truncate, Corrupt, Stall, Duplicate, SlowClose)}


#: snake_case name -> fault class (the names are profile.FAULT_KINDS)
FAULTS: dict[str, type] = _registry()


def fault_class(name: str) -> type:
    """The class registered under ``name``. Raises KeyError naming the known faults."""
    try:
        return FAULTS[name]
    except KeyError:
        raise KeyError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None


def make_fault(spec: FaultSpec, rng: random.Random) -> AppliedFault:
    """A concrete fault for one strike: its own attributes from the spec, random parts from rng."""
    cls = fault_class(spec.kind)
    return cls.from_spec(spec, rng)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Trigger:
    """The envelope: when a fault strikes, independent of what it does.

    Message triggers: ``at_message`` (that sequence number, per rank) and
    ``every_messages`` (sequence numbers n, 2n, 3n, ...). Time triggers
    (seconds of schedule time since the start of the run): ``at_s`` and
    ``every_s`` (at n, 2n, ...); a time occurrence strikes the first message
    scheduled at or after it. ``probability``: alone, each message is struck
    with that chance; with another trigger, each occurrence is. ``rank``:
    only that rank (None: every rank).
    """

    at_message: int | None = None
    every_messages: int | None = None
    at_s: float | None = None
    every_s: float | None = None
    probability: float | None = None
    rank: int | None = None

    @classmethod
    def from_spec(cls, spec: FaultSpec) -> Trigger:
        return cls(spec.at_message, spec.every_messages, spec.at_s, spec.every_s,
                   spec.probability, spec.rank)

    def applies_to(self, rank: int) -> bool:
        return self.rank is None or self.rank == rank

    @property
    def has_message_trigger(self) -> bool:
        return self.at_message is not None or self.every_messages is not None

    @property
    def has_time_trigger(self) -> bool:
        return self.at_s is not None or self.every_s is not None

    @property
    def probability_only(self) -> bool:
        return not (self.has_message_trigger or self.has_time_trigger)

    def message_occurs(self, seq: int) -> bool:
        """Does a message trigger occur at this sequence number (before probability)?"""
        if self.at_message is not None and seq == self.at_message:
            return True
        n = self.every_messages
        return n is not None and seq > 0 and seq % n == 0

    def next_time(self, after: float) -> float | None:
        """The first time occurrence strictly after ``after`` (seconds), or None."""
        best: float | None = None
        if self.at_s is not None and self.at_s > after:
            best = self.at_s
        if self.every_s is not None:
            k = max(1, math.floor(after / self.every_s) + 1)
            t = k * self.every_s
            while t <= after:  # float rounding
                k += 1
                t = k * self.every_s
            best = t if best is None else min(best, t)
        return best

    def passes_probability(self, rng: random.Random) -> bool:
        """One draw for one occurrence; always consumes one ``rng.random()``."""
        u = rng.random()
        return self.probability is None or u < self.probability


@dataclass(frozen=True)
class FaultRule:
    """One fault of the profile: the envelope plus the fault's own spec."""

    trigger: Trigger
    spec: FaultSpec

    @classmethod
    def from_spec(cls, spec: FaultSpec) -> FaultRule:
        return cls(Trigger.from_spec(spec), spec)

    @property
    def kind(self) -> str:
        return str(self.spec.kind)
