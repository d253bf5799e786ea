"""slow_close: after the message, a graceful close that takes ``duration_ms``, then reconnect."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from simstream.faults.attempt import Attempt

if TYPE_CHECKING:
    from simstream.profile import Fault as FaultSpec

DEFAULT_CLOSE_MS = 1000.0


@dataclass(frozen=True)
class SlowClose:
    """The struck message is delivered; then the connection closes over ``duration_ms``
    (default 1000 ms) and the transport reconnects."""

    name: ClassVar[str] = "slow_close"
    duration_ms: float = DEFAULT_CLOSE_MS

    @classmethod
    def from_spec(cls, spec: FaultSpec, rng: random.Random) -> SlowClose:
        return cls(DEFAULT_CLOSE_MS if spec.duration_ms is None else float(spec.duration_ms))

    def apply(self, attempt: Attempt) -> Attempt:
        return attempt.with_(close_s=self.duration_ms / 1000.0)
