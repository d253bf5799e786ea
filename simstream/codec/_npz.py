"""npz messages: LCLStreamer's numpy branch (``np.savez`` / ``np.savez_compressed``).

Each array is one ``KEY.npy`` member; ``original_shapes`` adds
``KEY_original_shape`` (int32, e.g. [B, C, H, W] before padding) for the keys it
names, as the branch's PeakNet pipeline adds ``detector_data_original_shape``.
Members are written with a fixed date (1980-01-01) so a message is a pure function
of its arrays. With compression (``gzip``: deflate, zlib's default level, as
``savez_compressed``) every member is deflated; with ``filter_per_event=False``
arrays of one value per event (shape (B,)) stay stored so they can be rewritten in
place (``Rewriter``; the member's CRC is then fixed up). ``numpy.load`` with
``allow_pickle=False`` reads every message.

Decode reads stored members straight from the buffer (a view, after checking the
member's CRC, as zipfile does) and inflates deflated ones.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np

from simstream.codec._buffers import BufferFile
from simstream.codec._errors import NO_LIMITS, CodecError, Limits

MAGIC = b"PK\x03\x04"
MAX_DECODED_BYTES = 16 << 30
ORIGINAL_SHAPE = "_original_shape"
_DATE = (1980, 1, 1, 0, 0, 0)

Alloc = Callable[[tuple[int, ...], np.dtype], np.ndarray]


def encode(items: Sequence[tuple[str, np.ndarray]], compressed: bool, *,
           filter_per_event: bool = True,
           original_shapes: Mapping[str, Sequence[int]] | None = None) -> bytes:
    """One npz message from (key, array) pairs (``original_shapes``: key -> shape)."""
    members: list[tuple[str, np.ndarray, bool]] = [
        (key, a, compressed and (a.ndim > 1 or filter_per_event)) for key, a in items
    ]
    members += [(key + ORIGINAL_SHAPE, np.array(shape, dtype=np.int32), compressed)
                for key, shape in (original_shapes or {}).items()]
    with io.BytesIO() as b:
        with zipfile.ZipFile(b, "w", allowZip64=True) as zf:
            for key, a, deflate in members:
                info = zipfile.ZipInfo(key + ".npy", date_time=_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
                info.external_attr = 0o600 << 16
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)
        return b.getvalue()


@dataclass(frozen=True)
class Member:
    """One ``.npy`` member: where its array data lie (stored members only)."""

    key: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    data_offset: int | None  # absolute offset of the array bytes; None if deflated
    entry_offset: int  # absolute offset of the member's stored bytes (npy header included)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _open(raw: np.ndarray) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(BufferFile(raw))
    except Exception as e:
        raise CodecError(f"not a readable npz (zip) file: {_short(e)}") from None


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def _header(f: IO[bytes], key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy format version {version} is not supported")
    except Exception as e:
        raise CodecError(f"member {key!r}: bad npy header: {_short(e)}") from None
    if dtype.hasobject:
        raise CodecError(f"member {key!r} holds Python objects (pickles are refused)")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def members(zf: zipfile.ZipFile, raw: np.ndarray, limits: Limits = NO_LIMITS) -> dict[str, Member]:
    """Every ``.npy`` member by key. Raises CodecError."""
    out: dict[str, Member] = {}
    infos = zf.infolist()
    limits.check_chunks(len(infos), "the npz's member count")
    for info in infos:
        if not info.filename.endswith(".npy"):
            continue
        key = info.filename[:-4]
        off = info.header_offset
        head = raw[off : off + 30].tobytes()
        if len(head) < 30 or head[:4] != MAGIC:
            raise CodecError(f"truncated or corrupt: no local header for member {key!r}")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        start = off + 30 + name_len + extra_len
        if start + info.compress_size > len(raw):
            raise CodecError(
                f"truncated: member {key!r} needs bytes up to {start + info.compress_size} "
                f"of a {len(raw)}-byte message"
            )
        if info.compress_type == zipfile.ZIP_STORED:
            f = BufferFile(raw[start : start + info.compress_size])
            shape, fortran, dtype = _header(f, key)  # type: ignore[arg-type]
            data_offset: int | None = start + f.tell()
        else:
            try:
                with zf.open(info) as zf_member:
                    shape, fortran, dtype = _header(zf_member, key)
            except CodecError:
                raise
            except Exception as e:
                raise CodecError(f"member {key!r} cannot be read: {_short(e)}") from None
            data_offset = None
        m = Member(key, info, shape, dtype, fortran, data_offset, start)
        if m.nbytes > MAX_DECODED_BYTES:
            raise CodecError(f"member {key!r} declares {m.nbytes} bytes, beyond the guard")
        if data_offset is not None and data_offset + m.nbytes > start + info.compress_size:
            raise CodecError(f"member {key!r}: npy header declares more data than the member holds")
        out[key] = m
    return out


def _target(alloc: Alloc | None, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    from simstream.codec._hdf5 import _target as target

    return target(alloc, shape, dtype) if alloc else np.empty(shape, dtype)


def _read(zf: zipfile.ZipFile, raw: np.ndarray, m: Member, alloc: Alloc | None) -> np.ndarray:
    if m.data_offset is not None:
        entry = raw[m.entry_offset : m.entry_offset + m.info.compress_size]
        if zlib.crc32(entry.data) != m.info.CRC:
            raise CodecError(f"corrupt: CRC mismatch in member {m.key!r}")
        flat = raw[m.data_offset : m.data_offset + m.nbytes].view(m.dtype)
        view = flat.reshape(m.shape[::-1]).T if m.fortran else flat.reshape(m.shape)
        if alloc is None:
            return view
        out = _target(alloc, m.shape, m.dtype)
        out[...] = view
        return out
    try:
        with zf.open(m.info) as f:
            _header(f, m.key)
            data = f.read(m.nbytes + 1)
    except CodecError:
        raise
    except Exception as e:  # zlib.error, BadZipFile (CRC), EOFError
        raise CodecError(f"corrupt: member {m.key!r}: {_short(e)}") from None
    if len(data) != m.nbytes:
        raise CodecError(f"member {m.key!r} holds {len(data)} data bytes, its header says {m.nbytes}")
    flat = np.frombuffer(data, dtype=m.dtype)
    view = flat.reshape(m.shape[::-1]).T if m.fortran else flat.reshape(m.shape)
    out = _target(alloc, m.shape, m.dtype)
    out[...] = view
    return out


def decode(raw: np.ndarray, wanted: Mapping[str, str | Sequence[str]] | None, alloc: Alloc | None,
           optional: Collection[str] = (), limits: Limits = NO_LIMITS) -> dict[str, np.ndarray]:
    """Decode an npz message held in ``raw`` (uint8). ``wanted``: result key -> npz key,
    or a tuple of alternative keys (the first present is read); keys in ``optional``
    may be absent."""
    with _open(raw) as zf:
        found = members(zf, raw, limits)
        if wanted is None:
            wanted = {
                k: k
                for k in found
                if not (k.endswith(ORIGINAL_SHAPE) and k[: -len(ORIGINAL_SHAPE)] in found)
            }
        chosen: dict[str, Member] = {}
        for key, names in wanted.items():
            alts = (names,) if isinstance(names, str) else tuple(names)
            m = next((found.get(n) or found.get(n.strip("/")) for n in alts
                      if (found.get(n) or found.get(n.strip("/"))) is not None), None)
            name = alts[0]
            if m is None:
                if key in optional:
                    continue
                have = ", ".join(k for k in found if not k.endswith(ORIGINAL_SHAPE)) or "none"
                raise CodecError(f"missing field {key!r}: no member {name!r} (has: {have})")
            chosen[key] = m
        limits.check_declared({k: (m.shape, m.dtype) for k, m in chosen.items()})
        out: dict[str, np.ndarray] = {}
        for key, m in chosen.items():
            limits.check_time(f"before member {m.key!r}")
            out[key] = _read(zf, raw, m, alloc)
    return out


def central_crc_offsets(raw: np.ndarray) -> dict[str, int]:
    """Member file name -> absolute offset of its CRC-32 in the central directory."""
    tail = raw[max(0, len(raw) - 65557) :].tobytes()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0:
        raise CodecError("no end-of-central-directory record")
    (count, _size, cd_offset) = struct.unpack("<HII", tail[at + 10 : at + 20])
    if cd_offset == 0xFFFFFFFF:
        raise CodecError("zip64 central directory: in-place rewriting is not supported")
    out = {}
    pos = cd_offset
    for _ in range(count):
        head = raw[pos : pos + 46].tobytes()
        if head[:4] != b"PK\x01\x02":
            raise CodecError("corrupt central directory")
        n, m, k = struct.unpack("<HHH", head[28:34])
        name = raw[pos + 46 : pos + 46 + n].tobytes().decode("utf-8", "replace")
        out[name] = pos + 16
        pos += 46 + n + m + k
    return out
