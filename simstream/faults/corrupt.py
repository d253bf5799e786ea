"""corrupt: flip bytes inside the payload; the framing around it stays intact."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from simstream.faults.attempt import Attempt

if TYPE_CHECKING:
    from simstream.profile import Fault as FaultSpec

#: the first flip lands in the file's leading signature (HDF5 ``\\x89HDF\\r\\n\\x1a\\n``,
#: zip ``PK\\x03\\x04``) so a consumer always notices; the others land anywhere.
SIGNATURE_BYTES = 4


@dataclass(frozen=True)
class Corrupt:
    """XOR ``nbytes`` bytes of a COPY of the payload with non-zero masks.

    The first flipped byte is at ``signature_offset`` (0..3, inside the leading
    signature); the others at ``positions`` (fractions of the payload length),
    all drawn at planning time. Masks are 1..255, so every chosen byte really
    changes. A pooled payload buffer is never mutated.
    """

    name: ClassVar[str] = "corrupt"
    signature_offset: int = 0
    positions: tuple[float, ...] = ()
    masks: tuple[int, ...] = (0xFF,)

    @classmethod
    def from_spec(cls, spec: FaultSpec, rng: random.Random) -> Corrupt:
        n = spec.nbytes or 1
        first = rng.randrange(SIGNATURE_BYTES)
        positions = tuple(rng.random() for _ in range(n - 1))
        masks = tuple(rng.randrange(1, 256) for _ in range(n))
        return cls(first, positions, masks)

    def offsets(self, size: int) -> list[int]:
        """Byte offsets flipped in a payload of ``size`` bytes (distinct while size allows)."""
        if size <= 0:
            return []
        out = [min(size - 1, self.signature_offset)]
        for p in self.positions:
            if len(out) >= size:
                break
            off = min(size - 1, int(p * size))
            # distinct offsets, so two masks never cancel on one byte
            while off in out:
                off = (off + 1) % size
            out.append(off)
        return out

    def apply(self, attempt: Attempt) -> Attempt:
        # a copy (bytes() joins a Scatter's pieces): the pool's bytes stay as they are
        buf = bytearray(bytes(attempt.payload))
        for off, mask in zip(self.offsets(len(buf)), self.masks, strict=False):
            buf[off] ^= mask
        return attempt.with_(payload=bytes(buf))
