"""Decode: one received message -> one batch in host memory the engine can copy from.

``Decoder.parse`` decodes HDF5 or npz (found from the magic bytes; npz is never
loaded with pickle) with ``simstream.codec``, the detector array landing straight
in the engine's host memory (pinned on CUDA) through ``alloc``, so the data is
copied once between the socket buffer and the H2D. Both layouts the real producer
sends are accepted: (B, H, W) and (B, C, H, W); a partial last batch (any B >= 1)
too.

simstream's own per-message fields (``/simstream/sequence``, ``/simstream/rank``,
``/simstream/epoch`` in HDF5, ``simstream_sequence``, ``simstream_rank``,
``simstream_epoch`` in npz) give (rank, seq, epoch) for the accounting; a real
LCLStreamer message lacks them, and then all are None (an emitter older than the
epoch sends rank and seq only: epoch None).

Anything unusable raises ``ParseError`` with a one-line reason that begins with a
category (``codec:``, ``missing field:``, ``shape:``, ``batch:``) so quarantine
reasons can be counted by kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simstream.clock import now
from simstream.codec import CodecError, Limits, decode, sniff
from simstream.records.contract import SIMSTREAM_FIELDS as CONTRACT_FIELDS
from simstream.records.contract import field_keys

__all__ = ["SIMSTREAM_FIELDS", "DecodeLimits", "Decoder", "HostAlloc", "ParseError", "ParsedBatch"]

HostAlloc = Callable[[tuple[int, ...], Any], tuple[np.ndarray, Callable[[], None]]]

# name -> (its key in a decoded HDF5 message, its npz key): the contract's fields
SIMSTREAM_FIELDS = {name: field_keys(name) for name in CONTRACT_FIELDS}


@dataclass(frozen=True)
class DecodeLimits:
    """Per-message bounds (picklable, for isolation workers): ``max_bytes`` decoded
    bytes of the decoded fields together, checked from their declared shapes before
    any allocation; ``max_chunks`` chunks per dataset (and objects per file, members
    per npz); ``deadline_s`` seconds one decode may take, checked between steps."""

    max_bytes: int | None = None
    max_chunks: int | None = None
    deadline_s: float | None = None


class ParseError(Exception):
    """A message that cannot become a batch; ``str()`` is the quarantine reason.
    ``rank``/``seq`` are set when they could be read before the failure."""

    def __init__(self, reason: str, rank: int | None = None, seq: int | None = None,
                 epoch: int | None = None) -> None:
        super().__init__(reason)
        self.rank = rank
        self.seq = seq
        self.epoch = epoch


@dataclass
class ParsedBatch:
    """One batch ready for the engine. ``data`` is (B, ...); ``release`` returns its
    memory to the pool (the engine calls it after H2D). Times: Unix seconds."""

    data: np.ndarray
    release: Callable[[], None] | None
    rank: int | None
    seq: int | None
    events: int
    t_parse_start: float
    t_parse_end: float
    epoch: int | None = None  # the emitter's start id (``/simstream/epoch``), if sent


def _key(path: str) -> str:
    return path.strip("/")


def _first_int(a: np.ndarray | None) -> int | None:
    if a is None or a.size == 0 or a.dtype.kind not in "iu":
        return None
    return int(a.reshape(-1)[0])


class Decoder:
    """Decodes messages into host memory from ``host_alloc`` (``engine.host_array``),
    in the calling thread.

    ``fields``: name -> dataset path / npz key (``detector_data`` required).
    ``expected``: names every message must carry. ``event_shape``: the expected
    per-event shape, or None to accept any (B, H, W) / (B, C, H, W).
    ``clock``: where the parse times are read (``simstream.clock.now``).
    Thread-safe (one Decoder may serve a pool of threads). ``pipeline.parse.Parser``
    runs it here or in worker processes (``pipeline.isolation``).
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        expected: Sequence[str] = ("detector_data",),
        event_shape: Sequence[int] | None = None,
        host_alloc: HostAlloc | None = None,
        limits: DecodeLimits | None = None,
        *,
        clock: Callable[[], float] = now,
    ) -> None:
        self.clock = clock
        self.fields = dict(fields)
        self.expected = list(expected)
        self.event_shape = tuple(event_shape) if event_shape else None
        self.host_alloc = host_alloc
        self.limits = limits or DecodeLimits()
        # only these are decoded: the configured fields and simstream's own; every
        # other dataset of a message is never opened (a forged one costs nothing)
        # where each name is looked for, in order: the configured path, simstream's
        # own key for its fields, then the name itself (as before)
        def alts(name: str, fmt: str) -> tuple[str, ...]:
            out: list[str] = []
            if name in self.fields:
                p = self.fields[name]
                out.append(_key(p) if fmt == "hdf5" else p)
            if name in SIMSTREAM_FIELDS:
                out.append(SIMSTREAM_FIELDS[name][0 if fmt == "hdf5" else 1])
            out.append(name)
            return tuple(dict.fromkeys(out))

        names = list(dict.fromkeys([*self.fields, *SIMSTREAM_FIELDS]))
        self._wanted = {fmt: {n: alts(n, fmt) for n in names} for fmt in ("hdf5", "npz")}
        # all optional to the codec: a missing expected field is reported below, as
        # "missing field: ..."
        self._optional = set(self._wanted["hdf5"])

    def _inspect(self, declared: Mapping[str, tuple[tuple[int, ...], Any]]) -> None:
        """The checks that need only declared shapes, before anything is allocated."""
        d = declared.get("detector_data")
        if d is not None:
            shape, dtype = tuple(d[0]), np.dtype(d[1])
            if not self._shape_ok(shape):
                raise ParseError(f"shape: detector_data is {shape}, expected {self._want()}")
            if dtype.kind not in "biuf":
                raise ParseError(f"shape: detector_data has dtype {dtype}, not numeric")
        lengths = {n: s[0][0] for n, s in declared.items() if len(s[0]) >= 1}
        if len(set(lengths.values())) > 1:
            raise ParseError(f"batch: fields disagree on the batch size {lengths}")

    def _want(self) -> str:
        return (f"(B, {', '.join(map(str, self.event_shape))})" if self.event_shape
                else "(B, H, W) or (B, C, H, W)")

    def _shape_ok(self, shape: tuple[int, ...]) -> bool:
        if len(shape) not in (3, 4) or shape[0] < 1:
            return False
        if self.event_shape is None:
            return True
        ev = shape[1:]
        want = self.event_shape
        # (C=1, H, W) on one side and (H, W) on the other are the same images
        squeeze = tuple(d for i, d in enumerate(want) if not (d == 1 and i < len(want) - 2))
        got = tuple(d for i, d in enumerate(ev) if not (d == 1 and i < len(ev) - 2))
        return ev == want or got == squeeze

    def parse(self, payload: Any, release: Callable[[], None] | None = None) -> ParsedBatch:
        """Decode one message. Raises ParseError (the reason) for anything unusable.

        ``release``: ``payload`` lies in host-pool memory (the fast layout's receiver
        read it there) and this returns it. The arrays are then decoded without a
        copy where their bytes lie back to back: the batch's data is a view of the
        payload and its release is ``release`` (called after the H2D). Where the
        data had to be copied out (compressed, chunked otherwise) the payload is
        released here. On a ParseError the caller still owns the payload (to
        quarantine it first)."""
        if release is not None:
            return self._parse_in_place(payload, release)
        t0 = self.clock()
        held: list[tuple[np.ndarray, Callable[[], None]]] = []

        def alloc(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            # only images go to the (pinned) pool; per-event scalars stay in plain memory
            if self.host_alloc is None or len(shape) < 2:
                return np.empty(shape, dtype)
            arr, release = self.host_alloc(tuple(shape), dtype)
            held.append((arr, release))
            return arr

        def release_all(keep: np.ndarray | None = None) -> Callable[[], None] | None:
            kept = None
            for arr, rel in held:
                if keep is not None and arr is keep and kept is None:
                    kept = rel
                else:
                    rel()
            held.clear()
            return kept

        try:
            arrays = self._decode(payload, alloc)
        except ParseError:
            release_all()
            raise
        return self._batch(arrays, t0, release_all)

    def _decode(self, payload: Any, alloc: Any) -> dict[str, np.ndarray]:
        lim = self.limits
        limits = Limits(max_bytes=lim.max_bytes, max_chunks=lim.max_chunks,
                        deadline=None if lim.deadline_s is None
                        else time.monotonic() + lim.deadline_s,
                        inspect=self._inspect)
        try:
            fmt = sniff(payload)
            return decode(payload, fields=self._wanted[fmt], alloc=alloc,
                          optional=self._optional, limits=limits)
        except ParseError:
            raise
        except CodecError as e:
            raise ParseError(f"codec: {e}") from None
        except (ValueError, TypeError, OSError, MemoryError) as e:
            raise ParseError(f"codec: {type(e).__name__}: {e}") from None

    def _parse_in_place(self, payload: Any, release: Callable[[], None]) -> ParsedBatch:
        t0 = self.clock()
        arrays = self._decode(payload, None)  # views of the payload where they can be
        raw = payload if isinstance(payload, np.ndarray) else None

        def keep_if_viewed(keep: np.ndarray | None = None) -> Callable[[], None] | None:
            # the batch's release when its data is a view of the payload; else the
            # payload goes back now (the data was copied out, or this is an error)
            if keep is not None and raw is not None and np.may_share_memory(keep, raw):
                return release
            if keep is not None:
                release()
            return None

        return self._batch(arrays, t0, keep_if_viewed)

    def _batch(self, arrays: dict[str, np.ndarray], t0: float,
               release_all: Callable[..., Callable[[], None] | None]) -> ParsedBatch:
        """Check the decoded arrays and make the batch; ``release_all()`` on a
        ParseError, ``release_all(keep=data)`` gives the batch's release."""
        field = arrays.get

        rank = _first_int(field("simstream_rank"))
        seq = _first_int(field("simstream_sequence"))
        epoch = _first_int(field("simstream_epoch"))
        missing = [n for n in self.expected if field(n) is None]
        if missing:
            release_all()
            have = ", ".join(sorted(arrays)) or "none"
            raise ParseError(f"missing field: {', '.join(missing)} (message has: {have})", rank, seq, epoch)
        data = field("detector_data")
        if data is None:
            release_all()
            raise ParseError("missing field: detector_data", rank, seq, epoch)
        if not self._shape_ok(tuple(data.shape)):
            release_all()
            raise ParseError(f"shape: detector_data is {tuple(data.shape)}, expected {self._want()}",
                             rank, seq, epoch)
        if data.dtype.kind not in "biuf":
            release_all()
            raise ParseError(f"shape: detector_data has dtype {data.dtype}, not numeric", rank, seq, epoch)
        lengths = {n: a.shape[0] for n, a in arrays.items() if a.ndim >= 1}
        if len(set(lengths.values())) > 1:
            release_all()
            raise ParseError(f"batch: fields disagree on the batch size {lengths}", rank, seq, epoch)
        release = release_all(keep=data)
        if release is None and not (data.flags.c_contiguous and data.flags.writeable):
            data = np.ascontiguousarray(data)
        return ParsedBatch(data, release, rank, seq, int(data.shape[0]), t0, self.clock(),
                           epoch)
