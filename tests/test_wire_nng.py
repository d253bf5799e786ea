"""nng SP-over-TCP sans-IO: header, framing, split independence, malformed peers, misuse,
and (integration) the same bytes against nng through pynng."""

from __future__ import annotations

import socket
import struct
import time
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simstream.wire import (
    NEED_DATA,
    ConnectionClosed,
    LocalProtocolError,
    Message,
    PeerReady,
    RemoteProtocolError,
    new_connection,
)
from simstream.wire.nng import NngConnection, connection_header
from tests.strategies import drain

PUSH_HEADER = b"\x00SP\x00\x00\x50\x00\x00"
PULL_HEADER = b"\x00SP\x00\x00\x51\x00\x00"




def feed_in_pieces(conn: NngConnection, data: bytes, cuts: list[int]) -> list[object]:
    events: list[object] = []
    for a, b in pairwise([0, *sorted(set(cuts)), len(data)]):
        if b > a:
            conn.receive_data(data[a:b])
            events += drain(conn)
    conn.receive_data(b"")
    return events + drain(conn)


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i) % 251 for i in range(251)) * (n // 251) + bytes(
        (seed + i) % 251 for i in range(n % 251))


def message_sizes():
    return st.lists(st.one_of(st.sampled_from([0, 1, 255, 256, 65536]),
                              st.integers(0, 20_000)), min_size=1, max_size=6)


def framed(sizes: list[int]) -> bytes:
    return b"".join(struct.pack(">Q", n) + pattern(n, seed=i) for i, n in enumerate(sizes))


def ready(socket_type: str = "PUSH") -> NngConnection:
    conn = NngConnection(socket_type)
    conn.initiate()
    conn.receive_data(PULL_HEADER if socket_type == "PUSH" else PUSH_HEADER)
    assert drain(conn) == [PeerReady("PULL" if socket_type == "PUSH" else "PUSH", {})]
    return conn


def test_headers_match_pynng_protocol_ids() -> None:
    assert NngConnection("PUSH").initiate() == PUSH_HEADER
    assert NngConnection("pull").initiate() == PULL_HEADER
    assert connection_header("PAIR") == b"\x00SP\x00\x00\x10\x00\x00"


def test_message_header_is_8_byte_big_endian_length() -> None:
    push = ready("PUSH")
    assert push.message_header(0) == b"\x00" * 8
    assert push.message_header(256) == b"\x00\x00\x00\x00\x00\x00\x01\x00"
    assert push.send_message(b"abc") == b"\x00" * 7 + b"\x03abc"


@given(st.data())
def test_any_split_gives_the_same_events(data: st.DataObject) -> None:
    sizes = data.draw(message_sizes())
    stream = PUSH_HEADER + framed(sizes)
    whole = NngConnection("PULL")
    whole.initiate()
    expected = feed_in_pieces(whole, stream, [])
    assert expected == [PeerReady("PUSH", {}),
                        *(Message((pattern(n, seed=i),)) for i, n in enumerate(sizes)),
                        ConnectionClosed(0)]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    split = NngConnection("PULL")
    split.initiate()
    assert feed_in_pieces(split, stream, cuts) == expected


@given(message_sizes())
def test_round_trip(sizes: list[int]) -> None:
    push, pull = ready("PUSH"), ready("PULL")
    payloads = [pattern(n, seed=i) for i, n in enumerate(sizes)]
    pull.receive_data(b"".join(push.send_message(p) for p in payloads))
    assert drain(pull) == [Message((p,)) for p in payloads]


def test_eof_mid_message_reports_the_unprocessed_bytes() -> None:
    pull = ready("PULL")
    pull.receive_data(struct.pack(">Q", 100) + b"x" * 40)
    assert pull.next_event() is NEED_DATA
    pull.receive_data(b"")
    assert pull.next_event() == ConnectionClosed(48)


@pytest.mark.parametrize(("peer_bytes", "match"), [
    (b"\xff" + b"\x00" * 9 + b"\x7f", "is the peer nng"),   # a ZMTP greeting
    (b"\x00SQ", "is the peer nng"),
    (b"\x00SP\x00\x00\x51\x00\x01", "reserved"),
    (b"\x00SP\x00\x00\x50\x00\x00", "SP PUSH; PUSH needs PULL"),
    (b"\x00SP\x00\x12\x34\x00\x00", "unknown protocol 0x1234"),
    (PULL_HEADER + struct.pack(">Q", 1) + b"a", "never sends"),
])
def test_malformed_peer_is_a_remote_protocol_error(peer_bytes: bytes, match: str) -> None:
    conn = NngConnection("PUSH")
    conn.initiate()
    conn.receive_data(peer_bytes)
    with pytest.raises(RemoteProtocolError, match=match):
        drain(conn)
    with pytest.raises(RemoteProtocolError, match=match):
        conn.next_event()


def test_oversize_message_refused_from_its_length() -> None:
    pull = NngConnection("PULL", max_message_bytes=100)
    pull.initiate()
    pull.receive_data(PUSH_HEADER + struct.pack(">Q", 101))
    with pytest.raises(RemoteProtocolError, match="101 bytes, over max_message_bytes=100"):
        drain(pull)


@given(st.binary(min_size=1, max_size=200))
def test_garbage_never_crashes(garbage: bytes) -> None:
    conn = NngConnection("PULL", max_message_bytes=1000)
    conn.initiate()
    conn.receive_data(garbage)
    try:
        events = drain(conn)
        conn.receive_data(b"")
        events += drain(conn)
    except RemoteProtocolError:
        return
    assert isinstance(events[-1], ConnectionClosed)


def test_misuse_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError, match="unknown SP protocol"):
        NngConnection("DEALER")
    with pytest.raises(LocalProtocolError, match="unknown transport kind"):
        new_connection("udp", "PUSH")
    conn = NngConnection("PUSH")
    with pytest.raises(LocalProtocolError, match="initiate"):
        conn.next_event()
    conn.initiate()
    with pytest.raises(LocalProtocolError, match="handshake"):
        conn.message_header(3)
    with pytest.raises(LocalProtocolError, match="does not send"):
        ready("PULL").message_header(3)
    with pytest.raises(LocalProtocolError, match="8-byte length"):
        ready("PUSH").message_header(2**64)
    assert isinstance(new_connection("nng", "PUSH"), NngConnection)


# -- against nng (pynng) --------------------------------------------------------------------


def _nng_port(sock: object) -> int:
    # pynng reports the listener's port in network byte order.
    return socket.ntohs(sock.listeners[0].local_address.port)  # type: ignore[attr-defined]


@pytest.mark.integration
def test_pynng_pull_receives_our_messages() -> None:
    pynng = pytest.importorskip("pynng")
    with pynng.Pull0(listen="tcp://127.0.0.1:0", recv_timeout=5000) as pull:
        pull.recv_max_size = 0  # nng's own cap would refuse the large message
        with socket.create_connection(("127.0.0.1", _nng_port(pull)), timeout=5) as sock:
            conn = NngConnection("PUSH")
            sock.sendall(conn.initiate())
            deadline = time.monotonic() + 5
            while not conn.ready:
                assert time.monotonic() < deadline
                if conn.next_event() is NEED_DATA:
                    conn.receive_data(sock.recv(64))
            sizes = [0, 9, 256, 2_000_000]
            for i, n in enumerate(sizes):
                sock.sendall(conn.message_header(n))
                sock.sendall(pattern(n, seed=i))
            # pynng's recv() fails on a 0-byte message (unpacks a NULL); recv_msg() works.
            got = [pull.recv_msg().bytes for _ in sizes]
            assert got == [pattern(n, seed=i) for i, n in enumerate(sizes)]


@pytest.mark.integration
def test_our_pull_decodes_pynng_push() -> None:
    pynng = pytest.importorskip("pynng")
    with pynng.Push0(listen="tcp://127.0.0.1:0", send_timeout=5000) as push, \
            socket.create_connection(("127.0.0.1", _nng_port(push)), timeout=5) as sock:
        conn = NngConnection("PULL")
        sock.sendall(conn.initiate())
        sizes = [0, 300, 1_000_000]
        for i, n in enumerate(sizes):
            push.send(pattern(n, seed=i))
        got: list[object] = []
        deadline = time.monotonic() + 5
        while len(got) < 1 + len(sizes) and time.monotonic() < deadline:
            ev = conn.next_event()
            if ev is NEED_DATA:
                conn.receive_data(sock.recv(1 << 20))
            else:
                got.append(ev)
        assert got == [PeerReady("PUSH", {}),
                       *(Message((pattern(n, seed=i),)) for i, n in enumerate(sizes))]
