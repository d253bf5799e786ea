"""Pool mode: new per-message values written into a copy of an encoded message.

A pool of pre-encoded batches is cycled; each outgoing message is a copy of one
of them with its small per-event fields (sequence, rank, event, timestamp)
replaced. Their bytes sit at offsets learnt once, so a message costs one copy of
the buffer plus a few small writes, at memory speed, whatever the compression of
the detector data; or, as ``parts``, no copy at all: views of the pooled batch
around the rewritten bytes, for a sender that writes pieces (the emitter).
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from simstream.codec import _hdf5, _npz
from simstream.codec._buffers import Scatter, as_uint8, finish, new_bytes
from simstream.codec._errors import CodecError

#: rewritten ranges closer than this are one window of a ``Rewriter.parts`` message
#: (the bytes between them are copied with it: small next to the detector data)
MERGE_GAP = 64 << 10
#: beyond this many windows ``Rewriter.parts`` copies the message instead (a sender's
#: scatter write takes at most IOV_MAX = 1024 pieces)
MAX_WINDOWS = 64


@dataclass(frozen=True)
class _Slot:
    shape: tuple[int, ...]
    dtype: np.dtype
    ranges: tuple[tuple[int, int], ...]  # where the array's bytes go, in order
    # npz only: the member's stored bytes (offset, n) and where its CRC-32 is kept
    crc_entry: tuple[int, int] | None = None
    crc_at: tuple[int, ...] = ()


class Rewriter:
    """Copies of one encoded message with some fields replaced.

    ``Rewriter(message, names, fields=None)``: ``names`` are the fields to be
    replaced (data-source names; ``fields`` maps them to dataset paths / npz keys,
    as for ``encode``). Each must be stored unfiltered (HDF5) or stored (npz):
    ``encode`` keeps arrays of one value per event that way.

    ``rewriter.message`` is the original (bytes).
    ``rewriter({name: values})`` returns a new ``bytes`` message: the original with
    those fields' values replaced (cast to the field's dtype, broadcast to its
    shape). The original is never modified. ``rewriter.parts({name: values})``:
    the same message as a ``Scatter`` of views of the original and the few
    rewritten bytes, nothing of the rest copied (for a sender's scatter write).

    Raises CodecError if the message cannot be parsed or a field cannot be
    rewritten in place.
    """

    def __init__(
        self,
        message: bytes | bytearray | memoryview,
        names: Sequence[str],
        *,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        # an immutable message is kept as is; anything mutable is copied once
        self.message: bytes = message if isinstance(message, bytes) else bytes(message)
        self._raw = as_uint8(self.message)
        self._slots: dict[str, _Slot] = {}
        self._window_cache: list[tuple[int, int]] | None | bool = False
        paths = {n: (fields or {}).get(n, n) for n in names}
        head = self._raw[:8].tobytes()
        if head == _hdf5.MAGIC:
            with _hdf5._open(self._raw) as fh:
                layouts = _hdf5.read_layouts(fh, len(self._raw))
            for name, path in paths.items():
                lay = layouts.get(path.strip("/"))
                if lay is None:
                    raise CodecError(f"no dataset /{path.strip('/')} for field {name!r}")
                if lay.chunks is None:
                    raise CodecError(
                        f"field {name!r} (/{lay.path}) is filtered or not chunked per event; "
                        f"it cannot be rewritten in place"
                    )
                self._slots[name] = _Slot(lay.shape, lay.dtype, lay.chunks)
        elif head[:4] == _npz.MAGIC:
            with _npz._open(self._raw) as zf:
                found = _npz.members(zf, self._raw)
            crcs = _npz.central_crc_offsets(self._raw)
            for name, key in paths.items():
                m = found.get(key)
                if m is None:
                    raise CodecError(f"no npz member {key!r} for field {name!r}")
                if m.data_offset is None or m.fortran:
                    raise CodecError(f"field {name!r} is deflated; it cannot be rewritten in place")
                local_crc = m.info.header_offset + 14
                self._slots[name] = _Slot(
                    m.shape,
                    m.dtype,
                    ((m.data_offset, m.nbytes),),
                    (m.entry_offset, m.info.compress_size),
                    (local_crc, crcs[m.info.filename]),
                )
        else:
            raise CodecError("not an HDF5 or npz message")

    @property
    def nbytes(self) -> int:
        return len(self._raw)

    def __call__(self, updates: Mapping[str, npt.ArrayLike]) -> bytes:
        buf, out = new_bytes(len(self._raw))
        out[:] = self._raw

        def put(off: int, src: np.ndarray) -> None:
            out[off : off + len(src)] = src

        self._apply(updates, put, lambda start, n: out[start : start + n].data)
        return finish(buf)

    def parts(self, updates: Mapping[str, npt.ArrayLike]) -> Scatter:
        """The message of ``rewriter(updates)`` without copying the original: views
        of it with the rewritten bytes in between (windows of the fields' bytes,
        neighbours closer than ``MERGE_GAP`` merged, copied fresh for each call).
        A sender writes the parts with one scatter call; the original is never
        modified, so each returned Scatter stays valid and unchanged. Where the
        fields are spread over more than ``MAX_WINDOWS`` windows it is one copy,
        as ``rewriter(updates)``."""
        windows = self._windows()
        if windows is None:
            return Scatter([self(updates)])
        starts = [a for a, _ in windows]
        bufs = [np.array(self._raw[a:b]) for a, b in windows]

        def where(off: int, n: int) -> tuple[np.ndarray, int]:
            i = bisect.bisect_right(starts, off) - 1
            a, b = windows[i]
            assert a <= off and off + n <= b, "a rewritten range outside its window"
            return bufs[i], off - a

        def put(off: int, src: np.ndarray) -> None:
            w, at = where(off, len(src))
            w[at : at + len(src)] = src

        def get(start: int, n: int) -> memoryview:
            w, at = where(start, n)
            return w[at : at + n].data

        self._apply(updates, put, get)
        raw = memoryview(self.message)
        out: list[Any] = []
        pos = 0
        for (a, b), w in zip(windows, bufs, strict=True):
            out += [raw[pos:a], w]
            pos = b
        out.append(raw[pos:])
        return Scatter(out)

    def _windows(self) -> list[tuple[int, int]] | None:
        """The byte ranges a rewrite writes or reads (merged, sorted), or None when
        they are more than MAX_WINDOWS."""
        if self._window_cache is not False:
            return self._window_cache  # type: ignore[return-value]
        spans: list[tuple[int, int]] = []
        for slot in self._slots.values():
            spans += [(off, off + n) for off, n in slot.ranges]
            if slot.crc_entry is not None:
                spans.append((slot.crc_entry[0], slot.crc_entry[0] + slot.crc_entry[1]))
            spans += [(at, at + 4) for at in slot.crc_at]
        merged: list[tuple[int, int]] = []
        for a, b in sorted(spans):
            if merged and a - merged[-1][1] <= MERGE_GAP:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        result = merged if len(merged) <= MAX_WINDOWS else None
        self._window_cache = result
        return result

    def _apply(self, updates: Mapping[str, npt.ArrayLike], put: Callable[[int, np.ndarray], None],
               get: Callable[[int, int], Any]) -> None:
        """Write the fields' new values through ``put(offset, uint8 array)`` and
        their CRCs (npz), reading the rewritten member through ``get(start, n)``."""
        for name, values in updates.items():
            slot = self._slots.get(name)
            if slot is None:
                raise KeyError(f"{name!r} is not a rewritable field of this message")
            arr = np.asarray(values, dtype=slot.dtype)
            if arr.shape != slot.shape:  # a scalar or one value per event: broadcast
                arr = np.broadcast_to(arr, slot.shape)
            arr = np.ascontiguousarray(arr)
            src = arr.reshape(-1).view(np.uint8)
            pos = 0
            for off, n in slot.ranges:
                put(off, src[pos : pos + n])
                pos += n
            if slot.crc_entry is not None:
                start, n = slot.crc_entry
                crc = np.frombuffer(struct.pack("<I", zlib.crc32(get(start, n))), np.uint8)
                for at in slot.crc_at:
                    put(at, crc)
