"""Parse: one received message -> one batch in host memory the engine can copy from.

``Parser`` decodes each message with ``pipeline.decode.Decoder`` (HDF5 or npz into
the engine's host memory; ``ParseError`` with a categorised one-line reason for
anything unusable), either in the calling thread (``isolation: none``) or in worker
processes (``isolation: process``, ``pipeline.isolation``), so that a crash or a
hang in native decoding code costs one message, not the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from simstream.clock import now

from .decode import SIMSTREAM_FIELDS, DecodeLimits, Decoder, HostAlloc, ParsedBatch, ParseError
from .isolation import IsolatedParser

__all__ = ["SIMSTREAM_FIELDS", "DecodeLimits", "HostAlloc", "ParseError", "ParsedBatch", "Parser"]


class Parser:
    """Decodes messages into host memory from ``host_alloc`` (``engine.host_array``).

    ``fields``: name -> dataset path / npz key (``detector_data`` required).
    ``expected``: names every message must carry. ``event_shape``: the expected
    per-event shape, or None to accept any (B, H, W) / (B, C, H, W).
    Thread-safe (one Parser may serve a pool of threads).

    ``isolation``: ``none`` decodes in the calling thread; ``process`` decodes in
    ``workers`` worker processes (``pipeline.isolation``), so a crash or a hang in
    native decoding code (``timeout_s``) costs one message, not the run. Call
    ``close()`` when done (stops the workers; harmless without them). ``clock``:
    where the parse times are read (``simstream.clock.now``).
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        expected: Sequence[str] = ("detector_data",),
        event_shape: Sequence[int] | None = None,
        host_alloc: HostAlloc | None = None,
        *,
        isolation: str = "none",
        workers: int = 1,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = now,
        limits: DecodeLimits | None = None,
    ) -> None:
        if isolation not in ("none", "process"):
            raise ValueError(f"isolation {isolation!r} is not one of none, process")
        self.isolation = isolation
        self._decoder = Decoder(fields, expected, event_shape, host_alloc, limits, clock=clock)
        self.fields = self._decoder.fields
        self.expected = self._decoder.expected
        self.event_shape = self._decoder.event_shape
        self.host_alloc = host_alloc
        self._isolated: IsolatedParser | None = None
        if isolation == "process":
            self._isolated = IsolatedParser(self.fields, self.expected, self.event_shape,
                                            host_alloc, workers=workers, timeout_s=timeout_s,
                                            clock=clock, limits=limits)

    def close(self) -> None:
        """Stop the worker processes of ``isolation: process`` (no-op otherwise)."""
        if self._isolated is not None:
            self._isolated.close()

    def parse(self, payload: Any, release: Callable[[], None] | None = None) -> ParsedBatch:
        """Decode one message. Raises ParseError (the reason) for anything unusable.

        ``release``: the payload lies in host-pool memory and this returns it; the
        batch then keeps it as its data where it can (``Decoder.parse``). Taken over
        on success; after a ParseError the caller still owns it."""
        if self._isolated is not None:
            pb = self._isolated.parse(payload)
            if release is not None:
                release()  # the worker decoded from its own copy
            return pb
        return self._decoder.parse(payload, release)
