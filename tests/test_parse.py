"""Parse: HDF5 and npz, both layouts, partial batches, host memory from the pool, and
every kind of unusable message rejected with a reason."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest

from simstream import codec
from simstream.pipeline.parse import ParseError, Parser
from simstream.profile import DEFAULT_FIELDS

H5_FIELDS = {**DEFAULT_FIELDS, "simstream_sequence": "/simstream/sequence",
             "simstream_rank": "/simstream/rank", "simstream_event": "/simstream/event"}
NPZ_FIELDS = {"detector_data": "detector_data", "timestamp": "timestamp"}


class Pool:
    """engine.host_array's contract, counting what is outstanding."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.given: list[np.ndarray] = []
        self.lock = threading.Lock()

    def __call__(self, shape, dtype):
        arr = np.empty(shape, dtype)
        with self.lock:
            self.outstanding += 1
            self.given.append(arr)
        done = []

        def release() -> None:
            assert not done, "released twice"
            done.append(1)
            with self.lock:
                self.outstanding -= 1

        return arr, release


def batch(b: int = 4, event_shape=(1, 8, 8), seq: int | None = 3, rank: int = 1,
          dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(b)
    out = {"detector_data": rng.random((b, *event_shape)).astype(dtype),
           "timestamp": np.arange(b, dtype=np.float64),
           "photon_wavelength": np.full(b, 1.3)}
    if seq is not None:
        out |= {"simstream_sequence": np.full(b, seq), "simstream_rank": np.full(b, rank),
                "simstream_event": np.arange(b)}
    return out


def encode(arrays, fmt: str = "hdf5", **kw) -> bytes:
    fields = H5_FIELDS if fmt == "hdf5" else None
    return codec.encode(arrays, format=fmt, fields=fields, **kw)


def parser(pool: Pool | None = None, fmt: str = "hdf5", event_shape=(1, 8, 8), **kw) -> Parser:
    fields = DEFAULT_FIELDS if fmt == "hdf5" else NPZ_FIELDS
    return Parser(fields, event_shape=event_shape, host_alloc=pool, **kw)


@pytest.mark.parametrize("fmt", ["hdf5", "npz"])
@pytest.mark.parametrize("layout", [(1, 8, 8), (8, 8)], ids=["BCHW", "BHW"])
@pytest.mark.parametrize("b", [4, 1], ids=["full", "partial"])
def test_both_formats_both_layouts_and_partial_batches(fmt, layout, b) -> None:
    pool = Pool()
    arrays = batch(b, layout)
    pb = parser(pool, fmt).parse(encode(arrays, fmt))
    np.testing.assert_array_equal(pb.data, arrays["detector_data"])
    assert pb.events == b and (pb.rank, pb.seq) == (1, 3)
    assert any(pb.data is g for g in pool.given), "detector data must land in pool memory"
    assert pool.outstanding == 1  # only the detector buffer is held
    pb.release()
    assert pool.outstanding == 0
    assert pb.t_parse_start <= pb.t_parse_end


def test_compressed_hdf5() -> None:
    arrays = batch(3)
    pb = parser(Pool()).parse(encode(arrays, compression="gzip", compression_level=1))
    np.testing.assert_array_equal(pb.data, arrays["detector_data"])


def test_float64_data_is_kept_as_sent() -> None:
    arrays = batch(2, dtype=np.float64)
    pb = parser(Pool()).parse(encode(arrays))
    assert pb.data.dtype == np.float64


def test_a_real_lclstreamer_message_has_no_sequence_numbers() -> None:
    pb = parser(Pool()).parse(encode(batch(seq=None)))
    assert (pb.rank, pb.seq) == (None, None)


def test_any_event_shape_when_none_is_expected() -> None:
    pb = parser(Pool(), event_shape=None).parse(encode(batch(2, (3, 5, 7))))
    assert pb.data.shape == (2, 3, 5, 7)


def test_without_a_pool_data_is_plain_memory() -> None:
    pb = parser(None).parse(encode(batch(2)))
    assert pb.release is None and pb.data.shape == (2, 1, 8, 8)


def reason(payload, p: Parser | None = None, pool: Pool | None = None) -> ParseError:
    pool = pool or Pool()
    with pytest.raises(ParseError) as exc:
        (p or parser(pool)).parse(payload)
    assert pool.outstanding == 0, "a failed parse must give its host memory back"
    return exc.value


def test_corrupt_bytes() -> None:
    assert str(reason(b"\x89HDF\r\n\x1a\n" + bytes(200))).startswith("codec:")
    assert str(reason(b"hello world")).startswith("codec:")
    assert str(reason(b"")).startswith("codec:")


@pytest.mark.parametrize("fmt", ["hdf5", "npz"])
def test_truncated(fmt) -> None:
    msg = encode(batch(), fmt)
    pool = Pool()
    e = reason(msg[: len(msg) // 2], parser(pool, fmt), pool)
    assert str(e).startswith("codec:")


def test_missing_detector_field_names_what_the_message_has() -> None:
    arrays = batch()
    del arrays["detector_data"]
    arrays["other"] = np.zeros((4, 2, 2))
    e = reason(encode(arrays))
    assert str(e).startswith("missing field: detector_data")
    assert (e.rank, e.seq) == (1, 3)  # still known: accounting sees the arrival


def test_an_expected_field_missing() -> None:
    arrays = batch()
    del arrays["timestamp"]
    pool = Pool()
    e = reason(encode(arrays), parser(pool, expected=["detector_data", "timestamp"]), pool)
    assert str(e).startswith("missing field: timestamp")


@pytest.mark.parametrize("shape", [(1, 8, 9), (2, 8, 8), (8,), (1, 1, 8, 8, 1)])
def test_wrong_shape(shape) -> None:
    arrays = batch()
    arrays["detector_data"] = np.zeros((4, *shape), np.float32)
    assert str(reason(encode(arrays))).startswith("shape:")


def test_npz_with_an_object_array_is_never_unpickled() -> None:
    buf = io.BytesIO()
    np.savez(buf, detector_data=np.array([{"a": 1}, None], dtype=object))
    pool = Pool()
    e = reason(buf.getvalue(), parser(pool, "npz"), pool)
    assert str(e).startswith("codec:")


def test_parse_is_thread_safe() -> None:
    pool = Pool()
    p = parser(pool)
    msgs = [encode(batch(2, seq=i)) for i in range(8)]
    results: dict[int, int] = {}

    def work(i: int) -> None:
        pb = p.parse(msgs[i])
        results[i] = pb.seq
        pb.release()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: i for i in range(8)}
    assert pool.outstanding == 0
