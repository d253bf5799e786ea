"""Transport unit tests: in-process socket pairs, a sans-IO PULL peer in a trio task, and
virtual time (MockClock), so backoff, pacing and timeouts are asserted exactly."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from simstream.codec import Scatter
from simstream.errors import UsageError
from simstream.transport import ConnectTimeout, Sender, SendReport, open_sender
from simstream.wire import (
    NEED_DATA,
    Command,
    ConnectionClosed,
    Message,
    PeerReady,
    new_connection,
)
from simstream.wire.zmtp import command_frame, encode_properties, greeting

URL = "tcp://127.0.0.1:12321"


def run(fn: Callable[[], Any]) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


class Dialer:
    """Hands the sender one end of a fresh socket pair per dial; the other end goes to
    the test through ``peers``. ``refuse`` dials fail first; ``hang`` ones never return."""

    def __init__(self, refuse: int = 0, hang: bool = False) -> None:
        self.refuse = refuse
        self.hang = hang
        self.dials = 0
        self.dial_times: list[float] = []
        self.peers_in, self.peers = trio.open_memory_channel[socket.socket](10)
        self.open: list[socket.socket] = []

    async def __call__(self) -> socket.socket:
        self.dials += 1
        self.dial_times.append(trio.current_time())
        if self.hang:
            await trio.sleep_forever()
        if self.refuse:
            self.refuse -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        self.open.append(theirs)
        self.peers_in.send_nowait(theirs)
        return ours

    def close_all(self) -> None:
        for s in self.open:
            s.close()


class Peer:
    """The consumer side, sans-IO: decodes what the sender writes."""

    def __init__(self, kind: str, sock: socket.socket, socket_type: str = "PULL") -> None:
        self.kind = kind
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.conn = new_connection(kind, socket_type, as_server=True)
        self.events: list[object] = []
        self.closed_at: float | None = None
        self.received_bytes = 0
        self._scope = trio.CancelScope()

    @property
    def messages(self) -> list[bytes]:
        return [e.payload for e in self.events if isinstance(e, Message)]

    async def serve(self, *, max_bytes: int | None = None, opening: bytes | None = None) -> None:
        """Answer the handshake, decode until the sender closes (or, with ``max_bytes``,
        close our side after reading that many bytes: a consumer going away)."""
        with self._scope:
            try:
                await self._serve(max_bytes, opening)
            finally:
                self.closed_at = trio.current_time()
                self.sock.close()

    def quit(self) -> None:
        """The consumer process goes away: stop reading, close the socket."""
        self._scope.cancel()

    async def _serve(self, max_bytes: int | None, opening: bytes | None) -> None:
        first = self.conn.initiate() if opening is None else opening
        if first:
            await self.sock.send(first)
        if opening is not None:
            self.conn.initiate()
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA:
                limit = 65536 if max_bytes is None else min(65536, max_bytes - self.received_bytes)
                if limit <= 0:
                    break
                try:
                    data = await self.sock.recv(limit)
                except ConnectionResetError:
                    data = b""
                self.received_bytes += len(data)
                self.conn.receive_data(data)
                continue
            self.events.append(ev)
            out = self.conn.data_to_send()
            if out and opening is None:
                await self.sock.send(out)
            if isinstance(ev, ConnectionClosed):
                break

    async def send(self, data: bytes) -> None:
        await self.sock.send(data)


def make_sender(dialer: Dialer, kind: str = "zmq", **kw: Any) -> Sender:
    return Sender(kind, "client", URL, dial=dialer, **kw)


def test_usage_errors_name_the_bad_value() -> None:
    with pytest.raises(UsageError, match="'udp'"):
        Sender("udp", "client", URL)
    with pytest.raises(UsageError, match="'both'"):
        Sender("zmq", "both", URL)
    with pytest.raises(UsageError, match="not a tcp://HOST:PORT"):
        Sender("zmq", "client", "http://x:1")
    with pytest.raises(UsageError, match="backoff_ms"):
        Sender("zmq", "client", URL, backoff_ms=(500.0, 100.0))


@pytest.mark.parametrize("kind", ["zmq", "nng", "tcp"])
def test_messages_arrive_intact_and_reports_count_framing(kind: str) -> None:
    header = {"zmq": lambda n: 2 if n < 256 else 9, "nng": lambda n: 8, "tcp": lambda n: 8}[kind]

    async def main() -> None:
        dialer = Dialer()
        async with serving(dialer, kind) as peers:
            sender = make_sender(dialer, kind)
            await sender.start()
            payloads = [b"", b"x", bytes(255), bytes(range(256)), bytes(100_000)]
            reports = [await sender.send_message(p) for p in payloads]
            await sender.close()
        assert [r.outcome for r in reports] == ["delivered"] * 5
        assert [r.wire_bytes for r in reports] == [header(len(p)) + len(p) for p in payloads]
        assert all(r.t_first_byte <= r.t_last_byte for r in reports)
        assert peers[0].messages == payloads
        assert peers[0].events[-1] == ConnectionClosed(0)  # a graceful close
        dialer.close_all()

    run(main)


async def _serve_first(dialer: Dialer, kind: str, nursery: trio.Nursery, peers: list[Peer],
                       **kw: Any) -> None:
    """Serve every connection the sender dials, each with a new Peer."""
    async for sock in dialer.peers:
        peer = Peer(kind, sock)
        peers.append(peer)
        nursery.start_soon(lambda p=peer: p.serve(**kw))


@asynccontextmanager
async def serving(dialer: Dialer, kind: str = "zmq") -> AsyncIterator[list[Peer]]:
    """A consumer for every dial; on exit, waits until each has seen end of stream."""
    peers: list[Peer] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_first, dialer, kind, nursery, peers)
        yield peers
        dialer.peers_in.close()


def test_connect_retries_with_exponential_backoff_in_virtual_time() -> None:
    async def main() -> None:
        events: list[tuple[str, dict[str, Any]]] = []
        dialer = Dialer(refuse=5)
        sender = make_sender(dialer, backoff_ms=(100.0, 400.0),
                             on_event=lambda n, f: events.append((n, f)))
        async with serving(dialer):
            await sender.start()
            assert trio.current_time() == pytest.approx(0.1 + 0.2 + 0.4 + 0.4 + 0.4)
            await sender.close()
        assert dialer.dial_times == pytest.approx([0, 0.1, 0.3, 0.7, 1.1, 1.5])
        retries = [f for n, f in events if n == "connect_retry"]
        assert [f["attempt"] for f in retries] == [1, 2, 3, 4, 5]
        assert [f["retry_in_s"] for f in retries] == pytest.approx([0.1, 0.2, 0.4, 0.4, 0.4])
        assert "ECONNREFUSED" in retries[0]["error"] and retries[0]["url"] == URL
        assert [n for n, _ in events][-2:] == ["connected", "disconnected"]
        dialer.close_all()

    run(main)


@pytest.mark.parametrize("hang", [False, True])
def test_connect_timeout_at_exactly_connect_timeout_s(hang: bool) -> None:
    async def main() -> None:
        dialer = Dialer(refuse=1000, hang=hang)
        sender = make_sender(dialer, connect_timeout_s=2.5)
        with pytest.raises(ConnectTimeout, match=r"could not reach the zmq peer at "
                           r"tcp://127.0.0.1:12321 within 2.5 s") as err:
            await sender.start()
        assert trio.current_time() == 2.5
        if not hang:
            assert "ECONNREFUSED" in str(err.value)
            assert dialer.dials == 5  # at 0, 0.1, 0.3, 0.7, 1.5; the next would be 3.1

    run(main)


def test_wrong_peer_socket_type_is_retried_then_reported() -> None:
    async def main() -> None:
        dialer = Dialer()
        sender = make_sender(dialer, connect_timeout_s=1.0)
        bad_opening = greeting() + command_frame(
            "READY", encode_properties({"Socket-Type": b"PUSH"}))

        async def bad_peers() -> None:
            async for sock in dialer.peers:
                nursery.start_soon(lambda s=sock: Peer("zmq", s).serve(opening=bad_opening))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(bad_peers)
            with pytest.raises(ConnectTimeout, match="PUSH cannot talk to PUSH"):
                await sender.start()
            nursery.cancel_scope.cancel()
        assert dialer.dials >= 3
        dialer.close_all()

    run(main)


def test_gate_is_awaited_before_each_chunk() -> None:
    async def main() -> None:
        dialer = Dialer()
        gated: list[tuple[float, int]] = []

        async def pacer(nbytes: int) -> None:
            gated.append((trio.current_time(), nbytes))
            await trio.sleep(1.0)

        async with serving(dialer, "zmq") as peers:
            sender = make_sender(dialer)
            await sender.start()
            payload = bytes(range(250)) * 10  # 2500 bytes + 9 of framing
            report = await sender.send_message(payload, gate=pacer, chunk_bytes=1000)
            await sender.close()
        assert gated == [(0.0, 1000), (1.0, 1000), (2.0, 509)]
        assert report.wire_bytes == 2509 and report.outcome == "delivered"
        assert peers[0].messages == [payload]
        dialer.close_all()

    run(main)


def test_a_scatter_payload_goes_out_as_one_message_in_any_chunking() -> None:
    """A pooled message's pieces (simstream.codec.Scatter) are written as they are:
    whole, paced in chunks that cross the pieces' borders, and cut part-way."""
    parts = [b"head-", bytes(range(256)) * 7, b"", b"-tail"]
    whole = b"".join(parts)  # 1802 bytes: 9 of zmq framing

    async def main() -> None:
        dialer = Dialer()
        gated: list[int] = []

        async def pacer(nbytes: int) -> None:
            gated.append(nbytes)
            await trio.sleep(0.01)

        async with serving(dialer, "zmq") as peers:
            sender = make_sender(dialer)
            await sender.start()
            r1 = await sender.send_message(Scatter(parts))
            r2 = await sender.send_message(Scatter(parts), gate=pacer, chunk_bytes=100)
            r3 = await sender.send_message(Scatter(parts), cut_after_bytes=700)
            await sender.close()
        assert (r1.outcome, r2.outcome, r3.outcome) == ("delivered", "delivered", "cut")
        assert r1.wire_bytes == r2.wire_bytes == 1811 and r3.wire_bytes == 700
        assert gated == [100] * 18 + [11]
        assert peers[0].messages == [whole, whole]
        assert peers[0].events[-1] == ConnectionClosed(700)
        dialer.close_all()

    run(main)


def test_sndbuf_bytes_sets_each_connections_send_buffer() -> None:
    try:
        with open("/proc/sys/net/core/wmem_max") as fh:
            wmem_max = int(fh.read())
    except OSError:
        pytest.skip("no /proc/sys/net/core/wmem_max: Linux's doubling cannot be predicted")
    want = 48 * 1024
    mine: list[socket.socket] = []

    class Keeping(Dialer):
        async def __call__(self) -> socket.socket:
            sock = await super().__call__()
            mine.append(sock)
            return sock

    async def main() -> None:
        dialer = Keeping()
        async with serving(dialer):
            sender = make_sender(dialer, sndbuf_bytes=want)
            await sender.start()
            got = mine[0].getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            await sender.close()
        assert got == 2 * min(want, wmem_max)  # Linux doubles it for its bookkeeping
        dialer.close_all()

    run(main)


def test_cut_after_bytes_then_reconnect_after_backoff() -> None:
    async def main() -> None:
        dialer = Dialer()
        events: list[str] = []
        async with serving(dialer, "zmq") as peers:
            sender = make_sender(dialer, on_event=lambda n, f: events.append(n))
            await sender.start()
            r1 = await sender.send_message(b"before")
            r2 = await sender.send_message(bytes(5000), cut_after_bytes=1234)
            assert not sender.connected
            t_cut = trio.current_time()
            r3 = await sender.send_message(b"after")
            assert dialer.dial_times[1] == pytest.approx(t_cut + 0.1)  # reconnect interval
            await sender.close()
        assert (r1.outcome, r2.outcome, r3.outcome) == ("delivered", "cut", "delivered")
        assert r2.wire_bytes == 1234 and "1234 of 5009" in r2.error
        assert peers[0].messages == [b"before"]
        assert peers[0].events[-1] == ConnectionClosed(1234)  # the cut message, part-way
        assert peers[1].messages == [b"after"]
        assert events.count("connected") == 2
        dialer.close_all()

    run(main)


def test_peer_going_away_mid_message_is_lost_then_reconnects() -> None:
    async def main() -> None:
        dialer = Dialer()
        peers: list[Peer] = []

        async def serve() -> None:
            first = True
            async for sock in dialer.peers:
                peer = Peer("zmq", sock)
                peers.append(peer)
                # The first consumer dies after 300 kB of a 4 MB message.
                kw = {"max_bytes": 64 + 28 + 300_000} if first else {}
                first = False
                nursery.start_soon(lambda p=peer, kw=kw: p.serve(**kw))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            sender = make_sender(dialer)
            await sender.start()
            big = bytes(4_000_000)
            lost = await sender.send_message(big)
            again = await sender.send_message(b"next")
            await sender.close()
            dialer.peers_in.close()  # no more dials: the serve loop ends, peers finish
        assert lost.outcome == "lost" and lost.error
        assert 0 < lost.wire_bytes < len(big) + 9
        assert again.outcome == "delivered"
        assert peers[1].messages == [b"next"]
        assert dialer.dials == 2
        dialer.close_all()

    run(main)


def test_peer_closing_between_messages_is_noticed_before_the_next_send() -> None:
    async def main() -> None:
        dialer = Dialer()
        async with serving(dialer, "nng") as peers:
            sender = make_sender(dialer, "nng")
            await sender.start()
            await sender.send_message(b"one")
            await trio.sleep(0.01)
            peers[0].quit()  # the consumer quits while the producer is idle
            await trio.sleep(0.01)
            assert not sender.connected  # the background reader saw it
            report = await sender.send_message(b"two")
            await sender.close()
        assert report.outcome == "delivered" and report.error is None
        assert peers[1].messages == [b"two"]
        dialer.close_all()

    run(main)


def test_ping_gets_a_pong_between_messages_never_inside_one() -> None:
    async def main() -> None:
        dialer = Dialer()
        async with serving(dialer, "zmq") as peers:
            sender = make_sender(dialer)
            await sender.start()
            await trio.sleep(0.01)
            # Idle: the reader answers at once.
            await peers[0].send(command_frame("PING", b"\x00\x10idle"))
            await trio.sleep(0.01)
            assert peers[0].events[-1] == Command("PONG", b"idle")

            # Mid-message: the PONG waits until the message is complete.
            async def slow_gate(nbytes: int) -> None:
                await trio.sleep(0.5)

            async def ping_during_send() -> None:
                await trio.sleep(0.75)
                await peers[0].send(command_frame("PING", b"\x00\x10busy"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ping_during_send)
                await sender.send_message(bytes(3000), gate=slow_gate, chunk_bytes=1000)
            await trio.sleep(0.01)
            await sender.close()
        tail = peers[0].events[-3:]
        assert tail == [Message((bytes(3000),)), Command("PONG", b"busy"), ConnectionClosed(0)]
        dialer.close_all()

    run(main)


def test_backpressure_blocks_in_the_kernel_and_is_timed() -> None:
    async def main() -> None:
        dialer = Dialer()
        peers: list[Peer] = []
        async with trio.open_nursery() as nursery:
            sender = make_sender(dialer, "tcp")
            await sender.start()
            sock = await dialer.peers.receive()

            async def late_reader() -> None:
                await trio.sleep(5.0)  # the consumer is busy; TCP buffers fill
                peer = Peer("tcp", sock)
                peers.append(peer)
                await peer.serve()

            nursery.start_soon(late_reader)
            report = await sender.send_message(bytes(3_000_000))
            assert trio.current_time() >= 5.0  # the send waited for the reader
            await sender.close()
        assert report.outcome == "delivered" and report.socket_wait_s > 0
        assert peers[0].messages == [bytes(3_000_000)]
        dialer.close_all()

    run(main)


def test_reset_aborts_and_reconnects() -> None:
    async def main() -> None:
        dialer = Dialer()
        async with serving(dialer, "zmq") as peers:
            sender = make_sender(dialer)
            await sender.start()
            await sender.send_message(b"a")
            await sender.reset()
            assert sender.connected and sender.connects == 2
            await sender.send_message(b"b")
            await sender.close()
        assert peers[0].messages == [b"a"] and peers[1].messages == [b"b"]
        dialer.close_all()

    run(main)


def test_reset_during_a_stalled_send_ends_it_cut() -> None:
    async def main() -> None:
        dialer = Dialer()
        async with trio.open_nursery() as nursery:
            sender = make_sender(dialer, "tcp")
            await sender.start()
            stalled_peer = await dialer.peers.receive()  # never reads
            reports: list[SendReport] = []

            async def send() -> None:
                reports.append(await sender.send_message(bytes(5_000_000)))

            nursery.start_soon(send)
            await trio.sleep(1.0)
            assert not reports  # stuck on a full buffer
            await sender.reset()
            await trio.sleep(0.01)
            await sender.close()
            stalled_peer.close()
        assert reports[0].outcome == "cut" and 0 < reports[0].wire_bytes < 5_000_008
        dialer.close_all()

    run(main)


def test_slow_close_waits_then_sends_fin() -> None:
    async def main() -> None:
        dialer = Dialer()
        async with serving(dialer, "zmq") as peers:
            sender = make_sender(dialer)
            await sender.start()
            await sender.send_message(b"last")
            t0 = trio.current_time()
            await sender.close(delay_s=2.0)
            await trio.sleep(0.01)
            with pytest.raises(trio.ClosedResourceError):
                await sender.send_message(b"too late")
        assert peers[0].closed_at == pytest.approx(t0 + 2.0, abs=0.02)
        assert peers[0].events[-2:] == [Message((b"last",)), ConnectionClosed(0)]
        dialer.close_all()

    run(main)


def test_async_with_form_closes_and_await_form_works() -> None:
    async def main() -> None:
        dialer = Dialer()
        async with serving(dialer, "tcp") as peers:
            opener = open_sender("tcp", "client", URL)
            opener._sender._dial = dialer  # the socket pair instead of TCP
            async with opener as sender:
                assert sender.connected and sender.kind == "tcp" and sender.role == "client"
                await sender.send_message(b"in the block")
            assert not sender.connected
            await trio.sleep(0.01)

            opener = open_sender("tcp", "client", URL)
            opener._sender._dial = dialer
            sender = await opener
            await sender.send_message(memoryview(b"awaited"))
            await sender.close()
        assert peers[0].events == [Message((b"in the block",)), ConnectionClosed(0)]
        assert peers[1].events == [Message((b"awaited",)), ConnectionClosed(0)]
        dialer.close_all()

    run(main)


def test_server_role_handshake_refusals_are_reported_and_the_next_peer_served() -> None:
    async def main() -> None:
        dialer = Dialer()
        events: list[tuple[str, dict[str, Any]]] = []
        sender = Sender("zmq", "server", URL, dial=dialer, connect_timeout_s=10,
                        on_event=lambda n, f: events.append((n, f)))
        await sender.start()  # no bind with an injected dial; returns at once
        assert not sender.connected
        peers: list[Peer] = []

        async def serve() -> None:
            bad = greeting()[:12] + b"CURVE".ljust(20, b"\x00") + greeting()[32:]
            sock = await dialer.peers.receive()
            nursery.start_soon(lambda: Peer("zmq", sock).serve(opening=bad))
            sock = await dialer.peers.receive()
            peers.append(Peer("zmq", sock))
            nursery.start_soon(peers[0].serve)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            report = await sender.send_message(b"to the second peer")
            await sender.close()
        assert report.outcome == "delivered"
        assert peers[0].messages == [b"to the second peer"]
        failed = [f for n, f in events if n == "handshake_failed"]
        assert len(failed) == 1 and "CURVE" in failed[0]["error"]
        assert any(isinstance(e, PeerReady) for e in peers[0].events)
        dialer.close_all()

    run(main)


def test_a_send_cancelled_part_way_drops_the_connection_so_framing_stays_intact() -> None:
    async def main() -> None:
        dialer = Dialer()
        async with serving(dialer, "zmq") as peers:
            sender = make_sender(dialer)
            await sender.start()

            async def slow_gate(nbytes: int) -> None:
                await trio.sleep(1.0)

            with trio.move_on_after(2.5):  # the emitter gives up on this batch
                await sender.send_message(bytes(10_000), gate=slow_gate, chunk_bytes=1000)
            assert not sender.connected
            report = await sender.send_message(b"next batch")
            await sender.close()
        assert report.outcome == "delivered"
        assert peers[0].messages == [] and peers[0].events[-1] == ConnectionClosed(2000)
        assert peers[1].messages == [b"next batch"]
        # Cancelled before any byte went out: the connection is still good.
        dialer2 = Dialer()
        async with serving(dialer2, "zmq") as peers2:
            sender = make_sender(dialer2)
            await sender.start()
            with trio.move_on_after(0.5):
                await sender.send_message(bytes(10_000), gate=slow_gate, chunk_bytes=1000)
            assert sender.connected
            await sender.send_message(b"same connection")
            await sender.close()
        assert peers2[0].messages == [b"same connection"]
        dialer.close_all()
        dialer2.close_all()

    run(main)
