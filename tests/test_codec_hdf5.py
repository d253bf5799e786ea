"""The HDF5 fast paths against stock h5py: same bytes in, same arrays out."""

from __future__ import annotations

import io
import math

import h5py
import hdf5plugin
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simstream import codec
from simstream.codec import _hdf5
from tests.strategies import batches, compressions, field_maps


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == np.ascontiguousarray(b).tobytes()


def lclstreamer_serialize(arrays: dict[str, np.ndarray], paths: dict[str, str], compression: str, level: int = 3) -> bytes:
    """What LCLStreamer's HDF5BinarySerializer does: h5py into BytesIO, chunks (1, ...)."""
    opts = _hdf5.filter_options(compression, level)
    with io.BytesIO() as b:
        with h5py.File(b, "w") as fh:
            for name, a in arrays.items():
                fh.create_dataset(paths[name], shape=a.shape, dtype=a.dtype, chunks=(1, *a.shape[1:]), data=a, **opts)
        return b.getvalue()


def h5py_read(buf: bytes) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(buf), "r") as fh:
        fh.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    batch = draw(batches())
    return batch, draw(field_maps(list(batch))), draw(compressions())


@given(cases())
def test_h5py_reads_what_we_encode(case: tuple[dict[str, np.ndarray], dict[str, str], str]) -> None:
    batch, paths, comp = case
    buf = codec.encode(batch, fields=paths, compression=comp)
    stock = h5py_read(buf)
    assert set(stock) == {p.strip("/") for p in paths.values()}
    with h5py.File(io.BytesIO(buf), "r") as fh:
        for name, a in batch.items():
            d = fh[paths[name]]
            assert same(a, d[()])
            assert d.chunks == (1, *a.shape[1:])
            filtered = comp != "none"  # every dataset, as LCLStreamer's serializer
            assert (d.id.get_create_plist().get_nfilters() > 0) == filtered


@given(cases(), st.booleans())
def test_fast_decode_equals_stock_h5py(case: tuple[dict[str, np.ndarray], dict[str, str], str], ours: bool) -> None:
    """Files from the real serializer's method and from our encoder decode as h5py reads them."""
    batch, paths, comp = case
    if ours:
        buf = codec.encode(batch, fields=paths, compression=comp)
    else:
        buf = lclstreamer_serialize(batch, paths, comp)
    stock = h5py_read(buf)
    fast = codec.decode(buf)
    assert set(fast) == set(stock)
    for key, a in stock.items():
        assert same(a, fast[key]), key


def test_the_template_chunks_are_found_where_h5py_puts_them() -> None:
    a = np.arange(4 * 3 * 5, dtype=np.int16).reshape(4, 3, 5)
    buf = codec.encode({"d": a, "t": np.arange(4.0)}, fields={"d": "/data/data", "t": "/data/t"})
    with h5py.File(io.BytesIO(buf), "r") as fh:
        d = fh["data/data"]
        for i in range(4):
            info = d.id.get_chunk_info(i)
            assert info.filter_mask == 0
            raw = np.frombuffer(buf, np.uint8)[info.byte_offset : info.byte_offset + info.size]
            assert raw.tobytes() == a[i].tobytes()


def test_layout_cache_is_not_fooled_by_equal_lengths() -> None:
    """Two messages of one length but different layouts each decode correctly."""
    a = {"x": np.arange(8, dtype=np.int64).reshape(2, 4), "y": np.zeros(2, np.float64)}
    b = {"x": np.arange(8, dtype=np.float64).reshape(2, 4), "y": np.ones(2, np.int64)}
    ba, bb = codec.encode(a), codec.encode(b)
    assert len(ba) == len(bb)
    for _ in range(2):
        for src, buf in ((a, ba), (b, bb)):
            out = codec.decode(buf)
            assert all(same(src[k], out[k]) for k in src)


def test_layout_cache_serves_new_data_in_the_same_layout() -> None:
    rng = np.random.default_rng(1)
    shapes = {"d": (2, 16), "s": (2,)}
    first = codec.encode({k: np.zeros(s) for k, s in shapes.items()})
    codec.decode(first)  # parsed by h5py once, remembered
    for _ in range(3):
        batch = {k: rng.random(s) for k, s in shapes.items()}
        buf = codec.encode(batch)
        assert _hdf5._recall(np.frombuffer(buf, np.uint8)) is not None  # no h5py needed
        out = codec.decode(buf)
        assert all(same(batch[k], out[k]) for k in batch)


def test_incrementally_allocated_and_contiguous_files_decode() -> None:
    """Layouts other than ours (contiguous, chunks other than per event) go through h5py."""
    b = io.BytesIO()
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    with h5py.File(b, "w") as fh:
        fh.create_dataset("contig", data=x)
        fh.create_dataset("twochunks", data=x, chunks=(2, 3))
        fh.create_dataset("sparse", shape=(4, 6), dtype=np.float32, chunks=(1, 6))
        fh["sparse"][1] = 5.0
    out = codec.decode(b.getvalue())
    assert same(out["contig"], x) and same(out["twochunks"], x)
    expected = np.zeros((4, 6), np.float32)
    expected[1] = 5
    assert same(out["sparse"], expected)


@pytest.mark.parametrize("compression", ["bitshuffle_lz4", "bitshuffle_zstd"])
def test_bitshuffle_is_the_hdf5plugin_filter(compression: str) -> None:
    a = np.random.default_rng(2).random((2, 1, 16, 16)).astype(np.float32)
    buf = codec.encode({"d": a}, compression=compression, compression_level=5)
    with h5py.File(io.BytesIO(buf), "r") as fh:
        dcpl = fh["d"].id.get_create_plist()
        assert dcpl.get_filter(0)[0] == hdf5plugin.BSHUF_ID
        assert same(a, fh["d"][()])


@given(st.integers(1, 6))
@settings(max_examples=6)
def test_encode_uses_one_template_per_batch_size(b: int) -> None:
    a = np.ones((b, 2, 3), np.uint16) * b
    buf = codec.encode({"d": a})
    assert same(h5py_read(buf)["d"], a)


def test_filters_lclstreamer_does_not_write_are_refused() -> None:
    """hdf5plugin registers many native decoders; a header naming one (here LZ4,
    32004) would hand it unchecked bytes, so only deflate, shuffle, fletcher32 and
    Bitshuffle are decoded."""
    b = io.BytesIO()
    with h5py.File(b, "w") as fh:
        fh.create_dataset("d", data=np.ones((2, 8), np.float32), chunks=(1, 8), compression=hdf5plugin.LZ4())
    with pytest.raises(codec.CodecError, match=r"^dataset /d uses HDF5 filter 32004, not one LCLStreamer writes$"):
        codec.decode(b.getvalue())
    b = io.BytesIO()
    x = np.arange(32, dtype=np.int32).reshape(4, 8)
    with h5py.File(b, "w") as fh:
        fh.create_dataset("d", data=x, chunks=(1, 8), compression="gzip", shuffle=True, fletcher32=True)
    assert same(codec.decode(b.getvalue())["d"], x)


def test_a_chunk_stored_without_bitshuffle_is_read_as_stored() -> None:
    """A chunk whose filter mask skips Bitshuffle never reaches the filter; the guard
    leaves it to libhdf5 and checks the others."""
    x = np.arange(2 * 64, dtype=np.uint16).reshape(2, 64)
    b = io.BytesIO()
    with h5py.File(b, "w") as fh:
        d = fh.create_dataset("d", shape=x.shape, dtype=x.dtype, chunks=(1, 64),
                              compression=hdf5plugin.Bitshuffle(cname="lz4"))
        d[0] = x[0]
        d.id.write_direct_chunk((1, 0), x[1].tobytes(), filter_mask=1)
    assert same(codec.decode(b.getvalue())["d"], x)


def test_bitshuffle_after_another_filter_on_read_is_refused() -> None:
    """Bitshuffle's input must be the stored chunk for its headers to be checked."""
    b = io.BytesIO()
    with h5py.File(b, "w") as fh:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((1, 64))
        dcpl.set_filter(hdf5plugin.BSHUF_ID, h5py.h5z.FLAG_MANDATORY, (0, 2))  # block 0, lz4
        dcpl.set_deflate(4)
        sid = h5py.h5s.create_simple((2, 64))
        dsid = h5py.h5d.create(fh.id, b"d", h5py.h5t.NATIVE_FLOAT, sid, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ones((2, 64), np.float32))
    with pytest.raises(codec.CodecError, match=r"^dataset /d: bitshuffle runs after another filter on read$"):
        codec.decode(b.getvalue())


@given(
    dtype=st.sampled_from(["uint8", "int16", "uint32", "float32", ">f4", "float64", "int64"]),
    shape=st.lists(st.integers(1, 30), min_size=1, max_size=4).map(tuple),
    chunk_fraction=st.floats(0.01, 1.0),
    shuffle=st.booleans(),
    fletcher32=st.booleans(),
    drop_one=st.booleans(),
)
def test_deflated_datasets_decode_as_h5py_reads_them(
    dtype: str, shape: tuple[int, ...], chunk_fraction: float, shuffle: bool, fletcher32: bool,
    drop_one: bool,
) -> None:
    """gzip data are inflated by the codec (each chunk checked to inflate to its size)
    when every chunk is there; otherwise, or with fletcher32, libhdf5 reads them after
    the same check. Edge chunks partly filled; a missing chunk reads as the fill value."""
    chunks = tuple(max(1, round(d * chunk_fraction)) for d in shape)
    # bounded: a 30^4 array in 1-element chunks is 810,000 chunks to write and read
    assume(math.prod(-(-d // c) for d, c in zip(shape, chunks, strict=True)) <= 512)
    x = (np.random.default_rng(len(shape)).random(shape) * 90).astype(dtype)
    b = io.BytesIO()
    with h5py.File(b, "w") as fh:
        d = fh.create_dataset("d", shape=shape, dtype=x.dtype, chunks=chunks, compression="gzip",
                              shuffle=shuffle, fletcher32=fletcher32, fillvalue=7)
        if drop_one and x.size > 1:
            d[1:] = x[1:]  # chunks holding only x[0] stay unwritten
        else:
            d[...] = x
    assert same(codec.decode(b.getvalue())["d"], h5py_read(b.getvalue())["d"])


@pytest.mark.parametrize("compression", ["gzip", "gzip_with_shuffle"])
def test_gzip_decode_into_alloc_arrays(compression: str) -> None:
    x = np.arange(4 * 3 * 5, dtype=np.int32).reshape(4, 3, 5)
    buf = lclstreamer_serialize({"x": x}, {"x": "/x"}, compression)
    got: list[np.ndarray] = []

    def alloc(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        got.append(np.empty(shape, dtype))
        return got[-1]

    out = codec.decode(buf, alloc=alloc)
    assert out["x"] is got[0] and same(out["x"], x)
