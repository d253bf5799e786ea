"""Length-prefixed TCP framing: round trip, split independence, truncation, misuse."""

from __future__ import annotations

import struct
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simstream.wire import (
    NEED_DATA,
    ConnectionClosed,
    LocalProtocolError,
    Message,
    OversizeMessage,
    RemoteProtocolError,
    new_connection,
)
from simstream.wire.lenprefix import LenPrefixConnection
from tests.strategies import drain


def payloads():
    sizes = st.one_of(st.sampled_from([0, 1, 255, 256, 65536]), st.integers(0, 10_000))
    return st.lists(sizes.map(lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)),
                    max_size=6)


def opened() -> LenPrefixConnection:
    conn = LenPrefixConnection()
    assert conn.initiate() == b""
    return conn


def test_framing_is_an_8_byte_big_endian_length() -> None:
    conn = opened()
    assert conn.ready
    assert conn.message_header(0) == b"\x00" * 8
    assert conn.message_header(0x0102030405060708) == bytes(range(1, 9))
    assert conn.send_message(b"hi") == b"\x00" * 7 + b"\x02hi"
    assert conn.data_to_send() == b""


@given(payloads(), st.data())
def test_round_trip_and_any_split(msgs: list[bytes], data: st.DataObject) -> None:
    sender = opened()
    stream = b"".join(sender.send_message(m) for m in msgs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    receiver = opened()
    events: list[object] = []
    for a, b in pairwise([0, *sorted(set(cuts)), len(stream)]):
        if b > a:
            receiver.receive_data(stream[a:b])
            events += drain(receiver)
    receiver.receive_data(b"")
    events += drain(receiver)
    assert events == [*(Message((m,)) for m in msgs), ConnectionClosed(0)]


def test_truncated_stream_is_a_closed_event_with_the_leftover() -> None:
    conn = opened()
    conn.receive_data(struct.pack(">Q", 10) + b"abc")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed(11)


def test_oversize_is_refused_from_the_length_alone() -> None:
    conn = LenPrefixConnection(max_message_bytes=10)
    conn.initiate()
    conn.receive_data(struct.pack(">Q", 2**63))
    with pytest.raises(RemoteProtocolError, match="max_message_bytes=10"):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_misuse() -> None:
    conn = LenPrefixConnection()
    with pytest.raises(LocalProtocolError, match="initiate"):
        conn.message_header(1)
    conn.initiate()
    with pytest.raises(LocalProtocolError, match=">= 0"):
        conn.message_header(-5)
    with pytest.raises(LocalProtocolError, match="max_message_bytes"):
        LenPrefixConnection(max_message_bytes=-1)
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="end of stream"):
        conn.receive_data(b"more")
    assert isinstance(new_connection("tcp", "PUSH"), LenPrefixConnection)


@given(st.lists(st.integers(0, 300), min_size=1, max_size=6), st.data())
def test_skip_oversize_reads_past_any_split_and_keeps_the_head(sizes: list[int],
                                                                 data: st.DataObject) -> None:
    """``on_oversize="skip"``: a message over the cap becomes an OversizeMessage with
    its declared length and first ``keep_head`` bytes; the next messages follow in
    step, however the bytes are split; nng's framing after its header is the same."""
    msgs = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    stream = b"".join(struct.pack(">Q", len(m)) + m for m in msgs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    conn = new_connection("tcp", "PULL", max_message_bytes=100, on_oversize="skip", keep_head=7)
    conn.initiate()
    events: list[object] = []
    for a, b in pairwise([0, *sorted(set(cuts)), len(stream)]):
        if b > a:
            conn.receive_data(stream[a:b])
            events += drain(conn)
    conn.receive_data(b"")
    events += drain(conn)
    want = [Message((m,)) if len(m) <= 100 else OversizeMessage(len(m), m[:7]) for m in msgs]
    assert events == [*want, ConnectionClosed(0)]


def test_a_stream_cut_inside_a_skipped_message_is_an_unfinished_message() -> None:
    conn = new_connection("nng", "PULL", max_message_bytes=10, on_oversize="skip", keep_head=4)
    conn.initiate()
    conn.receive_data(b"\x00SP\x00\x00\x50\x00\x00" + struct.pack(">Q", 50) + b"H" * 30)
    assert [type(e).__name__ for e in drain(conn)] == ["PeerReady"]
    assert conn.unprocessed_bytes == 8 + 30  # consumed, no event yet: mid-message
    conn.receive_data(b"H" * 20 + struct.pack(">Q", 2) + b"ok")
    assert drain(conn) == [OversizeMessage(50, b"HHHH"), Message((b"ok",))]
    conn.receive_data(struct.pack(">Q", 40) + b"x")
    assert drain(conn) == []
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed(9)]


def test_skip_is_refused_where_the_framing_cannot_skip_and_the_default_is_an_error() -> None:
    with pytest.raises(LocalProtocolError, match="on_oversize"):
        new_connection("zmq", "PULL", on_oversize="skip")
    with pytest.raises(LocalProtocolError, match="on_oversize"):
        new_connection("tcp", "PULL", on_oversize="drop")
    conn = new_connection("tcp", "PULL", max_message_bytes=10)
    conn.initiate()
    conn.receive_data(struct.pack(">Q", 11))
    with pytest.raises(RemoteProtocolError, match="max_message_bytes=10"):
        conn.next_event()
