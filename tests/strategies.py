"""Shared hypothesis strategies: plural nouns, ``min_*``/``max_*`` keywords.

Sizes stay small (arrays of a few KB) so property tests run fast.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from simstream.profile import COMPRESSIONS, DTYPES

__all__ = [
    "arrays",
    "batches",
    "compressions",
    "dtypes",
    "event_shapes",
    "field_maps",
    "field_names",
    "formats",
    "sources",
]

_GROUPS = ("data", "entry", "simstream")


def dtypes(*, byteorders: bool = False) -> st.SearchStrategy[np.dtype]:
    """The profile's dtypes; with ``byteorders``, big-endian variants too."""
    base = st.sampled_from([np.dtype(d) for d in DTYPES])
    if not byteorders:
        return base
    return st.one_of(base, base.map(lambda d: d.newbyteorder(">") if d.itemsize > 1 else d))


def event_shapes(*, min_dims: int = 0, max_dims: int = 3, max_side: int = 6) -> st.SearchStrategy[tuple[int, ...]]:
    """Per-event shapes (every side >= 1)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side)


def arrays(
    *,
    events: int | None = None,
    min_events: int = 1,
    max_events: int = 4,
    dtype: Any = None,
    shape: tuple[int, ...] | None = None,
    max_dims: int = 3,
    max_side: int = 6,
) -> st.SearchStrategy[np.ndarray]:
    """One batch array (B, *event shape) with any values, NaN and infinities included."""

    @st.composite
    def build(draw: st.DrawFn) -> np.ndarray:
        b = events if events is not None else draw(st.integers(min_events, max_events))
        dt = dtype if dtype is not None else draw(dtypes(byteorders=True))
        ev = shape if shape is not None else draw(event_shapes(max_dims=max_dims, max_side=max_side))
        return draw(hnp.arrays(np.dtype(dt), (b, *ev)))

    return build()


def field_names(*, min_size: int = 1, max_size: int = 4) -> st.SearchStrategy[list[str]]:
    """Distinct data-source names, never one of the HDF5 group names used by field_maps."""
    name = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(lambda s: s not in _GROUPS)
    return st.lists(name, min_size=min_size, max_size=max_size, unique=True)


def batches(
    *,
    min_fields: int = 1,
    max_fields: int = 4,
    min_events: int = 1,
    max_events: int = 4,
    max_dims: int = 3,
    max_side: int = 6,
) -> st.SearchStrategy[dict[str, np.ndarray]]:
    """A batch: name -> array, all with the same first dimension."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, np.ndarray]:
        names = draw(field_names(min_size=min_fields, max_size=max_fields))
        b = draw(st.integers(min_events, max_events))
        return {n: draw(arrays(events=b, max_dims=max_dims, max_side=max_side)) for n in names}

    return build()


def field_maps(names: list[str], *, min_depth: int = 1, max_depth: int = 2) -> st.SearchStrategy[dict[str, str]]:
    """name -> HDF5 path (``/group/name`` or ``name``); no path is a prefix of another."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, str]:
        out = {}
        for n in names:
            depth = draw(st.integers(min_depth, max_depth))
            groups = draw(st.lists(st.sampled_from(_GROUPS), min_size=depth - 1, max_size=depth - 1))
            slash = draw(st.booleans())
            out[n] = ("/" if slash else "") + "/".join([*groups, n])
        return out

    return build()


def formats() -> st.SearchStrategy[str]:
    return st.sampled_from(["hdf5", "npz"])


def compressions(*, format: str = "hdf5") -> st.SearchStrategy[str]:
    """Compression names valid for ``format``."""
    return st.sampled_from(list(COMPRESSIONS) if format == "hdf5" else ["none", "gzip"])


def sources(
    *,
    min_batch: int = 1,
    max_batch: int = 4,
    max_side: int = 8,
    contents: tuple[str, ...] = ("peaks", "random", "constant"),
) -> st.SearchStrategy[Any]:
    """Small valid ``simstream.profile.Source`` objects (a few KB per event)."""
    from simstream.profile import Source

    @st.composite
    def build(draw: st.DrawFn) -> Source:
        fmt = draw(formats())
        compression = draw(compressions(format=fmt))
        names = {"detector_data", "timestamp", "photon_wavelength"}
        fields = {n: (f"/data/{n}" if fmt == "hdf5" else n) for n in names}
        return Source(
            batch_size=draw(st.integers(min_batch, max_batch)),
            shape=list(draw(event_shapes(min_dims=1, max_dims=3, max_side=max_side))),
            dtype=draw(st.sampled_from(DTYPES)),
            content=draw(st.sampled_from(contents)),
            format=fmt,
            compression=compression,
            compression_level=draw(st.integers(0, 9)),
            fields=fields,
            total_events=draw(st.one_of(st.none(), st.integers(1, 20))),
            pool=draw(st.one_of(st.none(), st.integers(1, 3))),
            peaks_per_event=draw(st.integers(0, 5)),
        )

    return build()


def drain(conn: Any) -> list[object]:
    """Events of a sans-IO wire connection until NEED_DATA (not included) or
    ConnectionClosed (included)."""
    from simstream.wire import NEED_DATA, ConnectionClosed

    events: list[object] = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return events
        events.append(ev)
        if isinstance(ev, ConnectionClosed):
            return events
