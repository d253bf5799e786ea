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
