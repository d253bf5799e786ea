"""simstream.codec: round trips, alloc, errors, rewriting, the demo command."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simstream import codec
from simstream.codec import CodecError
from tests.strategies import arrays, batches, compressions, field_maps, formats


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (NaN payloads and -0.0 included)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


def small_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "detector_data": rng.random((3, 1, 8, 8), dtype=np.float32),
        "timestamp": np.arange(3, dtype=np.float64) + 0.5,
        "seq": np.full(3, 7, dtype=np.int64),
    }


FIELDS = {"detector_data": "/data/data", "timestamp": "/data/timestamp", "seq": "/simstream/sequence"}


@st.composite
def encoded_cases(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, str] | None, str, str]:
    batch = draw(batches())
    fmt = draw(formats())
    comp = draw(compressions(format=fmt))
    fields = draw(st.one_of(st.none(), field_maps(list(batch))))
    return batch, fields, fmt, comp


@given(encoded_cases())
def test_round_trip(case: tuple[dict[str, np.ndarray], dict[str, str] | None, str, str]) -> None:
    batch, fields, fmt, comp = case
    buf = codec.encode(batch, format=fmt, fields=fields, compression=comp)
    assert isinstance(buf, bytes)
    assert codec.sniff(buf) == fmt
    back = codec.decode(buf, fields=fields)
    assert set(back) == set(batch)
    for name, a in batch.items():
        assert same(back[name], a), name


@given(batches(), formats())
def test_round_trip_without_fields_keys_are_names(batch: dict[str, np.ndarray], fmt: str) -> None:
    back = codec.decode(codec.encode(batch, format=fmt))
    assert set(back) == set(batch)
    assert all(same(back[n], a) for n, a in batch.items())


@given(encoded_cases())
def test_decode_with_alloc_lands_in_the_given_arrays(
    case: tuple[dict[str, np.ndarray], dict[str, str] | None, str, str],
) -> None:
    batch, fields, fmt, comp = case
    buf = codec.encode(batch, format=fmt, fields=fields, compression=comp)
    given_out: list[np.ndarray] = []

    def alloc(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        a = np.full(shape, 0xAB, dtype=np.uint8).view(dtype) if np.dtype(dtype).itemsize == 1 else np.empty(shape, dtype)
        given_out.append(a)
        return a

    back = codec.decode(buf, fields=fields, alloc=alloc)
    assert len(given_out) == len(batch)
    for name, a in batch.items():
        assert any(back[name] is g for g in given_out), name
        assert same(back[name], a)


def test_unfiltered_decode_is_a_view_of_the_message() -> None:
    buf = codec.encode(small_batch(), fields=FIELDS)
    back = codec.decode(buf, fields=FIELDS)
    assert np.shares_memory(back["detector_data"], np.frombuffer(buf, np.uint8))
    assert not back["detector_data"].flags.writeable  # a view of immutable bytes


@pytest.mark.parametrize("fmt", ["hdf5", "npz"])
def test_decode_of_a_mutable_buffer_does_not_copy_it(fmt: str) -> None:
    buf = bytearray(codec.encode(small_batch(), format=fmt, fields=FIELDS))
    back = codec.decode(memoryview(buf), fields=FIELDS)
    assert np.shares_memory(back["detector_data"], np.frombuffer(buf, np.uint8))
    assert same(back["detector_data"], small_batch()["detector_data"])


def test_alloc_must_return_a_fitting_array() -> None:
    buf = codec.encode(small_batch(), fields=FIELDS)
    with pytest.raises(ValueError, match="alloc"):
        codec.decode(buf, fields=FIELDS, alloc=lambda shape, dtype: np.empty((1,), dtype))


@pytest.mark.parametrize("fmt,comp", [("hdf5", c) for c in codec.COMPRESSIONS] + [("npz", "none"), ("npz", "gzip")])
def test_encoding_is_deterministic(fmt: str, comp: str) -> None:
    a = codec.encode(small_batch(), format=fmt, fields=FIELDS, compression=comp)
    b = codec.encode(small_batch(), format=fmt, fields=FIELDS, compression=comp)
    assert a == b


def test_partial_batch_uses_its_own_layout() -> None:
    full = small_batch()
    part = {k: v[:1] for k, v in full.items()}
    for batch in (full, part, full):
        back = codec.decode(codec.encode(batch, fields=FIELDS), fields=FIELDS)
        assert all(same(back[k], batch[k]) for k in batch)


@given(st.data())
@settings(max_examples=25)
def test_numpy_load_reads_npz_messages(data: st.DataObject) -> None:
    batch = data.draw(batches())
    comp = data.draw(compressions(format="npz"))
    name0 = next(iter(batch))
    shape0 = [len(batch[name0]), 1, 2, 3]
    buf = codec.encode(batch, format="npz", compression=comp, original_shapes={name0: shape0})
    with np.load(io.BytesIO(buf), allow_pickle=False) as z:
        for name, a in batch.items():
            assert same(z[name], a)
        # only the keys named get an original shape, int32, as LCLStreamer's numpy branch
        assert [k for k in z.files if k.endswith("_original_shape")] == [name0 + "_original_shape"]
        assert z[name0 + "_original_shape"].dtype == np.int32
        assert z[name0 + "_original_shape"].tolist() == shape0


# -- errors


def test_encode_rejects_what_is_not_a_batch() -> None:
    with pytest.raises(ValueError, match="first dimension"):
        codec.encode({"a": np.zeros((2, 3)), "b": np.zeros(3)})
    with pytest.raises(ValueError, match="scalar"):
        codec.encode({"a": np.float64(1.0)})
    with pytest.raises(ValueError, match="format"):
        codec.encode({"a": np.zeros(2)}, format="cbor")
    with pytest.raises(ValueError, match="npz"):
        codec.encode({"a": np.zeros(2)}, format="npz", compression="bitshuffle_lz4")
    with pytest.raises(ValueError, match="share the path"):
        codec.encode({"a": np.zeros(2), "b": np.zeros(2)}, fields={"a": "/x", "b": "x"})


@pytest.mark.parametrize("buf", [b"", b"\x00" * 64, b"GIF89a" + b"\x00" * 100, b"\x89HDF\r\n\x1a\n", b"PK\x03\x04"])
def test_garbage_raises_codec_error(buf: bytes) -> None:
    with pytest.raises(CodecError):
        codec.decode(buf)


@pytest.mark.parametrize("fmt,comp", [("hdf5", "none"), ("hdf5", "gzip"), ("npz", "none"), ("npz", "gzip")])
@given(cut=st.floats(0.0, 0.9999))
@settings(max_examples=30)
def test_truncated_messages_raise_codec_error(fmt: str, comp: str, cut: float) -> None:
    buf = codec.encode(small_batch(), format=fmt, fields=FIELDS, compression=comp)
    with pytest.raises(CodecError):
        codec.decode(buf[: int(len(buf) * cut)], fields=FIELDS)


@pytest.mark.parametrize("fmt,comp", [("hdf5", "none"), ("hdf5", "bitshuffle_lz4"), ("npz", "none"), ("npz", "gzip")])
@given(flips=st.lists(st.tuples(st.floats(0.0, 0.9999), st.integers(1, 255)), min_size=1, max_size=8))
@settings(max_examples=40)
def test_corrupt_messages_decode_or_raise_codec_error(
    fmt: str, comp: str, flips: list[tuple[float, int]]
) -> None:
    buf = bytearray(codec.encode(small_batch(), format=fmt, fields=FIELDS, compression=comp))
    for where, xor in flips:
        buf[int(where * len(buf))] ^= xor
    try:
        out = codec.decode(bytes(buf), fields=FIELDS)
    except CodecError as e:
        assert str(e)
    else:  # raw data bytes carry no checksum in HDF5: a flip there decodes
        assert set(out) == set(FIELDS)


def test_crc_mismatch_in_npz_is_corrupt() -> None:
    buf = bytearray(codec.encode(small_batch(), format="npz", fields=FIELDS))
    buf[len(buf) // 3] ^= 0xFF  # inside the detector data, a stored member
    with pytest.raises(CodecError, match="CRC"):
        codec.decode(bytes(buf), fields=FIELDS)


def test_missing_field_names_it() -> None:
    buf = codec.encode(small_batch(), fields=FIELDS)
    with pytest.raises(CodecError, match="missing field 'wavelength'"):
        codec.decode(buf, fields={**FIELDS, "wavelength": "/data/wavelength"})


def test_absurd_declared_size_is_refused() -> None:
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000,), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\x00" * 64
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as zf:
        zf.writestr("detector_data.npy", npy)
    with pytest.raises(CodecError, match="declares|more data"):
        codec.decode(b.getvalue())


def test_hdf5_declaring_far_more_than_it_holds_is_refused() -> None:
    import h5py

    b = io.BytesIO()
    with h5py.File(b, "w") as fh:  # 8 GB declared, no chunk written: a few KB on the wire
        fh.create_dataset("d", shape=(1_000_000, 1000), dtype=np.float64, chunks=(1, 1000))
    with pytest.raises(CodecError, match="declares"):
        codec.decode(b.getvalue())


def test_fields_disagreeing_on_batch_size_is_a_shape_mismatch() -> None:
    import h5py

    b = io.BytesIO()
    with h5py.File(b, "w") as fh:
        fh["a"] = np.zeros((3, 2))
        fh["b"] = np.zeros(4)
    with pytest.raises(CodecError, match="shape mismatch"):
        codec.decode(b.getvalue())


# -- pool-mode rewriting


@pytest.mark.parametrize("fmt,comp", [("hdf5", "none"), ("hdf5", "gzip"), ("hdf5", "bitshuffle_zstd"), ("npz", "none"), ("npz", "gzip")])
@given(seq=st.integers(0, 2**40), stamps=arrays(events=3, dtype=np.float64, shape=()))
@settings(max_examples=20)
def test_rewriter_replaces_per_event_fields(fmt: str, comp: str, seq: int, stamps: np.ndarray) -> None:
    batch = small_batch()
    fields = FIELDS if fmt == "hdf5" else None
    original = codec.encode(batch, format=fmt, fields=fields, compression=comp,
                            filter_per_event=False)
    keep = bytes(original)
    rw = codec.Rewriter(original, ["seq", "timestamp"], fields=fields)
    out = rw({"seq": seq, "timestamp": stamps})
    # the same message without a copy of the original: views of it around the
    # rewritten bytes (the npz CRCs too)
    parts = rw.parts({"seq": seq, "timestamp": stamps})
    assert bytes(parts) == out and len(parts) == len(out) and len(parts.parts) <= 5
    back = codec.decode(out, fields={k: (fields or {}).get(k, k) for k in batch})
    assert (back["seq"] == seq).all()
    assert same(back["timestamp"], stamps)
    assert same(back["detector_data"], batch["detector_data"])
    assert original == keep


def test_rewriter_parts_copy_the_message_when_the_fields_are_too_scattered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from simstream.codec import _rewrite

    rw = codec.Rewriter(codec.encode(small_batch(), fields=FIELDS, filter_per_event=False),
                        ["seq"], fields=FIELDS)
    monkeypatch.setattr(_rewrite, "MAX_WINDOWS", 0)
    parts = rw.parts({"seq": 7})
    assert len(parts.parts) == 1 and bytes(parts) == rw({"seq": 7})


def test_rewriter_output_reads_with_stock_libraries() -> None:
    import h5py

    rw = codec.Rewriter(codec.encode(small_batch(), fields=FIELDS, compression="gzip",
                                     filter_per_event=False), ["seq"], fields=FIELDS)
    with h5py.File(io.BytesIO(rw({"seq": 99})), "r") as fh:
        assert (fh["simstream/sequence"][()] == 99).all()
    rw = codec.Rewriter(codec.encode(small_batch(), format="npz", compression="gzip",
                                     filter_per_event=False), ["seq"])
    with np.load(io.BytesIO(rw({"seq": 99})), allow_pickle=False) as z:
        assert (z["seq"] == 99).all()  # the member CRC was fixed up, or zipfile would refuse


def test_rewriter_refuses_filtered_fields() -> None:
    buf = codec.encode(small_batch(), fields=FIELDS, compression="gzip")
    with pytest.raises(CodecError, match="filtered"):
        codec.Rewriter(buf, ["detector_data"], fields=FIELDS)


# -- the demo command


def test_codec_demo_verifies_and_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simstream.cli import main

    prof = tmp_path / "small.yaml"
    prof.write_text("name: small\nsource: {batch_size: 4, shape: [1, 32, 32], total_events: 10}\n")
    main(["codec", "demo", "--profile", str(prof), "--messages", "5"])
    out = capsys.readouterr().out
    assert "3 batches of 4 x 1x32x32 float32 (peaks), all verified" in out
    for variant in ("bitshuffle_zstd", "gzip_with_shuffle", "npz"):
        assert variant in out


def test_codec_demo_bad_profile_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simstream.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {batch_size: 0}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["codec", "demo", "--profile", str(bad)])
    assert exit_info.value.code == 2
    assert "source.batch_size" in capsys.readouterr().err
