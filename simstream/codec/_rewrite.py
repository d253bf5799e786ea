"""Pool mode: new per-message values written into a copy of an encoded message.

A pool of pre-encoded batches is cycled; each outgoing message is a copy of one
of them with its small per-event fields (sequence, rank, event, timestamp)
replaced. Their bytes sit at offsets learnt once, so a message costs one copy of
the buffer plus a few small writes, at memory speed, whatever the compression of
the detector data.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simstream.codec import _hdf5, _npz
from simstream.codec._buffers import as_uint8, finish, new_bytes
from simstream.codec._errors import CodecError


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
    shape). The original is never modified.

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
        for name, values in updates.items():
            slot = self._slots.get(name)
            if slot is None:
                raise KeyError(f"{name!r} is not a rewritable field of this message")
            arr = np.ascontiguousarray(np.broadcast_to(np.asarray(values, dtype=slot.dtype), slot.shape))
            src = arr.reshape(-1).view(np.uint8)
            pos = 0
            for off, n in slot.ranges:
                out[off : off + n] = src[pos : pos + n]
                pos += n
            if slot.crc_entry is not None:
                start, n = slot.crc_entry
                crc = struct.pack("<I", zlib.crc32(out[start : start + n].data))
                for at in slot.crc_at:
                    out[at : at + 4] = np.frombuffer(crc, np.uint8)
        del out
        return finish(buf)
