"""What a fault acts on: one attempt to send one message (``Attempt``), and the
one method every fault class provides (``AppliedFault``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Protocol

__all__ = ["AppliedFault", "Attempt"]


@dataclass(frozen=True)
class Attempt:
    """One attempt to send one message, as the faults leave it.

    ``payload``: the encoded message (bytes-like, or a ``simstream.codec.Scatter``
    of pieces; faults copy before changing it).
    ``cut_fraction``: send only this share of the message's bytes, then reset
    the connection (RST). ``silence_s``: nothing is sent for at least this long
    before the attempt (seconds). ``close_s``: after the attempt, close the
    connection gracefully over this many seconds, then reconnect.
    """

    payload: Any  # bytes | bytearray | memoryview | simstream.codec.Scatter
    cut_fraction: float | None = None
    silence_s: float = 0.0
    close_s: float | None = None

    @property
    def nbytes(self) -> int:
        return len(self.payload)

    def cut_after_bytes(self, wire_overhead: int = 0) -> int | None:
        """Bytes to write before the cut: at least 1, fewer than the whole message."""
        if self.cut_fraction is None:
            return None
        total = self.nbytes + wire_overhead
        return max(1, min(total - 1, math.floor(total * self.cut_fraction)))

    def with_(self, **changes: object) -> Attempt:
        return replace(self, **changes)  # type: ignore[arg-type]


class AppliedFault(Protocol):
    """What every fault class provides."""

    name: str

    def apply(self, attempt: Attempt) -> Attempt: ...
