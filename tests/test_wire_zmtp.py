"""ZMTP 3.x sans-IO: handshake, framing, split independence, malformed peers, misuse,
and (integration) the same bytes against libzmq through pyzmq."""

from __future__ import annotations

import socket
import struct
import time
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from simstream.wire import (
    NEED_DATA,
    Command,
    ConnectionClosed,
    LocalProtocolError,
    Message,
    PeerGreeting,
    PeerReady,
    ProtocolError,
    RemoteProtocolError,
)
from simstream.wire.zmtp import (
    GREETING_SIZE,
    ZmtpConnection,
    command_frame,
    encode_properties,
    frame_header,
    greeting,
)
from tests.strategies import drain

# -- helpers and strategies -----------------------------------------------------------




def feed_in_pieces(conn: ZmtpConnection, data: bytes, cuts: list[int], eof: bool = True):
    events: list[object] = []
    bounds = [0, *sorted(set(cuts)), len(data)]
    for a, b in pairwise(bounds):
        if b > a:
            conn.receive_data(data[a:b])
            events += drain(conn)
    if eof:
        conn.receive_data(b"")
        events += drain(conn)
    return events


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes that differ from message to message (cheap, no RNG)."""
    return bytes((seed + i) % 251 for i in range(min(n, 251))) * (n // 251) + bytes(
        (seed + i) % 251 for i in range(n % 251)
    )


def ready_pull() -> ZmtpConnection:
    """A PULL connection that has done its handshake with a PUSH peer."""
    pull = ZmtpConnection("PULL")
    pull.initiate()
    pull.receive_data(push_opening())
    assert [type(e) for e in drain(pull)] == [PeerGreeting, PeerReady]
    pull.data_to_send()
    return pull


def push_opening(socket_type: str = "PUSH") -> bytes:
    return greeting() + command_frame(
        "READY", encode_properties({"Socket-Type": socket_type.encode()})
    )


def ready_push() -> ZmtpConnection:
    push = ZmtpConnection("PUSH")
    push.initiate()
    push.receive_data(greeting(as_server=True) + command_frame(
        "READY", encode_properties({"Socket-Type": b"PULL"})))
    assert [type(e) for e in drain(push)] == [PeerGreeting, PeerReady]
    push.data_to_send()
    return push


def frame_sizes():
    boundary = st.sampled_from([0, 1, 254, 255, 256, 257, 65535, 65536])
    return st.one_of(boundary, st.integers(0, 20_000))


def messages(max_frames: int = 3):
    return st.lists(st.lists(frame_sizes(), min_size=1, max_size=max_frames), min_size=1,
                    max_size=6)


def cut_points(data: bytes):
    return st.lists(st.integers(0, len(data)), max_size=12)


# -- greeting and handshake ------------------------------------------------------------


def test_greeting_layout() -> None:
    g = ZmtpConnection("PUSH", as_server=True).initiate()
    assert len(g) == GREETING_SIZE
    assert g[0] == 0xFF and g[9] == 0x7F
    assert g[10:12] == b"\x03\x01"
    assert g[12:32] == b"NULL" + b"\x00" * 16
    assert g[32] == 1
    assert g[33:] == b"\x00" * 31


def test_handshake_between_push_and_pull_queues_ready_after_greeting() -> None:
    push, pull = ZmtpConnection("PUSH"), ZmtpConnection("PULL")
    g_push, g_pull = push.initiate(), pull.initiate()
    assert push.data_to_send() == b""  # nothing owed before the peer's greeting
    push.receive_data(g_pull)
    pull.receive_data(g_push)
    assert drain(push) == [PeerGreeting((3, 1), "NULL", False)]
    assert drain(pull) == [PeerGreeting((3, 1), "NULL", False)]
    ready_from_push = push.data_to_send()
    assert ready_from_push == command_frame(
        "READY", encode_properties({"Socket-Type": b"PUSH"}))
    pull.receive_data(ready_from_push)
    push.receive_data(pull.data_to_send())
    assert drain(pull) == [PeerReady("PUSH", {"Socket-Type": b"PUSH"})]
    assert drain(push) == [PeerReady("PULL", {"Socket-Type": b"PULL"})]
    assert push.ready and pull.ready
    pull.receive_data(push.send_message(b"hello"))
    assert drain(pull) == [Message((b"hello",))]


def test_greeting_in_libzmq_pieces_and_early_rejection() -> None:
    # libzmq sends 10 octets, then the major version, then the other 53.
    conn = ZmtpConnection("PUSH")
    conn.initiate()
    g = greeting()
    conn.receive_data(g[:10])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(g[10:11])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(g[11:])
    assert conn.next_event() == PeerGreeting((3, 1), "NULL", False)
    # A non-ZeroMQ peer is refused at its first byte, not after 64.
    http = ZmtpConnection("PUSH")
    http.initiate()
    http.receive_data(b"G")
    with pytest.raises(RemoteProtocolError, match="signature"):
        http.next_event()


def test_accepts_zmtp_3_0_peer_and_records_its_version() -> None:
    conn = ZmtpConnection("PULL")
    conn.initiate()
    conn.receive_data(greeting(version=(3, 0)) + command_frame(
        "READY", encode_properties({"socket-type": b"push", "Identity": b""})))
    assert drain(conn) == [PeerGreeting((3, 0), "NULL", False),
                           PeerReady("PUSH", {"socket-type": b"push", "Identity": b""})]
    assert conn.peer_version == (3, 0)


def test_identity_is_sent_in_ready() -> None:
    conn = ZmtpConnection("DEALER", identity=b"rank-3")
    conn.initiate()
    conn.receive_data(greeting())
    drain(conn)
    assert conn.data_to_send() == command_frame(
        "READY", encode_properties({"Socket-Type": b"DEALER", "Identity": b"rank-3"}))


# -- framing ---------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "header"), [
    (0, b"\x00\x00"), (255, b"\x00\xff"), (256, b"\x02" + struct.pack(">Q", 256)),
    (2**32, b"\x02" + struct.pack(">Q", 2**32)),
])
def test_message_header_short_long_boundary(size: int, header: bytes) -> None:
    assert ready_push().message_header(size) == header


def test_frame_header_flags() -> None:
    assert frame_header(3, more=True) == b"\x01\x03"
    assert frame_header(3, command=True) == b"\x04\x03"
    assert frame_header(300, more=True)[0] == 0x03


@given(st.data())
def test_round_trip_of_generated_frames(data: st.DataObject) -> None:
    msgs = data.draw(messages())
    push = ready_push()
    pull = ready_pull()
    sent = [tuple(pattern(n, seed=i + j) for j, n in enumerate(m)) for i, m in enumerate(msgs)]
    stream = b"".join(push.send_frames(list(frames)) for frames in sent)
    pull.receive_data(stream)
    got = drain(pull)
    assert got == [Message(frames) for frames in sent]


def test_large_message_round_trip_and_payload_is_not_copied() -> None:
    push, pull = ready_push(), ready_pull()
    payload = pattern(3 * 1024 * 1024 + 7)
    header = push.message_header(len(payload))
    assert len(header) == 9
    # The payload arrives as the peer's reads deliver it: 64 KiB pieces.
    pull.receive_data(header)
    events = []
    for off in range(0, len(payload), 65536):
        pull.receive_data(payload[off:off + 65536])
        events += drain(pull)
    assert len(events) == 1 and events[0].payload == payload
    # A frame that arrives in one read is handed over as that very object.
    pull.receive_data(header)
    pull.receive_data(payload)
    (msg,) = drain(pull)
    assert msg.payload is payload


# -- split independence ------------------------------------------------------------------


@given(st.data())
def test_any_split_gives_the_same_events(data: st.DataObject) -> None:
    msgs = data.draw(messages())
    push = ready_push()
    stream = bytearray(push_opening())
    for i, m in enumerate(msgs):
        stream += push.send_frames([pattern(n, seed=i) for n in m])
        if i == 0:
            stream += command_frame("PING", b"\x00\x0a" + b"ctx")
    stream = bytes(stream)
    whole = ZmtpConnection("PULL")
    whole.initiate()
    expected = feed_in_pieces(whole, stream, [])
    cuts = data.draw(cut_points(stream))
    split = ZmtpConnection("PULL")
    split.initiate()
    assert feed_in_pieces(split, stream, cuts) == expected
    assert expected[-1] == ConnectionClosed(0)
    assert sum(isinstance(e, Message) for e in expected) == len(msgs)


def test_consumed_bytes_marks_where_each_event_ends() -> None:
    push = ready_push()
    opening = push_opening()
    m1 = push.send_frames([b"ab", pattern(300)])
    m2 = push.send_message(b"")
    conn = ZmtpConnection("PULL")
    conn.initiate()
    ends = []
    for i in range(len(opening + m1 + m2)):  # one byte at a time
        conn.receive_data((opening + m1 + m2)[i : i + 1])
        ends += [conn.consumed_bytes for _ in drain(conn)]
        assert conn.consumed_bytes <= i + 1
    assert ends == [64, len(opening), len(opening) + len(m1), len(opening) + len(m1) + len(m2)]


def test_byte_by_byte_gives_the_same_events() -> None:
    push = ready_push()
    stream = push_opening() + push.send_message(pattern(300)) + push.send_frames([b"", b"x"])
    conn = ZmtpConnection("PULL")
    conn.initiate()
    events = feed_in_pieces(conn, stream, list(range(len(stream))))
    assert [type(e) for e in events] == [PeerGreeting, PeerReady, Message, Message,
                                         ConnectionClosed]
    assert events[2] == Message((pattern(300),)) and events[3] == Message((b"", b"x"))


# -- commands ---------------------------------------------------------------------------


def test_ping_gets_a_pong_with_the_same_context() -> None:
    push = ready_push()
    push.receive_data(command_frame("PING", b"\x00\x64" + b"abc"))
    assert drain(push) == [Command("PING", b"\x00\x64abc")]
    assert push.data_to_send() == command_frame("PONG", b"abc")
    assert push.data_to_send() == b""


def test_other_commands_are_events() -> None:
    push = ready_push()
    push.receive_data(command_frame("PONG", b"z") + command_frame("SUBSCRIBE", b"topic"))
    assert drain(push) == [Command("PONG", b"z"), Command("SUBSCRIBE", b"topic")]
    assert push.data_to_send() == b""


# -- end of stream ------------------------------------------------------------------------


def test_clean_eof_and_eof_mid_message() -> None:
    pull = ready_pull()
    pull.receive_data(b"")
    assert pull.next_event() == ConnectionClosed(0)
    assert pull.next_event() == ConnectionClosed(0)  # stays closed

    push = ready_push()
    cut = ready_pull()
    stream = push.send_frames([b"abc", pattern(1000)])
    cut.receive_data(stream[:-10])
    assert cut.next_event() is NEED_DATA
    cut.receive_data(b"")
    assert cut.next_event() == ConnectionClosed(len(stream) - 10)


# -- malformed peers -----------------------------------------------------------------------

_READY_PUSH = command_frame("READY", encode_properties({"Socket-Type": b"PUSH"}))


@pytest.mark.parametrize(("peer_bytes", "match"), [
    (b"GET / HTTP/1.1\r\n", "signature"),
    (b"\xff" + b"\x00" * 8 + b"\x00", "ZMTP 1.0"),
    (greeting(version=(2, 0)), "version 2"),
    (greeting()[:12] + b"PLAIN".ljust(20, b"\x00") + greeting()[32:], "PLAIN"),
    (greeting()[:12] + b"CURVE".ljust(20, b"\x00") + greeting()[32:], "CURVE"),
    (greeting()[:12] + b"NU\x00L".ljust(20, b"\x00") + greeting()[32:], "NULL only"),
    (greeting() + command_frame("READY", encode_properties({"Socket-Type": b"PULL"})),
     "PULL cannot talk to PULL"),
    (greeting() + command_frame("READY", encode_properties({"Socket-Type": b"XYZ"})),
     "XYZ"),
    (greeting() + command_frame("READY", b""), "no Socket-Type"),
    (greeting() + command_frame("READY", b"\x0bSocket-Type\x00\x00\x00\x09PU"), "truncated"),
    (greeting() + command_frame("HELLO", b""), "expected the READY"),
    (greeting() + b"\x00\x03abc", "before the peer's READY"),
    (greeting() + command_frame("ERROR", b"\x06denied"), "denied"),
    (greeting() + b"\x04\x00", "malformed command"),
    (greeting() + _READY_PUSH + b"\x80\x00", "reserved"),
    (greeting() + _READY_PUSH + b"\x05\x01\x00", "MORE"),
    (greeting() + _READY_PUSH + b"\x02" + b"\xff" * 8, "top bit"),
    (greeting() + _READY_PUSH + _READY_PUSH, "second READY"),
    (greeting() + _READY_PUSH + command_frame("PING", b"\x00"), "PING"),
    (greeting() + _READY_PUSH + b"\x01\x01a" + command_frame("PONG"), "inside a multipart"),
])
def test_malformed_peer_is_a_remote_protocol_error(peer_bytes: bytes, match: str) -> None:
    conn = ZmtpConnection("PULL")
    conn.initiate()
    conn.receive_data(peer_bytes)
    with pytest.raises(RemoteProtocolError, match=match):
        drain(conn)
    # The error sticks: the connection is dead.
    with pytest.raises(RemoteProtocolError, match=match):
        conn.next_event()


def test_oversize_message_refused_before_it_is_buffered() -> None:
    pull = ZmtpConnection("PULL", max_message_bytes=1000)
    pull.initiate()
    pull.receive_data(push_opening() + frame_header(1001))  # header only, no payload yet
    with pytest.raises(RemoteProtocolError, match="max_message_bytes=1000"):
        drain(pull)
    # Multipart: the cap is on the whole message.
    multi = ZmtpConnection("PULL", max_message_bytes=1000)
    multi.initiate()
    multi.receive_data(push_opening() + frame_header(600, more=True) + b"a" * 600
                       + frame_header(600))
    with pytest.raises(RemoteProtocolError, match="1200 bytes"):
        drain(multi)
    # A message exactly at the cap is fine.
    ok = ZmtpConnection("PULL", max_message_bytes=1000)
    ok.initiate()
    ok.receive_data(push_opening() + frame_header(1000) + b"a" * 1000)
    assert drain(ok)[-1] == Message((b"a" * 1000,))


def test_a_pull_peer_sending_a_message_to_push_is_refused() -> None:
    push = ready_push()
    push.receive_data(b"\x00\x01a")
    with pytest.raises(RemoteProtocolError, match="PULL"):
        drain(push)


@given(st.binary(min_size=1, max_size=300), st.booleans())
def test_garbage_never_crashes(garbage: bytes, after_handshake: bool) -> None:
    conn = ZmtpConnection("PULL", max_message_bytes=10_000)
    conn.initiate()
    conn.receive_data((push_opening() if after_handshake else b"") + garbage)
    try:
        events = drain(conn)
    except RemoteProtocolError:
        return
    conn.receive_data(b"")
    events += drain(conn)
    assert isinstance(events[-1], ConnectionClosed)
    assert all(isinstance(e, (PeerGreeting, PeerReady, Message, Command, ConnectionClosed))
               for e in events)


# -- misuse -------------------------------------------------------------------------------


def test_misuse_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError, match="unknown ZeroMQ socket type"):
        ZmtpConnection("SHOUT")
    conn = ZmtpConnection("PUSH")
    with pytest.raises(LocalProtocolError, match="initiate"):
        conn.next_event()
    with pytest.raises(LocalProtocolError, match="initiate"):
        conn.message_header(1)
    conn.initiate()
    with pytest.raises(LocalProtocolError, match="already"):
        conn.initiate()
    with pytest.raises(LocalProtocolError, match="handshake"):
        conn.message_header(1)
    conn.receive_data(greeting() + command_frame(
        "READY", encode_properties({"Socket-Type": b"PULL"})))
    drain(conn)
    assert conn.ready
    with pytest.raises(LocalProtocolError, match="READY is still queued"):
        conn.message_header(1)
    conn.data_to_send()
    with pytest.raises(LocalProtocolError, match=">= 0"):
        conn.message_header(-1)
    with pytest.raises(LocalProtocolError, match="at least one frame"):
        conn.send_frames([])
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after end of stream"):
        conn.receive_data(b"x")
    with pytest.raises(LocalProtocolError, match="does not send"):
        ready_pull().message_header(1)
    with pytest.raises(LocalProtocolError, match="command name"):
        command_frame("")
    with pytest.raises(TypeError, match="abstract"):
        ProtocolError("x")
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)


# -- against libzmq (pyzmq) -----------------------------------------------------------------


def _blocking_handshake(sock: socket.socket, conn: ZmtpConnection) -> list[object]:
    sock.sendall(conn.initiate())
    events: list[object] = []
    deadline = time.monotonic() + 5
    while not conn.ready:
        assert time.monotonic() < deadline, "handshake took over 5 s"
        ev = conn.next_event()
        if ev is NEED_DATA:
            data = sock.recv(65536)
            conn.receive_data(data)
            continue
        events.append(ev)
        sock.sendall(conn.data_to_send())
    return events


@pytest.mark.integration
def test_libzmq_pull_receives_our_frames() -> None:
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    pull.rcvtimeo = 5000
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            conn = ZmtpConnection("PUSH")
            events = _blocking_handshake(sock, conn)
            assert events[1] == PeerReady("PULL", {"Socket-Type": b"PULL"})
            sizes = [0, 5, 255, 256, 2_000_000]
            for i, n in enumerate(sizes):
                sock.sendall(conn.message_header(n))
                sock.sendall(pattern(n, seed=i))
            sock.sendall(conn.send_frames([b"part1", b"part2"]))
            for i, n in enumerate(sizes):
                assert pull.recv() == pattern(n, seed=i)
            assert pull.recv_multipart() == [b"part1", b"part2"]
    finally:
        pull.close()
        ctx.term()


@pytest.mark.integration
def test_our_pull_decodes_libzmq_push_with_heartbeats() -> None:
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    push.sndtimeo = 5000
    push.setsockopt(zmq.HEARTBEAT_IVL, 50)  # libzmq PINGs every 50 ms
    push.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
    lsock = socket.create_server(("127.0.0.1", 0))
    try:
        port = lsock.getsockname()[1]
        push.connect(f"tcp://127.0.0.1:{port}")
        lsock.settimeout(5)
        sock, _ = lsock.accept()
        with sock:
            sock.settimeout(5)
            conn = ZmtpConnection("PULL", as_server=True)
            events = _blocking_handshake(sock, conn)
            assert events[1].socket_type == "PUSH"
            sizes = [0, 7, 256, 1_500_000]
            for i, n in enumerate(sizes):
                push.send(pattern(n, seed=i))
            got: list[bytes] = []
            pings = 0
            deadline = time.monotonic() + 5
            while (len(got) < len(sizes) or pings == 0) and time.monotonic() < deadline:
                ev = conn.next_event()
                if ev is NEED_DATA:
                    conn.receive_data(sock.recv(1 << 20))
                elif isinstance(ev, Message):
                    got.append(ev.payload)
                elif isinstance(ev, Command) and ev.name == "PING":
                    pings += 1
                    sock.sendall(conn.data_to_send())  # the PONG
            assert got == [pattern(n, seed=i) for i, n in enumerate(sizes)]
            assert pings >= 1
    finally:
        lsock.close()
        push.close()
        ctx.term()


# -- a PUSH and a PULL talking through byte pipes, in any interleaving --------------------


class ZmtpPipe(RuleBasedStateMachine):
    """Bytes cross in arbitrary amounts, messages and PINGs interleave: nothing is lost,
    nothing reordered, every PING gets its PONG."""

    def __init__(self) -> None:
        super().__init__()
        self.push = ZmtpConnection("PUSH")
        self.pull = ZmtpConnection("PULL", as_server=True)
        self.to_pull = bytearray(self.push.initiate())
        self.to_push = bytearray(self.pull.initiate())
        self.pull_ready_sent = False
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.pings: list[bytes] = []
        self.pongs: list[bytes] = []

    def _deliver(self, inbox: bytearray, conn: ZmtpConnection, n: int) -> list[object]:
        chunk = bytes(inbox[:n])
        del inbox[:n]
        if chunk:
            conn.receive_data(chunk)
        return drain(conn)

    @rule(n=st.integers(1, 3000))
    def deliver_to_pull(self, n: int) -> None:
        for ev in self._deliver(self.to_pull, self.pull, n):
            if isinstance(ev, Message):
                self.received.append(ev.payload)
            elif isinstance(ev, Command):
                assert ev.name == "PONG"
                self.pongs.append(ev.body)
        owed = self.pull.data_to_send()  # READY
        if owed:
            self.to_push += owed
            self.pull_ready_sent = True

    @rule(n=st.integers(1, 3000))
    def deliver_to_push(self, n: int) -> None:
        self._deliver(self.to_push, self.push, n)
        self.to_pull += self.push.data_to_send()  # READY, PONGs: whole commands

    @precondition(lambda self: self.push.ready)
    @rule(size=frame_sizes(), seed=st.integers(0, 250))
    def send(self, size: int, seed: int) -> None:
        self.to_pull += self.push.data_to_send()
        payload = pattern(size, seed)
        self.to_pull += self.push.message_header(size) + payload
        self.sent.append(payload)

    @precondition(lambda self: self.pull_ready_sent)
    @rule(context=st.binary(max_size=16))
    def ping(self, context: bytes) -> None:
        self.to_push += command_frame("PING", b"\x00\x05" + context)
        self.pings.append(context)

    @invariant()
    def nothing_lost_nothing_reordered(self) -> None:
        assert self.received == self.sent[: len(self.received)]
        assert self.pongs == self.pings[: len(self.pongs)]

    def teardown(self) -> None:
        for _ in range(4):  # PONGs answer PINGs, so a few rounds drain both pipes
            self.deliver_to_push(len(self.to_push) or 1)
            self.deliver_to_pull(len(self.to_pull) or 1)
        assert self.received == self.sent
        assert self.pongs == self.pings


TestZmtpPipe = ZmtpPipe.TestCase
