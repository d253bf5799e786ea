"""HDF5 messages: what LCLStreamer's HDF5BinarySerializer sends, made fast.

One complete HDF5 file per message; one dataset per field at its path, shape
(B, ...event shape), dtype preserved, chunks (1, ...event shape), the file made
by h5py with its defaults, as the serializer does.

Encode, uncompressed: for a fixed (paths, event shapes, dtypes, B) the file layout
never changes, so a template is built once with h5py (h5py's defaults for a chunked
dataset, as LCLStreamer's files have them: space allocated incrementally, fill
value written if set; every chunk is written once, so all are allocated), each
chunk's byte offset is read back (``get_chunk_info``), and an encode is the
template's metadata bytes plus the arrays copied to their offsets: one pass over
the data. A partial last batch is another B, hence another template.

Encode, compressed: h5py with the filter, per message (chunk sizes vary), on every
dataset, as LCLStreamer does. With ``filter_per_event=False`` datasets of one value
per event (shape (B,)) stay unfiltered, so they sit at fixed offsets and a pool of
pre-encoded messages can get new sequence numbers and timestamps in place (see
``Rewriter``).

Decode: h5py parses only the metadata (through a file object that copies nothing
but what it is asked for) to learn each dataset's chunk offsets, filters, shape
and dtype. Unfiltered per-event chunks are then read straight from the buffer:
a zero-copy view when they lie back to back in order, else one copy. When the
caller passes ``alloc``, data land in its arrays with exactly one copy.

Filtered data: only the filters LCLStreamer writes are accepted (deflate,
shuffle, Bitshuffle; fletcher32). libhdf5 copies a whole chunk out of whatever its
filters return, so a chunk that comes out short is a heap over-read (SIGSEGV on
big chunks), and hdf5plugin's Bitshuffle filter follows its chunk's headers past
the chunk's end. So: gzip data are inflated here, each chunk checked to inflate
to exactly its size (``_read_deflated``); everything else goes through
h5py/hdf5plugin only after ``_check_filters`` has proved every chunk comes out at
its size (Bitshuffle headers by ``_bitshuffle_guard``, a walk over one uint32 per
block). A message whose every byte outside its data chunks equals an earlier
message's is laid out identically, so its parsed layout is reused without calling
h5py at all.
"""

from __future__ import annotations

import io
import math
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import h5py
import numpy as np

from simstream.codec import _bitshuffle_guard as bshuf_guard
from simstream.codec._buffers import BufferFile, finish, new_bytes
from simstream.codec._errors import NO_LIMITS, CodecError, Limits

MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_DECODED_BYTES = 16 << 30  # a message declaring more than this is refused
# Data that h5py must expand (filtered, or chunks missing and filled in) may not
# exceed this multiple of the message size: LZ4 tops out near 255:1, deflate near
# 1032:1, so only a forged or corrupt header declares more.
MAX_EXPANSION = 4096
_EXPANSION_FLOOR = 256 << 20
_TEMPLATE_CACHE_SIZE = 16
_LAYOUT_CACHE_SIZE = 8
_ALIGN = 4096
# Filters a message may use: what LCLStreamer's serializer writes (deflate,
# shuffle, Bitshuffle) and HDF5's own checksum. hdf5plugin registers many more
# native decoders (LZ4, blosc, zfp, sz, ...); a hostile header naming one of them
# would hand it unchecked bytes.
_ACCEPTED_FILTERS = {
    h5py.h5z.FILTER_DEFLATE: "deflate",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
    bshuf_guard.FILTER_ID: "bitshuffle",
}
_ALIGN_THRESHOLD = 1 << 16


def filter_options(compression: str, level: int) -> dict[str, Any]:
    """h5py ``create_dataset`` keywords for a compression name (LCLStreamer's set).

    Raises ValueError for an unknown name or a level out of range.
    """
    if compression == "none":
        return {}
    if compression in ("gzip", "gzip_with_shuffle"):
        if not 0 <= level <= 9:
            raise ValueError(f"compression_level {level} is not in 0..9 for gzip")
        return {
            "compression": "gzip",
            "compression_opts": level,
            "shuffle": compression == "gzip_with_shuffle",
        }
    if compression in ("bitshuffle_lz4", "bitshuffle_zstd"):
        import hdf5plugin

        cname: Literal["lz4", "zstd"] = "lz4" if compression == "bitshuffle_lz4" else "zstd"
        return {"compression": hdf5plugin.Bitshuffle(cname=cname, clevel=level)}
    raise ValueError(
        f"compression {compression!r} is not one of none, gzip, gzip_with_shuffle, "
        f"bitshuffle_lz4, bitshuffle_zstd"
    )


def _rel(path: str) -> str:
    return path.strip("/")


# ----------------------------------------------------------------------------
# layout of an encoded message


@dataclass(frozen=True)
class DatasetLayout:
    """Where one dataset's data lie in a message.

    ``chunks`` holds (byte offset, nbytes) of each event's chunk, in event order,
    when the dataset is unfiltered and chunked one event per chunk (or contiguous:
    then one range); None when the data can only be read through h5py.
    """

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[tuple[int, int], ...] | None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def back_to_back(self) -> bool:
        """Chunks lie in order with no gap: the whole dataset is one byte range."""
        if not self.chunks:
            return False
        start = self.chunks[0][0]
        pos = start
        for off, n in self.chunks:
            if off != pos:
                return False
            pos += n
        return pos - start == self.nbytes


def _dataset_layout(dsid: Any, path: str, buf_len: int, limits: Limits = NO_LIMITS) -> DatasetLayout:
    # h5py's low-level calls: the high-level Dataset costs ~0.3 ms per dataset in
    # property lookups, more than the whole parse otherwise
    shape = tuple(int(d) for d in dsid.shape)
    dtype = dsid.dtype
    layout = DatasetLayout(path, shape, dtype, None)
    if dtype.kind not in "biufc" or dtype.hasobject:
        return layout  # strings and the like (e.g. a source identifier): h5py reads them
    nbytes = layout.nbytes
    if nbytes > MAX_DECODED_BYTES:
        raise CodecError(
            f"dataset /{path} declares {nbytes} bytes, more than the "
            f"{MAX_DECODED_BYTES}-byte guard"
        )
    dcpl = dsid.get_create_plist()
    kind = dcpl.get_layout()
    if kind == h5py.h5d.CHUNKED and limits.max_chunks is not None and shape:
        # from the shapes alone, before anything walks the chunk index (1e6 chunks
        # took 37 s and 4 GB to parse)
        chunk = tuple(int(c) for c in dcpl.get_chunk())
        if len(chunk) == len(shape) and all(c > 0 for c in chunk):
            possible = math.prod(-(-d // c) for d, c in zip(shape, chunk, strict=True))
            limits.check_chunks(possible, f"dataset /{path}'s chunk grid")
    if kind == h5py.h5d.CONTIGUOUS and dcpl.get_external_count() == 0:
        off = dsid.get_offset()
        if off is None or nbytes == 0:
            return layout
        return _checked(layout, ((int(off), nbytes),), buf_len)
    if kind != h5py.h5d.CHUNKED or dcpl.get_nfilters() != 0 or len(shape) == 0:
        return layout
    if tuple(dcpl.get_chunk()) != (1, *shape[1:]):
        return layout
    per_event = nbytes // shape[0] if shape[0] else 0
    if shape[0] == 0 or per_event == 0:
        return layout
    if dsid.get_num_chunks() != shape[0]:
        return layout  # some events never written: h5py supplies the fill value
    found: dict[int, tuple[int, int]] = {}

    def visit(info: Any) -> None:
        found[int(info.chunk_offset[0])] = (int(info.byte_offset), int(info.size))

    dsid.chunk_iter(visit)
    if len(found) != shape[0] or any(i not in found for i in range(shape[0])):
        return layout
    chunks = tuple(found[i] for i in range(shape[0]))
    for i, (_off, size) in enumerate(chunks):
        if size != per_event:
            raise CodecError(
                f"dataset /{path}: chunk {i} holds {size} bytes, an event needs {per_event}"
            )
    return _checked(layout, chunks, buf_len)


def _checked(layout: DatasetLayout, chunks: tuple[tuple[int, int], ...], buf_len: int) -> DatasetLayout:
    for off, n in chunks:
        if off < 0 or off + n > buf_len:
            raise CodecError(
                f"truncated: dataset /{layout.path} has data at bytes {off}..{off + n} "
                f"of a {buf_len}-byte message"
            )
    return DatasetLayout(layout.path, layout.shape, layout.dtype, chunks)


def _open(raw: np.ndarray) -> h5py.File:
    try:
        return h5py.File(BufferFile(raw), "r")
    except Exception as e:  # h5py reports corruption as OSError, KeyError, RuntimeError...
        raise CodecError(f"not a readable HDF5 file: {_short(e)}") from None


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def read_layouts(fh: h5py.File, buf_len: int, paths: Collection[str] | None = None,
                 limits: Limits = NO_LIMITS) -> dict[str, DatasetLayout]:
    """Every dataset's layout (or only those at ``paths``, relative to the root), by
    path relative to the root. Raises CodecError."""
    names: list[bytes] = []
    seen = [0]

    def visit(name: bytes, info: Any) -> bool | None:
        seen[0] += 1
        if limits.max_chunks is not None and seen[0] > limits.max_chunks:
            return True  # stops the visit: refused below
        if info.type == h5py.h5o.TYPE_DATASET:
            names.append(name)
        return None

    try:
        if paths is None:
            h5py.h5o.visit(fh.id, visit, info=True)
            limits.check_chunks(seen[0], "the file's object count")
        else:
            for p in paths:
                b = p.encode()
                try:
                    if fh.id.links.exists(b) and h5py.h5o.get_info(fh.id, b).type == h5py.h5o.TYPE_DATASET:
                        names.append(b)
                except Exception:  # a group on the way is missing or is a dataset
                    continue
        out = {}
        for name in names:
            limits.check_time("reading the datasets' layouts")
            path = name.decode("utf-8", "replace")
            out[path] = _dataset_layout(h5py.h5d.open(fh.id, name), path, buf_len, limits)
        return out
    except CodecError:
        raise
    except Exception as e:
        raise CodecError(f"corrupt HDF5 metadata: {_short(e)}") from None


def _gaps(ranges: Sequence[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    """(start, end) of the bytes in [0, total) not covered by ``ranges`` (offset, n)."""
    out = []
    pos = 0
    for off, n in sorted(ranges):
        if off > pos:
            out.append((pos, off))
        pos = max(pos, off + n)
    if pos < total:
        out.append((pos, total))
    return out


# ----------------------------------------------------------------------------
# encode


@dataclass
class _Template:
    nbytes: int  # length of the file
    meta: list[tuple[int, np.ndarray]]  # (offset, bytes) of everything that is not data
    layouts: list[DatasetLayout]  # in the order of the spec


_templates: OrderedDict[tuple[Any, ...], _Template] = OrderedDict()
_lock = threading.Lock()


def _build_template(spec: tuple[tuple[str, tuple[int, ...], str], ...]) -> _Template:
    with io.BytesIO() as b:
        # Large chunks start on a page boundary: the copy into a fresh message then
        # runs ~1.5x faster than at an arbitrary offset (measured; see BENCHMARKS.md).
        # Only padding changes; any HDF5 reader reads the file the same way.
        with h5py.File(
            b, "w", alignment_threshold=_ALIGN_THRESHOLD, alignment_interval=_ALIGN
        ) as fh:
            for path, shape, dtype in spec:
                # h5py's defaults (alloc time INCR, fill time IFSET) as in LCLStreamer's
                # files; writing every chunk allocates it, so the offsets are final
                d = fh.create_dataset(
                    path, shape=shape, dtype=np.dtype(dtype), chunks=(1, *shape[1:])
                )
                d[...] = 0  # the file image then holds every allocated byte
        image = np.frombuffer(b.getvalue(), dtype=np.uint8)
    with _open(image) as fh:
        layouts = read_layouts(fh, len(image))
    ordered = [layouts[_rel(p)] for p, _s, _d in spec]
    ranges: list[tuple[int, int]] = []
    for lay in ordered:
        if lay.chunks is None:
            raise RuntimeError(f"template dataset /{lay.path} has no fixed chunk offsets")
        ranges.extend(lay.chunks)
    # keep only the metadata (a few KB): the data areas are all overwritten
    meta = [(s, image[s:e].copy()) for s, e in _gaps(ranges, len(image))]
    return _Template(len(image), meta, ordered)


def template(spec: tuple[tuple[str, tuple[int, ...], str], ...]) -> _Template:
    """The cached template for (path, shape, dtype.str) of each dataset."""
    with _lock:
        t = _templates.get(spec)
        if t is not None:
            _templates.move_to_end(spec)
            return t
    t = _build_template(spec)
    with _lock:
        _templates[spec] = t
        while len(_templates) > _TEMPLATE_CACHE_SIZE:
            _templates.popitem(last=False)
    return t


def _write_dataset(out: np.ndarray, lay: DatasetLayout, arr: np.ndarray) -> None:
    src = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    assert lay.chunks is not None
    if lay.back_to_back:
        off = lay.chunks[0][0]
        out[off : off + src.size] = src
        return
    pos = 0
    for off, n in lay.chunks:
        out[off : off + n] = src[pos : pos + n]
        pos += n


def encode(
    items: Sequence[tuple[str, np.ndarray]], compression: str, level: int,
    *, filter_per_event: bool = True,
) -> bytes:
    """One HDF5 message from (dataset path, array) pairs of one batch."""
    opts = filter_options(compression, level)
    if not opts:
        spec = tuple((p, tuple(a.shape), a.dtype.str) for p, a in items)
        t = template(spec)
        buf, out = new_bytes(t.nbytes)
        for start, seg in t.meta:
            out[start : start + seg.size] = seg
        for lay, (_p, a) in zip(t.layouts, items, strict=True):
            _write_dataset(out, lay, a)
        return finish(buf)
    with io.BytesIO() as b:
        with h5py.File(b, "w") as fh:
            for path, a in items:
                fh.create_dataset(
                    path,
                    shape=a.shape,
                    dtype=a.dtype,
                    chunks=(1, *a.shape[1:]),
                    data=a,
                    **(opts if a.ndim > 1 or filter_per_event else {}),
                )
        return b.getvalue()


# ----------------------------------------------------------------------------
# decode


@dataclass
class _Seen:
    layouts: dict[str, DatasetLayout]
    meta: list[tuple[int, int, bytes]]  # (start, end, bytes) outside data chunks
    asked: frozenset[str] | None = None  # the paths looked for (None: every dataset)


_seen: OrderedDict[int, list[_Seen]] = OrderedDict()


def _remember(raw: np.ndarray, layouts: dict[str, DatasetLayout],
              asked: frozenset[str] | None = None) -> None:
    ranges = [c for lay in layouts.values() for c in (lay.chunks or ())]
    meta = [(s, e, raw[s:e].tobytes()) for s, e in _gaps(ranges, len(raw))]
    if sum(e - s for s, e, _b in meta) > (1 << 20):
        return  # metadata this large is not worth comparing on every message
    with _lock:
        entries = _seen.setdefault(len(raw), [])
        entries.insert(0, _Seen(layouts, meta, asked))
        del entries[2:]
        _seen.move_to_end(len(raw))
        while len(_seen) > _LAYOUT_CACHE_SIZE:
            _seen.popitem(last=False)


def _recall(raw: np.ndarray, paths: Collection[str] | None = None) -> dict[str, DatasetLayout] | None:
    """The layouts of an earlier message identical outside its data chunks, read
    when at least ``paths`` (None: every dataset) were looked for."""
    with _lock:
        entries = list(_seen.get(len(raw), ()))
    for entry in entries:
        if entry.asked is not None and (paths is None or not set(paths) <= entry.asked):
            continue
        if all(raw[s:e].tobytes() == b for s, e, b in entry.meta):
            return entry.layouts
    return None


Alloc = Callable[[tuple[int, ...], np.dtype], np.ndarray]


def _target(alloc: Alloc, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    out = alloc(shape, dtype)
    if (
        not isinstance(out, np.ndarray)
        or tuple(out.shape) != shape
        or out.dtype != dtype
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise ValueError(
            f"alloc({shape}, {dtype}) must return a writable C-contiguous array of that "
            f"shape and dtype, got {getattr(out, 'shape', type(out).__name__)} "
            f"{getattr(out, 'dtype', '')}"
        )
    return out


def _from_chunks(raw: np.ndarray, lay: DatasetLayout, alloc: Alloc | None) -> np.ndarray:
    assert lay.chunks is not None
    if lay.back_to_back and alloc is None:
        off = lay.chunks[0][0]
        return raw[off : off + lay.nbytes].view(lay.dtype).reshape(lay.shape)
    out = _target(alloc, lay.shape, lay.dtype) if alloc else np.empty(lay.shape, lay.dtype)
    flat = out.reshape(-1).view(np.uint8)
    pos = 0
    for off, n in lay.chunks:
        flat[pos : pos + n] = raw[off : off + n]
        pos += n
    return out


def _alts(path: str | Sequence[str]) -> tuple[str, ...]:
    """A field's path, or its alternatives in order (the first present is read)."""
    return (path,) if isinstance(path, str) else tuple(path)


def decode(
    raw: np.ndarray, wanted: Mapping[str, str | Sequence[str]] | None, alloc: Alloc | None,
    optional: Collection[str] = (), limits: Limits = NO_LIMITS,
) -> dict[str, np.ndarray]:
    """Decode an HDF5 message held in ``raw`` (uint8). ``wanted``: key -> dataset path,
    or a tuple of alternative paths (only those datasets are opened); keys in
    ``optional`` may be absent."""
    paths = None if wanted is None else {_rel(a) for p in wanted.values() for a in _alts(p)}
    layouts = _recall(raw, paths)
    fh = None
    try:
        if layouts is None:
            fh = _open(raw)
            layouts = read_layouts(fh, len(raw), paths, limits)
            if all(lay.chunks is not None for lay in layouts.values()):
                _remember(raw, layouts, None if paths is None else frozenset(paths))
        if wanted is None:
            wanted = {p: p for p in layouts}
        found: dict[str, DatasetLayout] = {}
        for key, path in wanted.items():
            lay = next((layouts[_rel(a)] for a in _alts(path) if _rel(a) in layouts), None)
            if lay is None:
                if key in optional:
                    continue
                have = ", ".join("/" + p for p in layouts) or "none"
                raise CodecError(f"missing field {key!r}: no dataset at "
                                 f"/{_rel(_alts(path)[0])} (has: {have})")
            found[key] = lay
        limits.check_declared({k: (lay.shape, lay.dtype) for k, lay in found.items()})
        out: dict[str, np.ndarray] = {}
        for key, lay in found.items():
            limits.check_time(f"before dataset /{lay.path}")
            if lay.chunks is not None:
                out[key] = _from_chunks(raw, lay, alloc)
                continue
            if fh is None:
                fh = _open(raw)
            out[key] = _read_h5py(fh, raw, lay, alloc)
        _check_batch(out)
        return out
    finally:
        if fh is not None:
            fh.close()


def _register_filters() -> None:
    """Make the Bitshuffle (LZ4/zstd) filters known to libhdf5 in this process.

    hdf5plugin registers them when imported; a process that only decodes (the
    consumer) would otherwise fail every filtered read with "can't open directory".
    """
    import hdf5plugin  # noqa: F401 - imported for its side effect


def _check_filters(dsid: Any, raw: np.ndarray, path: str) -> None:
    """Refuse a dataset whose filters would run native code on unchecked bytes.

    Every filter must be one of ``_ACCEPTED_FILTERS``. Per chunk, the filters its
    filter mask leaves active run on read in reverse pipeline order: a chunk that
    the Bitshuffle filter decodes must pass ``_bitshuffle_guard`` (headers against
    the dataset's chunk shape and element size) and be its first input; a chunk
    whose active filters keep their sizes known (none, shuffle, fletcher32) must
    come out at exactly the chunk's size, because libhdf5 copies a whole chunk out
    of the pipeline's output whatever its length (a short one: SIGSEGV).
    Raises CodecError.
    """
    try:
        dcpl = dsid.get_create_plist()
        filters = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]
    except Exception as e:
        raise CodecError(f"dataset /{path}: corrupt filter pipeline: {_short(e)}") from None
    if not filters:
        return
    ids = [int(f[0]) for f in filters]
    nfilters = len(ids)
    for fid in ids:
        if fid not in _ACCEPTED_FILTERS:
            raise CodecError(f"dataset /{path} uses HDF5 filter {fid}, not one LCLStreamer writes")
    if ids.count(bshuf_guard.FILTER_ID) > 1:
        raise CodecError(f"dataset /{path} applies the bitshuffle filter twice")
    try:
        elem_size = int(dsid.get_type().get_size())
        chunk_shape = tuple(int(d) for d in dcpl.get_chunk())
        infos: list[tuple[int, int, int]] = []
        dsid.chunk_iter(lambda c: infos.append((int(c.filter_mask), int(c.byte_offset), int(c.size))))
    except Exception as e:
        raise CodecError(f"dataset /{path}: corrupt chunk index: {_short(e)}") from None
    expected = math.prod(chunk_shape) * elem_size
    if expected >= _MAX_CHUNK_BYTES:
        raise CodecError(f"dataset /{path} declares {expected}-byte chunks (HDF5's limit is 4 GiB)")
    _check_native_params(filters, elem_size, path)
    compression = None
    if bshuf_guard.FILTER_ID in ids:
        cd_values = [int(v) for v in filters[ids.index(bshuf_guard.FILTER_ID)][2]]
        try:
            compression, _block = bshuf_guard.filter_compression(cd_values, elem_size)
        except CodecError as e:
            raise CodecError(f"dataset /{path}: {e}") from None
    buf = raw.data
    for k, (mask, off, size) in enumerate(infos):
        out: int | None = size  # bytes coming out of the filters so far, None once unknown
        for j in reversed(range(nfilters)):  # read order
            if mask >> j & 1:
                continue  # skipped for this chunk when it was written
            fid = ids[j]
            if fid == bshuf_guard.FILTER_ID:
                if out != size:
                    # its input would be another filter's output, unchecked here
                    raise CodecError(f"dataset /{path}: bitshuffle runs after another filter on read")
                assert compression is not None
                try:
                    bshuf_guard.check_chunk(
                        buf, off, size, expected=expected, elem_size=elem_size, compression=compression
                    )
                except CodecError as e:
                    raise CodecError(f"dataset /{path} chunk {k}: {e}") from None
                out = expected
            elif fid == h5py.h5z.FILTER_FLETCHER32:
                out = None if out is None else out - 4
            elif fid == h5py.h5z.FILTER_DEFLATE:
                # a deflate stream does not state its length: only inflating tells
                out = None if out is None else _inflated_size(buf, off, out, expected, path, k)
        if out is not None and out != expected:
            raise CodecError(
                f"dataset /{path} chunk {k}: its filters give {out} bytes, the chunk holds {expected}"
            )


def _inflated_size(buf: memoryview, off: int, nbytes: int, expected: int, path: str, k: int) -> int:
    """Bytes that libhdf5's deflate filter will make of ``buf[off:off + nbytes]``, at
    most ``expected + 1`` of them held at once. Raises CodecError if it cannot inflate."""
    if off < 0 or nbytes < 0 or off + nbytes > len(buf):
        raise CodecError(f"dataset /{path} chunk {k} lies outside the {len(buf)}-byte message")
    d = zlib.decompressobj()
    try:
        n = len(d.decompress(buf[off : off + nbytes], expected + 1))
    except zlib.error as e:
        raise CodecError(f"dataset /{path} chunk {k}: not a deflate stream: {e}") from None
    if n > expected:
        raise CodecError(f"dataset /{path} chunk {k} inflates to more than its {expected} bytes")
    if not d.eof:
        raise CodecError(f"dataset /{path} chunk {k}: deflate stream ends early")
    return n


def _check_native_params(filters: Sequence[Any], elem_size: int, path: str) -> None:
    """libhdf5's shuffle un-shuffles with the element size in its cd_values and its
    deflate refuses a level above 9 even to read: a corrupt value there is refused
    here, so the codec's own inflate and libhdf5 agree. Raises CodecError."""
    for fid, _flags, cd, _name in filters:
        if fid == h5py.h5z.FILTER_SHUFFLE and (len(cd) < 1 or cd[0] != elem_size):
            raise CodecError(
                f"dataset /{path}: shuffle filter element size {cd[0] if cd else None} "
                f"disagrees with the dataset's {elem_size}-byte elements"
            )
        if fid == h5py.h5z.FILTER_DEFLATE and (len(cd) < 1 or cd[0] > 9):
            raise CodecError(f"dataset /{path}: deflate level {cd[0] if cd else None} is not 0..9")


_MAX_CHUNK_BYTES = 1 << 32  # HDF5 refuses to write a chunk this big
_SHUFFLE_DEFLATE = ([h5py.h5z.FILTER_DEFLATE], [h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE])


def _read_deflated(
    dsid: Any, raw: np.ndarray, lay: DatasetLayout, alloc: Alloc | None
) -> np.ndarray | None:
    """gzip / gzip_with_shuffle data inflated here, not by libhdf5; None if the
    dataset is not such (then ``_check_filters`` and libhdf5 take it).

    A deflate stream's length is known only by inflating it, and libhdf5 copies a
    whole chunk out of whatever its filter returned (a short stream: SIGSEGV), so
    checking first would inflate every chunk twice. Here each chunk is inflated
    once, by Python's zlib, to at most its own size, un-shuffled with numpy and
    copied into place. Taken only when every chunk of the grid is stored once with
    all filters applied. Raises CodecError for a chunk that does not inflate to
    exactly its size.
    """
    if lay.dtype.kind not in "biufc" or lay.dtype.hasobject or not lay.shape:
        return None
    try:
        dcpl = dsid.get_create_plist()
        filters = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]
        ids = [int(f[0]) for f in filters]
        if ids not in _SHUFFLE_DEFLATE:
            return None
        if int(dsid.get_type().get_size()) != lay.dtype.itemsize:
            return None
        chunk = tuple(int(c) for c in dcpl.get_chunk())
        infos: list[tuple[tuple[int, ...], int, int, int]] = []
        dsid.chunk_iter(lambda c: infos.append(
            (tuple(int(o) for o in c.chunk_offset), int(c.filter_mask), int(c.byte_offset), int(c.size))))
    except Exception:
        return None  # _check_filters reports it
    if len(chunk) != len(lay.shape) or min(chunk) < 1:
        return None
    if math.prod(chunk) * lay.dtype.itemsize >= _MAX_CHUNK_BYTES:
        return None  # _check_filters reports it
    grid = math.prod(-(-d // c) for d, c in zip(lay.shape, chunk, strict=True))
    offsets = {o for o, _m, _off, _n in infos}
    if len(infos) != grid or len(offsets) != grid or any(m for _o, m, _off, _n in infos):
        return None
    if any(x % c or x >= d for o in offsets for x, c, d in zip(o, chunk, lay.shape, strict=True)):
        return None
    _check_native_params(filters, lay.dtype.itemsize, lay.path)
    stored: list[bytes] = []
    for k, (o, _m, off, n) in enumerate(infos):
        if off < 0 or off + n > len(raw):
            raise CodecError(f"dataset /{lay.path} chunk {k} lies outside the {len(raw)}-byte message")
        try:
            # the bytes libhdf5's own read finds at this offset: a corrupt chunk index
            # can list a chunk there that its lookup misses
            mask, data = dsid.read_direct_chunk(o)
        except Exception:
            return None  # libhdf5 reads the fill value there, after _check_filters
        if mask:
            return None
        stored.append(data)
    out = _target(alloc, lay.shape, lay.dtype) if alloc else np.empty(lay.shape, lay.dtype)
    size = lay.dtype.itemsize
    expected = math.prod(chunk) * size
    shuffled = len(ids) == 2 and size > 1
    whole = chunk[1:] == lay.shape[1:] and chunk[0] == 1  # one event per chunk: a byte range of out
    flat = out.reshape(-1).view(np.uint8)
    for k, ((o, _m, _off, _n), chunk_bytes) in enumerate(zip(infos, stored, strict=True)):
        z = zlib.decompressobj()
        try:
            data = z.decompress(chunk_bytes, expected + 1)
        except zlib.error as e:
            raise CodecError(f"dataset /{lay.path} chunk {k}: not a deflate stream: {e}") from None
        if len(data) != expected or not z.eof:
            got = "more than" if len(data) > expected else f"{len(data)} of"
            raise CodecError(f"dataset /{lay.path} chunk {k} inflates to {got} its {expected} bytes")
        src = np.frombuffer(data, np.uint8)
        if whole:
            dst = flat[o[0] * expected : (o[0] + 1) * expected]
        else:
            dst = np.empty(expected, np.uint8)
        if shuffled:
            # HDF5's shuffle stores byte j of every element together; one strided
            # column at a time is ~3x faster in numpy than one transposed copy
            rows, cols = src.reshape(size, -1), dst.reshape(-1, size)
            for j in range(size):
                cols[:, j] = rows[j]
        else:
            dst[...] = src
        if whole:
            continue
        block = dst.view(lay.dtype).reshape(chunk)
        region = tuple(slice(x, min(x + c, d)) for x, c, d in zip(o, chunk, lay.shape, strict=True))
        out[region] = block[tuple(slice(0, r.stop - r.start) for r in region)]
    return out


def _read_h5py(
    fh: h5py.File, raw: np.ndarray, lay: DatasetLayout, alloc: Alloc | None
) -> np.ndarray:
    _register_filters()
    if lay.nbytes > _EXPANSION_FLOOR and lay.nbytes > MAX_EXPANSION * fh.id.get_filesize():
        raise CodecError(
            f"dataset /{lay.path} declares {lay.nbytes} bytes from a "
            f"{fh.id.get_filesize()}-byte message (more than {MAX_EXPANSION}:1)"
        )
    try:
        dsid = h5py.h5d.open(fh.id, lay.path.encode())
    except Exception as e:
        raise CodecError(f"dataset /{lay.path} cannot be opened: {_short(e)}") from None
    own = _read_deflated(dsid, raw, lay, alloc)
    if own is not None:
        return own
    _check_filters(dsid, raw, lay.path)
    dset = fh[lay.path]
    if lay.dtype.kind not in "biufc" or lay.dtype.hasobject:
        try:
            return np.asarray(dset[()])
        except Exception as e:
            raise CodecError(f"dataset /{lay.path} cannot be read: {_short(e)}") from None
    out = _target(alloc, lay.shape, lay.dtype) if alloc else np.empty(lay.shape, lay.dtype)
    try:
        if out.size:
            dset.read_direct(out)
    except Exception as e:
        raise CodecError(f"dataset /{lay.path} cannot be read: {_short(e)}") from None
    return out


def _check_batch(out: Mapping[str, np.ndarray]) -> None:
    depths = {}
    for key, a in out.items():
        if a.ndim == 0:
            raise CodecError(f"field {key!r} is a scalar, not a batch (B, ...)")
        depths[key] = a.shape[0]
    if len(set(depths.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in depths.items())
        raise CodecError(f"shape mismatch: fields disagree on the batch size ({detail})")
