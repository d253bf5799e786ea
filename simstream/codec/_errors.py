"""The one exception a receiver has to catch for a bad message."""

from __future__ import annotations


class CodecError(ValueError):
    """A message cannot be decoded: truncated, wrong magic, missing field, corrupt,
    inconsistent shapes, or a declared size beyond the guard. ``str()`` is the reason,
    one line, fit for a quarantine record."""


class Limits:
    """Bounds on decoding one message, all checked before the work they bound.

    ``max_bytes``: decoded bytes of the requested fields together, from their declared
    shapes and dtypes, before any array is allocated (a forged header declaring
    gigabytes of fill value costs nothing). ``max_chunks``: chunks of one HDF5
    dataset, datasets and groups of one HDF5 file, members of one npz (counted before
    they are iterated). ``deadline``: ``time.monotonic()`` value past which decoding
    stops between steps (one native read is not interrupted: ``parse_isolation:
    process`` kills a worker for that). ``inspect(declared)``: called with
    ``{key: (shape, dtype)}`` of the requested fields found, before any allocation;
    it may raise to refuse the message (e.g. an unexpected event shape).
    """

    def __init__(self, *, max_bytes: int | None = None, max_chunks: int | None = None,
                 deadline: float | None = None, inspect: object = None) -> None:
        self.max_bytes = max_bytes
        self.max_chunks = max_chunks
        self.deadline = deadline
        self.inspect = inspect

    def check_time(self, what: str) -> None:
        if self.deadline is not None:
            import time

            late = time.monotonic() - self.deadline
            if late > 0:
                raise CodecError(f"deadline: decoding ran past its deadline ({what})")

    def check_chunks(self, n: int, what: str) -> None:
        if self.max_chunks is not None and n > self.max_chunks:
            raise CodecError(f"chunks: {what} has {n}, more than the limit {self.max_chunks}")

    def check_declared(self, declared: dict[str, tuple[tuple[int, ...], object]]) -> None:
        """The budget and ``inspect`` on the declared shapes. Raises CodecError (or
        what ``inspect`` raises)."""
        import math

        import numpy as np

        if self.inspect is not None:
            self.inspect(declared)  # type: ignore[operator]
        if self.max_bytes is None:
            return
        sizes = {k: math.prod(shape) * np.dtype(dt).itemsize  # type: ignore[call-overload]
                 for k, (shape, dt) in declared.items()}
        total = sum(sizes.values())
        if total > self.max_bytes:
            top = ", ".join(f"{k} {v}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:3])
            raise CodecError(f"budget: the fields declare {total} decoded bytes ({top}), more "
                             f"than the per-message budget {self.max_bytes}")


NO_LIMITS = Limits()
