"""Byte buffers without hidden copies.

``new_bytes(n)`` returns a fresh ``bytes`` object together with a writable uint8
view of its storage, so an encoder can fill an immutable message in place before
anyone else sees it. Why: a 118 MB ``bytes`` made the ordinary way costs one extra
copy and, worse, ~29 000 page faults on first touch (about 55 ms here), five times
the copy itself. Here the storage is asked for huge pages (``madvise``) before it
is touched, and filled exactly once. The trick relies on CPython's bytes layout;
it is checked once at import and replaced by an ordinary (slower) path when the
check fails or on another interpreter.
"""

from __future__ import annotations

import ctypes
import io
import platform
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

_PAGE = 4096
_MADV_HUGEPAGE = 14
_SMALL = 1 << 12  # below this the extra copy of the plain path costs nothing


def _madvise_fn() -> Callable[[int, int], None]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        return lambda addr, n: None

    def advise(addr: int, n: int) -> None:
        start = (addr + _PAGE - 1) & ~(_PAGE - 1)
        end = (addr + n) & ~(_PAGE - 1)
        if end > start:
            madvise(start, end - start, _MADV_HUGEPAGE)  # best effort; failure is harmless

    return advise


_advise = _madvise_fn()
_DATA_OFFSET = bytes.__basicsize__ - 1  # offset of ob_sval in a CPython bytes object


def _fill_in_place(n: int) -> tuple[bytes, np.ndarray]:
    b = bytes(n)  # calloc: untouched zero pages, so madvise still decides their size
    addr = id(b) + _DATA_OFFSET
    _advise(addr, n)
    view = np.ctypeslib.as_array((ctypes.c_ubyte * n).from_address(addr))
    return b, view


def _self_test() -> bool:
    if platform.python_implementation() != "CPython" or sys.byteorder not in ("little", "big"):
        return False
    try:
        b, view = _fill_in_place(64)
        view[:] = np.arange(64, dtype=np.uint8)
        return b == bytes(range(64))
    except Exception:  # any surprise: fall back to the plain path
        return False


_IN_PLACE = _self_test()


def new_bytes(n: int) -> tuple[bytes | bytearray, np.ndarray]:
    """A fresh message buffer of ``n`` bytes and a writable uint8 view of it.

    Write the whole message through the view, then drop the view and hand out the
    buffer. The buffer is ``bytes`` (immutable once returned) on CPython; elsewhere,
    and for messages under 4 KiB, a ``bytearray``.
    """
    if n >= _SMALL and _IN_PLACE:
        return _fill_in_place(n)
    ba = bytearray(n)
    return ba, np.frombuffer(ba, dtype=np.uint8)


def finish(buf: bytes | bytearray) -> bytes:
    """``buf`` as bytes (a copy only for the small bytearray path)."""
    return buf if isinstance(buf, bytes) else bytes(buf)


def as_uint8(buf: Any) -> np.ndarray:
    """A read-only-or-writable uint8 view of any contiguous buffer, without a copy.

    Raises TypeError if ``buf`` does not export a contiguous buffer.
    """
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
