"""reset: the connection is closed with an RST in the middle of a message; that message is lost."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from simstream.faults.attempt import Attempt

if TYPE_CHECKING:
    from simstream.profile import Fault as FaultSpec


@dataclass(frozen=True)
class Reset:
    """Cut after ``cut_fraction`` of the message's bytes, then RST.

    The cut point is drawn from the schedule's seeded RNG, uniform in
    [0.05, 0.95] so the cut is always mid-message (0.5 with ``half_way``).
    """

    name: ClassVar[str] = "reset"
    cut_fraction: float = 0.5

    @classmethod
    def from_spec(cls, spec: FaultSpec, rng: random.Random) -> Reset:
        return cls(cut_fraction=round(rng.uniform(0.05, 0.95), 6))

    def apply(self, attempt: Attempt) -> Attempt:
        return attempt.with_(cut_fraction=self.cut_fraction)
