"""Hostile input to the consumer: fuzzed and crafted messages through the parse path,
hostile peers on the zmq / nng / tcp receive paths, and ``parse_isolation: process``.

Requirement throughout: no crash, no hang, memory bounded by ``max_message_bytes``,
every bad message quarantined with a reason, and a good peer served meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import io
import os
import resource
import socket
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simstream import codec
from simstream.pipeline.config import consumer_config
from simstream.pipeline.isolation import IsolatedParser
from simstream.pipeline.parse import ParsedBatch, ParseError, Parser
from simstream.runner.procs import free_port
from tests.peers import ThreadedConsumer, push_zmq

SHAPE = (1, 8, 8)
FIELDS = {"detector_data": "/data/data", "timestamp": "/data/timestamp",
          "simstream_sequence": "/simstream/sequence", "simstream_rank": "/simstream/rank"}
REASONS = ("codec", "missing field", "shape", "batch", "crash", "timeout")


def message(seq: int = 0, b: int = 2, fmt: str = "hdf5", compression: str = "none") -> bytes:
    arrays = {
        "detector_data": np.full((b, *SHAPE), seq, np.float32),
        "timestamp": np.arange(b, dtype=np.float64),
        "simstream_sequence": np.full(b, seq),
        "simstream_rank": np.zeros(b, np.int64),
    }
    if fmt == "npz":
        return codec.encode(arrays, format="npz", compression=compression)
    return codec.encode(arrays, fields=FIELDS, compression=compression)


SEEDS = [message(3, fmt=f, compression=c) for f, c in
         (("hdf5", "none"), ("hdf5", "gzip"), ("hdf5", "bitshuffle_lz4"), ("npz", "none"),
          ("npz", "gzip"))]


def check_outcome(parser: Parser, payload: bytes) -> str:
    """Parse once: a usable batch or a ParseError whose reason starts with a category."""
    try:
        pb = parser.parse(payload)
    except ParseError as e:
        reason = str(e)
        assert reason.split(":")[0] in REASONS, reason
        assert "\n" not in reason.strip()
        return reason.split(":")[0]
    assert isinstance(pb, ParsedBatch)
    assert pb.data.dtype.kind in "biuf" and pb.data.ndim in (3, 4) and pb.events >= 1
    return "processed"


# --------------------------------------------------------------------------
# generated and mutated messages through the parse path


def mutations() -> st.SearchStrategy[bytes]:
    """A good message with bytes flipped, cut, inserted or spliced."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        buf = bytearray(draw(st.sampled_from(SEEDS)))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "set_word"]))
            pos = draw(st.integers(0, max(0, len(buf) - 1)))
            if op == "flip" and buf:
                buf[pos] ^= draw(st.integers(1, 255))
            elif op == "cut":
                del buf[pos:]
            elif op == "insert":
                buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
            elif op == "delete":
                del buf[pos:pos + draw(st.integers(1, 64))]
            elif op == "set_word" and len(buf) >= pos + 8:
                # a size or offset field made absurd
                buf[pos:pos + 8] = draw(st.sampled_from(
                    [b"\xff" * 8, struct.pack("<Q", 2**62), struct.pack("<Q", 0),
                     struct.pack("<Q", len(buf) * 1000)]))
        return bytes(buf)

    return build()


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(mutations(), st.binary(max_size=256),
                         st.binary(max_size=64).map(lambda b: b"\x89HDF\r\n\x1a\n" + b),
                         st.binary(max_size=64).map(lambda b: b"PK\x03\x04" + b)))
def test_mutated_and_random_bytes_are_processed_or_quarantined_with_a_reason(payload: bytes) -> None:
    check_outcome(Parser(FIELDS, ["detector_data"], SHAPE), payload)


def _h5(build: Any) -> bytes:
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        build(f)
    return bio.getvalue()


def _npz(**arrays: Any) -> bytes:
    bio = io.BytesIO()
    np.savez(bio, **arrays)
    return bio.getvalue()


def _zip_member(name: str, data: bytes, declared: int | None = None) -> bytes:
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w") as z:
        z.writestr(name, data)
    raw = bytearray(bio.getvalue())
    if declared is not None:
        # rewrite the declared sizes (compressed and not) in the local and central headers
        for sig, off in ((b"PK\x03\x04", 18), (b"PK\x01\x02", 20)):
            at = raw.find(sig)
            raw[at + off:at + off + 8] = struct.pack("<II", declared, declared)
    return bytes(raw)


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    head = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    head += b" " * (63 - (len(head) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head


CRAFTED = {
    "empty": b"",
    "wrong magic": b"\x89HDX\r\n\x1a\n" + bytes(100),
    "hdf5 magic only": b"\x89HDF\r\n\x1a\n",
    "zip magic only": b"PK\x03\x04",
    "hdf5 absurd shape": _h5(lambda f: f.create_dataset(
        "data/data", shape=(10**9, 1, 4096, 4096), maxshape=(None, 1, 4096, 4096),
        chunks=(1, 1, 64, 64), dtype="f4")),
    "hdf5 string dtype": _h5(lambda f: f.create_dataset(
        "data/data", data=np.array([b"abc", b"de"], dtype=h5py.string_dtype()))),
    "hdf5 vlen object dtype": _h5(lambda f: f.create_dataset(
        "data/data", shape=(2,), dtype=h5py.vlen_dtype(np.float32))),
    "hdf5 compound dtype": _h5(lambda f: f.create_dataset(
        "data/data", data=np.zeros((2, 1, 4, 4), dtype=[("a", "f4"), ("b", "i2")]))),
    "hdf5 scalar": _h5(lambda f: f.create_dataset("data/data", data=3.0)),
    "hdf5 group at the path": _h5(lambda f: f.create_group("data/data")),
    "hdf5 zero-length batch": _h5(lambda f: f.create_dataset(
        "data/data", shape=(0, 1, 4, 4), dtype="f4")),
    "hdf5 huge 1-d": _h5(lambda f: f.create_dataset(
        "data/data", shape=(2**40,), chunks=(1024,), dtype="u1")),
    "npz object array": _npz(detector_data=np.array([{"a": 1}, None], dtype=object)),
    "npz absurd npy shape": _zip_member("detector_data.npy", _npy_header((10**9, 4096, 4096))),
    "npz shape beyond its bytes": _zip_member("detector_data.npy",
                                              _npy_header((2, 1, 64, 64)) + bytes(64)),
    "npz huge declared length": _zip_member("detector_data.npy", _npy_header((2, 1, 4, 4))
                                            + bytes(128), declared=0xFFFFFFF0),
    "npz bad descr": _zip_member("detector_data.npy", _npy_header((2, 4), "|O") + bytes(64)),
    "npz not npy inside": _zip_member("detector_data.npy", b"hello"),
    "truncated hdf5": message(1)[: len(message(1)) // 2],
    "truncated npz": message(1, fmt="npz")[:-30],
}


@contextlib.contextmanager
def rss_growth_below(limit_bytes: int) -> Iterator[None]:
    """Fail when the process's peak resident size grows by more than ``limit_bytes``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert after - before < limit_bytes, f"peak RSS grew by {(after - before) / 2**20:.0f} MiB"


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_hostile_messages_are_quarantined_quickly_in_bounded_memory(name: str) -> None:
    parser = Parser({"detector_data": "/data/data"}, ["detector_data"], None)
    t0 = time.perf_counter()
    with rss_growth_below(64 << 20):
        outcome = check_outcome(parser, CRAFTED[name])
    assert outcome != "processed", name
    assert time.perf_counter() - t0 < 5.0


def test_a_process_that_only_decodes_reads_bitshuffle_messages(tmp_path: Path) -> None:
    """Regression: the Bitshuffle filter was registered only by encoding (hdf5plugin
    imported for it), so a fresh consumer quarantined every bitshuffle message."""
    import subprocess
    import sys

    for compression in ("bitshuffle_lz4", "bitshuffle_zstd"):
        path = tmp_path / f"{compression}.h5"
        path.write_bytes(message(5, compression=compression))
        code = ("import sys; from simstream import codec; "
                "print(float(codec.decode(open(sys.argv[1], 'rb').read())['data/data'].sum()))")
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-500:]
        assert float(out.stdout) == 5.0 * 2 * 64


# --------------------------------------------------------------------------
# parse_isolation: process


# Found by bench/fuzz_decode.py (input 42646 of seed 0: two bit flips in a
# bitshuffle_lz4 message): the flips make a chunk header declare 1728053760
# uncompressed bytes for a 512-byte chunk, and hdf5plugin's Bitshuffle filter,
# which trusts that total and walks its blocks past the chunk's end, segfaulted
# inside libhdf5's read. The codec now checks every Bitshuffle chunk header
# against the dataset before the filter runs (simstream/codec/_bitshuffle_guard.py)
# and refuses it as a codec error, in process.
BITSHUFFLE_SEGFAULT = zlib.decompress(base64.b64decode(
    "eNrr9HBx4+WS4mIAAQ4OBhYGAQZk8B8Knlii8mHyCVCaEUp3QOkVTDBxRrCcBFRcEGo+urqQIFdXkOr/aABmzwNW"
    "CI3qulEwUoCHq2MAiI6A8hWg9AkmVHUpiSWJILo4M7e4pCg1MRctfVqQaC+u9OvBDOFnsBKXfi04RtPvaPrFTL8d"
    "rNjTb0lmbmpxSWJuAYXpN9jP34WRgYmBA2YvM6p56OkYlj5llFHVuUD5KaojM/4YGVghYcEI40NigpEZIsDCgBp+"
    "MBqXODOQxQjlMyHJsAJjCiTOxMwENpibIQPMZ4Tay1HrAHZLUmZJcUZpWlpOqrVCcWqqQkZJSUGxlb5+emZJRmmS"
    "XnJ+rn52ZmW+bm5icWmmPkI1sp9Y4HYjaA5oymRmYmngRCQBARSnYklXGuz4ww/m7z2So2UBMgDVG4zAmPiPq+Ig"
    "AA6IQttlaOUELrBfDFU9EwH1+8RR1TMTUL9XApXPjCP9M41G/SiAgabRIBgFo2AUjIJRMApGwSggDTDBRhTe/7+S"
    "aXbW+ljm2WcvNiuVrLq+dyvfm/n6upK3ZWoiXG/brIiNSfFxf/nJ5IKG0OoLO7R/H3r+QmVb645dW1aeD6nr7Dcs"
    "Ze35c51Hn98oXqf995WXvFdn89h+LlgUaLtyl5tQiMvLQ1H/fj4/uN9JQljywCITa951Qgwzn4dne1RMDbvh1iJ6"
    "SDG76U/WPZYci/WS07TVcidEucxhMMnjeGx8Jo/zms3XFcL7OqQ1EmZNLmxx5GvJPRF6bWrU6k5G/iSNqAZXRzHW"
    "p5wL1Bmu7XZQOScl1SjKpeChmKAkYJDyoXHqck8hkZM3ZMzYwZ2K/2wBOLyvzbhij7R6XvBXnYijxflKZxN69wn7"
    "7EvvOiET9WnylJeGppuz0tsmnokxlFWYETfn1wmOsud1MRFar04U2jiHBGf+nc2uczXDyEQ9SuVltev2PcJbtcwF"
    "bc+LLovZv8Qpcsb8/U/+RnmyPI7X5JyW+DAhWD7Xs3fmMpd5J3QfzT715IfYXM5AO8eiFSkxAgUf7iw4e090xY+Z"
    "Pb78+jc0GDfNqMn49YxdIUhI0UtF8UHLGS+JD3IT3BhfzdrCwMFqZLNggrMJq4ARlyLHLeMDJ3ifCqmxyB5wmKHm"
    "quiskjjpCqMsf+9ZQU1fAt63XmbQLFKfsv/BalFj/aLcYs2EphmnXaZqWc/dtJF1q7m45Lwnye2SYUcS/zxKDxY4"
    "lGZXLeNd3MeZ6fre5Hqystiy6JNLFfZmf9EXzVCd0L02WfrRGr8dp9ln35zbvUZu8bzbOT9mSgWU1k+333I7Nnyd"
    "f8muFbP577fJy1jfyfCS9hXdc+H0XePgm8aaXcEL/OUjD2tckp76+UoA+1fxhdO3pBvsLNxps6VhQnlToBO706LG"
    "ZhMG9TaFB02M7kItAY4nOx/fEFnQpCmR2XCw4ceMJUeETC5NO+EYL63RFaEZoLhLzUiCScEdw/vpKN5/3ytyMpft"
    "zyutxTE5XbsmCOhX3jnXtKn5cWFqYeZha7WrRvv5bBwiL5ad/7uO9f6ZtmeyLDL+XUWNKpJFuse32Nm0dL+Y9KRl"
    "zQ3X/E2WXvfXda75yuau8Hjqr0MB3EZxq1vr7iap7BNl7Zz0yW/hFLkE13WnvX0Pr338v3O1746Yo+smeHhP6IuJ"
    "WCP04e25e/sXMC9yMP+lL3cgchOzR8Tk8kNLlApc2Q8JTJwaKOLx+c2FyLUrtn1LXMB54rx7xtMrCRzJMiumaHCo"
    "OjBJPVjAKsDIzibkwsEw6+AWMQMJMR7FY4IChqyKm1C8jzkmBel8MzKijkmxwPviEmClggr20HEbBwYTbgaT/9BO"
    "OvrYEwfUPGYmpjNSiOEFDkTK6xgSYykcONT/UYKNeWEfO2FRRpVHH7PgQZNHHxsRUcY+FsIxWmGNglEwCkbBKBgF"
    "gwR8sIcyHKC1tAOuuX/0uVBCc/9v1Ebr/ZEMcM39t6DNpRenFpam5iXD52iLEvOykdulpK9dIbV/AJ2T5mCA9w8I"
    "9AtMNLD2CyYMyniAzVnD8nOLAX71MA/dUR1Nw5T0s1IM8Pezcgzw97NKDPD3s2oMRvtZo2AUjIJRMApGwWADZcz4"
    "aTq0U6cYDqF2KqntqyOW+NtXZyzxt6+uWOJvX92xHG1fjYJRMApGwSgYBUMNAABh2YfX"
))


def abort_on_marker(payload: bytes) -> None:
    """Worker hook: a payload starting with ABORT kills the worker like a native crash
    (SIGABRT), SEGV with a segmentation fault, SLEEP hangs it."""
    if payload[:5] == b"ABORT":
        os.abort()
    if payload[:4] == b"SEGV":
        ctypes.string_at(0)  # reads address 0: SIGSEGV, as a native decoder bug would
    if payload[:5] == b"SLEEP":
        time.sleep(60)


def test_isolated_parse_gives_what_the_in_process_parse_gives() -> None:
    plain = Parser(FIELDS, ["detector_data"], SHAPE)
    iso = Parser(FIELDS, ["detector_data"], SHAPE, isolation="process")
    try:
        for m in SEEDS:
            a, b = plain.parse(m), iso.parse(m)
            assert (a.rank, a.seq, a.events) == (b.rank, b.seq, b.events)
            np.testing.assert_array_equal(a.data, b.data)
            assert b.t_parse_end >= b.t_parse_start
        for payload in (b"junk", message(2)[:200], CRAFTED["npz object array"]):
            with pytest.raises(ParseError) as e1:
                plain.parse(payload)
            with pytest.raises(ParseError) as e2:
                iso.parse(payload)
            assert str(e1.value) == str(e2.value)
    finally:
        iso.close()


def test_isolated_parse_fills_host_memory_from_the_pool() -> None:
    released: list[int] = []

    def alloc(shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Any]:
        return np.empty(shape, dtype), lambda: released.append(1)

    iso = IsolatedParser(FIELDS, ["detector_data"], SHAPE, alloc)
    try:
        pb = iso.parse(message(7))
        assert pb.release is not None and float(pb.data[0, 0, 0, 0]) == 7.0
        pb.release()
        assert released == [1]
    finally:
        iso.close()


@pytest.mark.parametrize(("marker", "signal_name"), [(b"ABORT", "SIGABRT"), (b"SEGV", "SIGSEGV")])
def test_a_worker_crash_costs_one_message_and_parsing_goes_on(marker: bytes,
                                                              signal_name: str) -> None:
    iso = IsolatedParser(FIELDS, ["detector_data"], SHAPE, workers=1, hook=abort_on_marker)
    try:
        assert iso.parse(message(0)).seq == 0
        with pytest.raises(ParseError, match=rf"^crash: parse worker killed by {signal_name}"):
            iso.parse(marker + message(1))
        assert iso.parse(message(2)).seq == 2
        assert iso.crashes == 1
    finally:
        iso.close()


@pytest.mark.parametrize("isolation", ["none", "process"])
def test_the_fuzz_found_bitshuffle_crash_is_a_codec_error(isolation: str) -> None:
    """The message that segfaulted hdf5plugin's filter is now refused before the
    filter runs, in process as in a worker, and the next good one still parses."""
    parser = Parser(FIELDS, ["detector_data"], None, isolation=isolation)
    try:
        with pytest.raises(ParseError, match=r"^codec: dataset /data/data chunk 3: bitshuffle "
                                             r"chunk header declares 1728053760 uncompressed bytes"):
            parser.parse(BITSHUFFLE_SEGFAULT)
        assert parser.parse(message(8, compression="bitshuffle_lz4")).seq == 8
    finally:
        parser.close()


@pytest.mark.integration  # waits out a real-time decode timeout in a real process
def test_a_hanging_decode_times_out_and_parsing_goes_on() -> None:
    iso = IsolatedParser(FIELDS, ["detector_data"], SHAPE, timeout_s=0.5, hook=abort_on_marker)
    try:
        with pytest.raises(ParseError, match=r"^timeout: "):
            iso.parse(b"SLEEP")
        assert iso.parse(message(4)).seq == 4 and iso.timeouts == 1
    finally:
        iso.close()


def test_isolation_is_a_consumer_setting() -> None:
    cfg = consumer_config(section={"parse_isolation": "process", "parse_timeout_s": 2})
    assert cfg.parse_isolation == "process" and cfg.parse_timeout_s == 2
    assert consumer_config().parse_isolation == "none"
    with pytest.raises(Exception, match=r"consumer\.parse_isolation"):
        consumer_config(section={"parse_isolation": "thread"})


# --------------------------------------------------------------------------
# a live consumer and hostile peers


def consumer_cfg(**kw: Any) -> Any:
    section = {
        "device": "cpu", "model": {"kind": "noop"}, "event_shape": list(SHAPE), "buffers": 1,
        "fields": FIELDS, "idle_timeout_s": None, "log_every_batches": 1000,
        "random": {"batch_size": 2, "shape": list(SHAPE), "dtype": "float32"},
        "queue": {"maxsize": 4, "sample_interval_ms": 50},
    }
    overrides = {k.replace("__", "."): v for k, v in kw.items()}
    return consumer_config(section=section, overrides=overrides)


class LiveConsumer(ThreadedConsumer):
    """run_consumer in a thread on a free port; ``stop()`` ends it and returns the summary."""

    def __init__(self, tmp: Path, **kw: Any) -> None:
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        super().__init__(consumer_cfg(bind=self.url, **kw), tmp)

    def received(self) -> int:
        try:
            return (self.out / "messages.csv").read_bytes().count(b"\n") - 1
        except OSError:
            return 0

    def wait_received(self, n: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.received() < n and time.monotonic() < deadline:
            assert "error" not in self.box, self.box["error"]
            time.sleep(0.02)
        assert self.received() >= n, f"received {self.received()} of {n}"


def send_stream(port: int, msgs: list[bytes], transport: str) -> None:
    """A good peer: length-prefixed messages (nng: after the SP header)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if transport == "nng":
            s.sendall(b"\x00SP\x00" + struct.pack(">HH", 0x50, 0))
        for m in msgs:
            s.sendall(struct.pack(">Q", len(m)) + m)
        if transport == "nng":
            s.recv(8)  # the consumer's header, so the close comes after it
        time.sleep(0.05)



def send_good(c: LiveConsumer, transport: str, msgs: list[bytes]) -> None:
    if transport == "zmq":
        push_zmq(c.url, msgs)
    else:
        send_stream(c.port, msgs, transport)


@contextlib.contextmanager
def raw_peers(port: int, n: int, first: bytes = b"") -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if first:
                s.sendall(first)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["tcp", "nng", "zmq"])
def test_silent_slow_and_many_peers_do_not_stop_a_good_one(tmp_path: Path, transport: str) -> None:
    c = LiveConsumer(tmp_path, transport=transport)
    try:
        with raw_peers(c.port, 1) as silent, raw_peers(c.port, 1) as slow:
            stop_slow = threading.Event()

            def trickle() -> None:
                # one byte a second (of a greeting or a length header), bounded
                data = (b"\x00SP\x00\x00\x50\x00\x00" if transport == "nng" else
                        b"\xff" + bytes(8) + b"\x7f" if transport == "zmq" else
                        struct.pack(">Q", 1000))
                for byte in data[:4]:
                    if stop_slow.wait(1.0):
                        return
                    with contextlib.suppress(OSError):
                        slow[0].sendall(bytes([byte]))

            th = threading.Thread(target=trickle, daemon=True)
            th.start()
            send_good(c, transport, [message(i) for i in range(5)])
            c.wait_received(5)
            with raw_peers(c.port, 1000):
                send_good(c, transport, [message(i) for i in range(5, 10)])
                c.wait_received(10)
            send_good(c, transport, [message(i) for i in range(10, 12)])
            c.wait_received(12)
            stop_slow.set()
            th.join(5)
            assert silent
    finally:
        s = c.stop()
    assert s["received"] == 12 and s["processed"] == 12 and s["quarantined"] == 0


def _zmtp_greeting(version: bytes = b"\x03\x00", mechanism: bytes = b"NULL") -> bytes:
    return b"\xff" + bytes(8) + b"\x7f" + version + mechanism.ljust(20, b"\x00") + bytes(32)


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["tcp", "nng", "zmq"])
def test_malformed_greetings_and_frames_longer_than_announced(tmp_path: Path,
                                                              transport: str) -> None:
    c = LiveConsumer(tmp_path, transport=transport, max_message_bytes=100_000)
    hostile: list[bytes]
    if transport == "nng":
        hostile = [b"\x00SQ\x00\x00\x50\x00\x00" + bytes(100),  # wrong header
                   b"\x00SP\x00\x00\x70\x00\x00",  # a protocol other than Push0
                   b"GET / HTTP/1.0\r\n\r\n"]
    elif transport == "zmq":
        hostile = [b"GET / HTTP/1.0\r\n\r\n", _zmtp_greeting(b"\x09\x09"),
                   _zmtp_greeting(mechanism=b"CURVE"), _zmtp_greeting() + b"\x04\xff" + bytes(300)]
    else:
        good = message(99)
        hostile = [
            # a frame longer than announced: the excess is read as the next header
            struct.pack(">Q", 10) + good,
            # a declared length far beyond max_message_bytes, body never sent
            struct.pack(">Q", 2**62),
            # a declared length just under the cap, body never sent
            struct.pack(">Q", 99_999) + b"\x89HDF",
        ]
    try:
        for h in hostile:
            with raw_peers(c.port, 1, first=h):
                time.sleep(0.05)
        send_good(c, transport, [message(i) for i in range(3)])
        c.wait_received(3)
        time.sleep(0.2)
    finally:
        s = c.stop()
    assert s["processed"] >= 3
    assert s["received"] == s["processed"] + s["quarantined"]
    assert all(r in ("codec", "oversize", "missing field", "shape", "batch")
               for r in s["quarantine_reasons"]), s["quarantine_reasons"]


@pytest.mark.integration
def test_many_peers_announcing_big_messages_do_not_allocate_them(tmp_path: Path) -> None:
    """Memory follows the bytes peers really send, not the lengths they announce."""
    cap = 256 << 20
    c = LiveConsumer(tmp_path, transport="tcp", max_message_bytes=cap)
    try:
        with rss_growth_below(256 << 20), raw_peers(c.port, 40, first=struct.pack(">Q", cap - 1)):
            time.sleep(0.5)
            send_stream(c.port, [message(1)], "tcp")
            c.wait_received(1)
    finally:
        s = c.stop()
    assert s["processed"] == 1


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["tcp", "nng"])
def test_a_big_message_arriving_in_many_reads_is_received_whole(transport: str) -> None:
    """The body buffer grows while a message arrives (it starts small so announced
    lengths cost nothing): a 9 MiB message in many reads still arrives whole."""
    from simstream.pipeline.receiver import StreamReceiver

    port = free_port()
    rx = StreamReceiver(transport, f"tcp://127.0.0.1:{port}", "bind", 64 << 20)
    big = np.random.default_rng(0).integers(0, 255, 9 << 20, dtype=np.uint8).tobytes()
    try:
        sender = threading.Thread(target=send_stream, args=(port, [big, b"x" * 10], transport))
        sender.start()
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            m = rx.recv(0.1)
            if m is not None:
                got.append(m)
        sender.join(10)
    finally:
        rx.close()
    assert [m.nbytes for m in got] == [len(big), 10]
    assert bytes(got[0].payload) == big


@pytest.mark.integration
def test_a_worker_crash_in_a_live_run_quarantines_that_message_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import simstream.pipeline.context as context_mod

    made: list[IsolatedParser] = []

    class CrashingIsolatedParser(IsolatedParser):
        # built as the consumer builds its Parser (keywords: isolation, workers, timeout_s
        # once it passes its parse_isolation settings)
        def __init__(self, fields: Any, expected: Any, event_shape: Any, host_alloc: Any,
                     **settings: Any) -> None:
            super().__init__(fields, expected, event_shape, host_alloc, hook=abort_on_marker,
                             timeout_s=float(settings.get("timeout_s", 30.0)))
            made.append(self)

    monkeypatch.setattr(context_mod, "Parser", CrashingIsolatedParser)
    c = LiveConsumer(tmp_path, transport="tcp", parser_threads=1)
    try:
        send_stream(c.port, [message(0), b"ABORT" + message(1), message(2)], "tcp")
        c.wait_received(3)
    finally:
        s = c.stop()
        for p in made:
            p.close()
    assert (s["received"], s["processed"], s["quarantined"]) == (3, 2, 1)
    assert s["quarantine_reasons"] == {"crash": 1}


@pytest.mark.integration
def test_parse_isolation_process_in_a_live_run(tmp_path: Path) -> None:
    """The setting reaches the consumer's parser: messages are decoded in worker
    processes, a bad one is quarantined, and the workers are gone afterwards."""
    import multiprocessing

    c = LiveConsumer(tmp_path, transport="tcp", parser_threads=2, parse_isolation="process")
    try:
        send_stream(c.port, [message(0), b"not an hdf5 file", message(2)], "tcp")
        c.wait_received(3)
        workers = [p for p in multiprocessing.active_children() if p.is_alive()]
    finally:
        s = c.stop()
    assert workers, "no parse worker process was running"
    assert (s["received"], s["processed"], s["quarantined"]) == (3, 2, 1)
    assert s["config"]["parse_isolation"] == "process"
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
