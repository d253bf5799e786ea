"""stall: the producer sends nothing for ``duration_ms``; the schedule after it shifts."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from simstream.faults.attempt import Attempt

if TYPE_CHECKING:
    from simstream.profile import Fault as FaultSpec


@dataclass(frozen=True)
class Stall:
    """Silence of ``duration_ms`` before the struck message.

    Two effects: the schedule from the stall on moves later by the duration
    (``shift_s``, applied by the planner), and the writer keeps at least that
    much silence after the previous message (``apply``) so a stall is visible
    even when the link is backlogged and the schedule is already behind.
    """

    name: ClassVar[str] = "stall"
    duration_ms: float = 0.0

    @classmethod
    def from_spec(cls, spec: FaultSpec, rng: random.Random) -> Stall:
        return cls(duration_ms=float(spec.duration_ms or 0.0))

    @property
    def shift_s(self) -> float:
        return self.duration_ms / 1000.0

    def apply(self, attempt: Attempt) -> Attempt:
        return attempt.with_(silence_s=attempt.silence_s + self.shift_s)
