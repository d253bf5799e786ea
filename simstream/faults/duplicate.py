"""duplicate: the message goes out twice, with the same sequence number."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from simstream.faults.attempt import Attempt

if TYPE_CHECKING:
    from simstream.profile import Fault as FaultSpec


@dataclass(frozen=True)
class Duplicate:
    """The planner emits a second attempt of the struck message right after the first
    (``PlannedSend.duplicate`` is true on the copy); this fault rides on the copy.
    The copy's bytes are the original's, unchanged, so ``apply`` changes nothing.
    """

    name: ClassVar[str] = "duplicate"

    @classmethod
    def from_spec(cls, spec: FaultSpec, rng: random.Random) -> Duplicate:
        return cls()

    def apply(self, attempt: Attempt) -> Attempt:
        return attempt
