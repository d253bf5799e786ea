"""truncate: send ``fraction`` of the message, then reset the connection."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from simstream.faults.attempt import Attempt

if TYPE_CHECKING:
    from simstream.profile import Fault as FaultSpec


@dataclass(frozen=True)
class Truncate:
    """Send ``fraction`` (0..1, default 0.5) of the message's bytes, then RST."""

    name: ClassVar[str] = "truncate"
    fraction: float = 0.5

    @classmethod
    def from_spec(cls, spec: FaultSpec, rng: random.Random) -> Truncate:
        return cls(fraction=0.5 if spec.fraction is None else spec.fraction)

    def apply(self, attempt: Attempt) -> Attempt:
        return attempt.with_(cut_fraction=self.fraction)
