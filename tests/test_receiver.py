"""The receiver over real loopback sockets: pyzmq, plain length-prefixed TCP, pynng."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from simstream.errors import UsageError
from simstream.pipeline.receiver import RawMessage, StreamReceiver, open_receiver
from simstream.runner.procs import free_port

pytestmark = pytest.mark.integration


def url() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def recv_n(rx, n: int, limit_s: float = 10.0) -> list[RawMessage]:
    out: list[RawMessage] = []
    deadline = time.monotonic() + limit_s
    while len(out) < n and time.monotonic() < deadline:
        m = rx.recv(0.05)
        if m is not None:
            out.append(m)
    return out


class TestZmq:
    def test_bind_receives_in_order_with_arrival_and_size(self) -> None:
        import zmq

        u = url()
        rx = open_receiver("zmq", u, "bind", 1000)
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        try:
            push.connect(u)
            for i in range(3):
                push.send(bytes([i]) * (10 + i))
            msgs = recv_n(rx, 3)
            assert [bytes(m.payload) for m in msgs] == [bytes([i]) * (10 + i) for i in range(3)]
            assert [m.nbytes for m in msgs] == [10, 11, 12]
            assert msgs[0].t_arrival <= msgs[1].t_arrival <= msgs[2].t_arrival
            assert rx.stats.messages == 3 and rx.stats.bytes == 33
            assert rx.recv(0.01) is None
        finally:
            push.close(linger=0)
            ctx.term()
            rx.close()

    def test_oversize_is_refused_at_its_header_not_buffered(self) -> None:
        """ZMQ_MAXMSGSIZE from max_message_bytes: libzmq drops the connection that
        announces a bigger message (never buffering it); other peers go on."""
        import zmq

        u = url()
        rx = open_receiver("zmq", u, "bind", 100)
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        try:
            push.connect(u)
            push.send(b"x" * 500)
            deadline = time.monotonic() + 10
            while rx.stats.disconnects == 0 and time.monotonic() < deadline:
                assert rx.recv(0.05) is None
            assert rx.stats.disconnects >= 1 and rx.stats.messages == 0
            other = ctx.socket(zmq.PUSH)
            other.connect(u)
            other.send(b"ok")
            (ok,) = recv_n(rx, 1)
            other.close(linger=0)
            assert not ok.oversize and bytes(ok.payload) == b"ok"
        finally:
            push.close(linger=0)
            ctx.term()
            rx.close()

    def test_connect_role_reaches_a_binding_pusher(self) -> None:
        import zmq

        u = url()
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.bind(u)
        rx = open_receiver("zmq", u, "connect", 1000)
        try:
            push.send(b"hello")
            (m,) = recv_n(rx, 1)
            assert bytes(m.payload) == b"hello"
        finally:
            rx.close()
            push.close(linger=0)
            ctx.term()

    def test_address_in_use_is_a_usage_error(self) -> None:
        u = url()
        rx = open_receiver("zmq", u, "bind", 1000)
        try:
            with pytest.raises(UsageError, match="address in use"):
                open_receiver("zmq", u, "bind", 1000)
        finally:
            rx.close()


def lp(payload: bytes) -> bytes:
    return struct.pack(">Q", len(payload)) + payload


class TestTcp:
    def test_messages_split_anywhere_arrive_whole(self) -> None:
        u = url()
        rx = open_receiver("tcp", u, "bind", 1000)
        port = int(u.rsplit(":", 1)[1])
        try:
            with socket.create_connection(("127.0.0.1", port)) as s:
                wire = lp(b"abc") + lp(b"") + lp(b"x" * 300)
                for i in range(len(wire)):  # one byte at a time
                    s.sendall(wire[i:i + 1])
                msgs = recv_n(rx, 3)
            assert [bytes(m.payload) for m in msgs] == [b"abc", b"", b"x" * 300]
        finally:
            rx.close()

    def test_oversize_is_skipped_by_its_declared_length_and_the_stream_stays_in_step(self) -> None:
        u = url()
        rx = open_receiver("tcp", u, "bind", 100)
        port = int(u.rsplit(":", 1)[1])
        try:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(lp(b"H" * 50 + b"y" * 5000) + lp(b"after"))
                big, after = recv_n(rx, 2)
            assert big.oversize and big.nbytes == 5050 and bytes(big.payload)[:50] == b"H" * 50
            assert bytes(after.payload) == b"after"
        finally:
            rx.close()

    def test_several_connections_and_a_cut_message(self) -> None:
        u = url()
        rx = open_receiver("tcp", u, "bind", 1000)
        port = int(u.rsplit(":", 1)[1])
        try:
            a = socket.create_connection(("127.0.0.1", port))
            b = socket.create_connection(("127.0.0.1", port))
            a.sendall(lp(b"from-a"))
            b.sendall(lp(b"from-b"))
            got = {bytes(m.payload) for m in recv_n(rx, 2)}
            assert got == {b"from-a", b"from-b"}
            b.sendall(struct.pack(">Q", 100) + b"only part")
            b.close()
            a.close()
            deadline = time.monotonic() + 5
            while rx.stats.cut == 0 and time.monotonic() < deadline:
                rx.recv(0.02)
            assert rx.stats.cut == 1 and rx.stats.connections == 2
            assert rx.stats.messages == 2
        finally:
            rx.close()

    def test_connect_role(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as srv:
            port = srv.getsockname()[1]
            rx = open_receiver("tcp", f"tcp://127.0.0.1:{port}", "connect", 1000)
            try:
                assert rx.recv(0.01) is None  # connects on first use
                conn, _ = srv.accept()
                with conn:
                    conn.sendall(lp(b"served"))
                    (m,) = recv_n(rx, 1)
                assert bytes(m.payload) == b"served"
            finally:
                rx.close()

    def test_address_in_use(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as srv:
            port = srv.getsockname()[1]
            with pytest.raises(UsageError, match="address in use"):
                StreamReceiver("tcp", f"tcp://127.0.0.1:{port}", "bind", 10)


def nng_send(u: str, payloads: list[bytes]) -> threading.Thread:
    """Push0 in a thread: its dial and sends wait for the handshake our loop does."""
    import pynng

    def body() -> None:
        with pynng.Push0(send_timeout=5000) as push:
            push.dial(u, block=False)
            for p in payloads:
                push.send(p)
            time.sleep(0.2)  # let the last message leave before the socket closes

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


class TestNng:
    def test_pynng_push0_to_our_pull(self) -> None:
        u = url()
        rx = open_receiver("nng", u, "bind", 10**6)
        try:
            t = nng_send(u, [b"n" * (1000 * (i + 1)) for i in range(3)])
            msgs = recv_n(rx, 3)
            t.join(10)
            assert [m.nbytes for m in msgs] == [1000, 2000, 3000]
        finally:
            rx.close()

    def test_oversize_over_nng(self) -> None:
        u = url()
        rx = open_receiver("nng", u, "bind", 100)
        try:
            t = nng_send(u, [b"z" * 1000, b"small"])
            big, small = recv_n(rx, 2)
            t.join(10)
            assert big.oversize and big.nbytes == 1000
            assert bytes(small.payload) == b"small"
        finally:
            rx.close()

    def test_a_peer_that_is_not_nng_is_dropped(self) -> None:
        u = url()
        rx = open_receiver("nng", u, "bind", 1000)
        port = int(u.rsplit(":", 1)[1])
        try:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\n\r\n")
                deadline = time.monotonic() + 5
                while rx.stats.protocol_errors == 0 and time.monotonic() < deadline:
                    rx.recv(0.02)
            assert rx.stats.protocol_errors == 1 and rx.stats.messages == 0
        finally:
            rx.close()


def test_check_bindable_finds_a_port_in_use_without_keeping_it() -> None:
    from simstream.pipeline.receiver import check_bindable

    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        with pytest.raises(UsageError, match="address in use"):
            check_bindable(f"tcp://127.0.0.1:{port}")
    free = free_port()
    check_bindable(f"tcp://127.0.0.1:{free}")
    check_bindable(f"tcp://127.0.0.1:{free}")  # the probe released it


def test_zmq_receiver_sets_the_receive_high_water_mark() -> None:
    import zmq

    from simstream.pipeline.config import consumer_config
    from simstream.pipeline.receiver import open_receiver
    from simstream.runner.procs import free_port

    assert consumer_config().rcvhwm == 1000  # libzmq's default, as production runs
    url = f"tcp://127.0.0.1:{free_port()}"
    rx = open_receiver("zmq", url, "bind", 1 << 20, rcvhwm=7)
    try:
        assert rx._sock.getsockopt(zmq.RCVHWM) == 7  # type: ignore[attr-defined]
    finally:
        rx.close()
