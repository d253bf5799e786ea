"""Byte buffers for the encoders and decoders.

``new_bytes(n)`` returns a fresh ``bytearray`` together with a writable uint8
view of it, so an encoder fills the message through numpy; ``finish`` hands it
out as ``bytes``. Filling an immutable ``bytes`` in place (through its address,
which relies on CPython's object layout) would save that last copy, but no
interpreter internals are used here: the copy is the price, measured in
bench/bench_codec.py.

``Scatter``: an immutable message held as consecutive pieces, for a sender that
writes the pieces with one scatter system call (a pooled message: views of the
pool's encoded batch with the few rewritten bytes in between, nothing copied).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def new_bytes(n: int) -> tuple[bytearray, np.ndarray]:
    """A fresh message buffer of ``n`` bytes and a writable uint8 view of it.

    Write the whole message through the view, then drop the view and pass the
    buffer to :func:`finish`.
    """
    ba = bytearray(n)
    return ba, np.frombuffer(ba, dtype=np.uint8)


def finish(buf: bytes | bytearray) -> bytes:
    """``buf`` as bytes (one copy of a bytearray)."""
    return buf if isinstance(buf, bytes) else bytes(buf)


class Scatter:
    """One message's bytes as consecutive read-only pieces (``parts``, memoryviews
    of unsigned bytes); ``len()`` is the message's size, ``bytes()`` joins them (a
    copy, for code that needs one buffer). Immutable: the pieces are read-only
    views, and whoever makes a Scatter keeps the memory they view unchanged."""

    __slots__ = ("nbytes", "parts")

    def __init__(self, parts: Sequence[Any]) -> None:
        views = []
        for p in parts:
            mv = memoryview(p)
            if not mv.c_contiguous:
                raise TypeError("a Scatter part must be a contiguous buffer")
            mv = mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv
            if len(mv):
                views.append(mv.toreadonly())
        self.parts: tuple[memoryview, ...] = tuple(views)
        self.nbytes: int = sum(len(v) for v in self.parts)

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Scatter):
            other = bytes(other)
        try:
            return bytes(self) == memoryview(other)  # type: ignore[arg-type]
        except TypeError:
            return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Scatter({self.nbytes} bytes in {len(self.parts)} parts)"


def contiguous(payload: Any) -> Any:
    """``payload`` as one bytes-like buffer: a Scatter joined (one copy), anything
    else as it is."""
    return bytes(payload) if isinstance(payload, Scatter) else payload


def as_uint8(buf: Any) -> np.ndarray:
    """A read-only-or-writable uint8 view of any contiguous buffer, without a copy
    (a ``Scatter`` is joined first: one copy).

    Raises TypeError if ``buf`` does not export a contiguous buffer.
    """
    if isinstance(buf, Scatter):
        buf = bytes(buf)
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise TypeError("message buffer is not contiguous")
        return buf.reshape(-1).view(np.uint8)
    try:
        mv = memoryview(buf)
    except TypeError:
        raise TypeError(f"message must be a bytes-like object, not {type(buf).__name__}") from None
    if not mv.c_contiguous:
        raise TypeError("message buffer is not contiguous")
    return np.frombuffer(mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv, np.uint8)


class BufferFile(io.RawIOBase):
    """A read-only, seekable file over a uint8 array, for h5py/zipfile to parse.

    Unlike ``io.BytesIO(bytearray)`` it copies nothing up front: only the bytes a
    reader asks for (the metadata) are copied, on demand.
    """

    def __init__(self, data: np.ndarray) -> None:
        super().__init__()
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        out = np.frombuffer(memoryview(b).cast("B"), dtype=np.uint8)
        n = max(0, min(len(out), len(self._data) - self._pos))
        out[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            pos = offset
        elif whence == 1:
            pos = self._pos + offset
        else:
            pos = len(self._data) + offset
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def writable(self) -> bool:
        return False
