"""Encode and decode simstream messages, byte-compatible with LCLStreamer.

Layout: this file is the whole public surface (``encode``, ``decode``,
``CodecError``, ``Rewriter``, ``sniff``); the private modules hold one format each
(``_hdf5``: templates, chunk offsets, the fast paths; ``_npz``: zip members) plus
the buffers that avoid hidden copies (``_buffers``) and pool-mode rewriting
(``_rewrite``). A change to the wire format belongs in ``_hdf5``/``_npz``; a
change to what callers see belongs here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from simstream.codec import _hdf5, _npz
from simstream.codec._buffers import Scatter, as_uint8, contiguous
from simstream.codec._errors import NO_LIMITS, CodecError, Limits
from simstream.codec._rewrite import Rewriter
from simstream.records.contract import COMPRESSIONS

__all__ = ["COMPRESSIONS", "FORMATS", "CodecError", "Limits", "Rewriter", "Scatter", "contiguous",
           "decode", "encode", "sniff"]

FORMATS = ("hdf5", "npz")


def encode(
    arrays: Mapping[str, Any],
    *,
    format: str = "hdf5",
    fields: Mapping[str, str] | None = None,
    compression: str = "none",
    compression_level: int = 3,
    filter_per_event: bool = True,
    original_shapes: Mapping[str, Any] | None = None,
) -> bytes:
    """One message (a complete HDF5 or npz file) from one batch.

    ``arrays``: data-source name -> array, all with the same first dimension B >= 1.
    ``fields``: name -> HDF5 dataset path (or npz key); names it does not list use
    the name itself. ``compression``: none | gzip | gzip_with_shuffle |
    bitshuffle_lz4 | bitshuffle_zstd (npz: none | gzip); ``compression_level``:
    gzip 0..9, bitshuffle_zstd's zstd level. Compression applies to every array, as
    LCLStreamer's serializers do; ``filter_per_event=False`` leaves arrays of one
    value per event (shape (B,)) unfiltered, so ``Rewriter`` can replace them.
    ``original_shapes`` (npz only): name -> shape, written as an int32
    ``KEY_original_shape`` member (the numpy branch's ``detector_data_original_shape``).

    Raises ValueError for arrays that do not form a batch, an unknown format or
    compression, or paths that collide.
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    if format == "npz" and compression not in ("none", "gzip"):
        raise ValueError(f"format npz supports compression none or gzip, not {compression!r}")
    items = _batch_items(arrays, fields, hdf5=format == "hdf5")
    if format == "npz":
        keys = {name: path for name, path in ((n, (fields or {}).get(n, n)) for n in arrays)}
        shapes = {keys.get(n, n): s for n, s in (original_shapes or {}).items()}
        return _npz.encode(items, compressed=compression == "gzip",
                           filter_per_event=filter_per_event, original_shapes=shapes)
    try:
        return _hdf5.encode(items, compression, compression_level,
                            filter_per_event=filter_per_event)
    except (ValueError, TypeError, KeyError, OSError, RuntimeError) as e:
        raise ValueError(f"cannot encode as HDF5: {e}") from None


def _batch_items(
    arrays: Mapping[str, Any], fields: Mapping[str, str] | None, *, hdf5: bool
) -> list[tuple[str, np.ndarray]]:
    if not arrays:
        raise ValueError("a message needs at least one array")
    items: list[tuple[str, np.ndarray]] = []
    seen: dict[str, str] = {}
    depth = None
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.ndim == 0:
            raise ValueError(f"{name!r} is a scalar; every array needs a first (batch) dimension")
        if a.dtype.kind not in "biufc" or a.dtype.hasobject:
            raise ValueError(f"{name!r} has dtype {a.dtype}; only numeric arrays are encoded")
        if depth is None:
            depth = a.shape[0]
        elif a.shape[0] != depth:
            raise ValueError(
                f"{name!r} has {a.shape[0]} events but the batch has {depth}: all arrays "
                f"must share the first dimension"
            )
        if a.shape[0] < 1 or (hdf5 and 0 in a.shape):
            raise ValueError(f"{name!r} has shape {a.shape}; every dimension must be >= 1")
        path = (fields or {}).get(name, name)
        key = path.strip("/") if hdf5 else path
        if not key:
            raise ValueError(f"{name!r} maps to an empty path")
        if key in seen:
            raise ValueError(f"{name!r} and {seen[key]!r} share the path {path!r}")
        seen[key] = name
        items.append((path, a))
    return items


def sniff(buf: Any) -> str:
    """``"hdf5"`` or ``"npz"`` from the magic bytes. Raises CodecError for neither."""
    head = as_uint8(buf)[:8].tobytes()
    if head == _hdf5.MAGIC:
        return "hdf5"
    if head[:4] == _npz.MAGIC:
        return "npz"
    if not head:
        raise CodecError("empty message")
    raise CodecError(f"not an HDF5 or npz message: starts with {head[:8]!r}")


def decode(
    buf: Any,
    *,
    fields: Mapping[str, str | tuple[str, ...]] | None = None,
    alloc: Callable[[tuple[int, ...], np.dtype], np.ndarray] | None = None,
    optional: Collection[str] = (),
    limits: Limits | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of one message; the format is found from its magic bytes.

    Only the datasets / members ``fields`` names are opened (a value may be a tuple
    of alternative paths, the first present read); names in ``optional``
    may be absent (left out of the result). ``limits`` (``Limits``) bounds the work:
    the decoded bytes of the requested fields, checked from their declared shapes
    before any allocation; chunk, object and member counts, checked before they are
    iterated; a deadline checked between steps.

    ``fields`` given: result keys are its names, each read from its dataset path /
    npz key; otherwise every dataset (keys: paths relative to the root) or npz
    member (keys: member names, ``*_original_shape`` left out).

    Without ``alloc``, unfiltered data are zero-copy views into ``buf`` where their
    chunks lie in order (read-only if ``buf`` is; they keep ``buf`` alive), else
    copied once. With ``alloc(shape, dtype) -> array`` (called once per returned
    array; it must return a writable C-contiguous array of exactly that shape and
    dtype, e.g. pinned host memory), each array is copied exactly once into it.

    Raises CodecError for anything undecodable (truncated, wrong magic, missing
    field, corrupt bytes, fields disagreeing on the batch size, absurd declared
    sizes); ValueError if ``alloc`` returns an unfit array.
    """
    try:
        raw = as_uint8(buf)
    except TypeError as e:
        raise CodecError(str(e)) from None
    kind = sniff(raw)
    lim = limits or NO_LIMITS
    if kind == "hdf5":
        return _hdf5.decode(raw, fields, alloc, optional, lim)
    out = _npz.decode(raw, fields, alloc, optional, lim)
    _hdf5._check_batch(out)
    return out
