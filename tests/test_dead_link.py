"""transport.dead_link_ms: a connection whose peer answers nothing is dropped and
re-established, one whose peer pushes back with a shut window is not."""

from __future__ import annotations

import socket
import struct
import threading

import trio

from simstream.transport import _silence, open_sender


def _info(retransmits: int, probes: int, last_ack_ms: int) -> bytes:
    info = bytearray(60)
    info[2], info[3] = retransmits, probes
    struct.pack_into("I", info, 56, last_ack_ms)
    return bytes(info)


def test_silence_needs_unanswered_probes_and_a_long_quiet() -> None:
    assert _silence(_info(3, 0, 1500), 1000) == 1.5  # retransmissions unanswered (cut)
    assert _silence(_info(0, 2, 1200), 1000) == 1.2  # probes unanswered (cut while idle)
    # a peer that answers each zero-window probe: one outstanding at most, however long
    assert _silence(_info(0, 1, 60_000), 1000) is None
    assert _silence(_info(5, 5, 900), 1000) is None  # not quiet long enough yet
    assert _silence(b"\0" * 20, 1000) is None  # short struct: nothing to judge


def test_backpressure_longer_than_the_bound_keeps_the_connection() -> None:
    """The consumer reads nothing for 2 s (its window shuts; the kernel keeps answering
    the sender's zero-window probes) against a 300 ms bound: the message is delivered
    on the first connection."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]
    got: list[int] = []
    payload = 8 << 20

    def consumer() -> None:
        conn, _ = srv.accept()
        conn.settimeout(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        threading.Event().wait(2.0)  # busy: nothing read, the window shuts
        n = 0
        while chunk := conn.recv(1 << 20):
            n += len(chunk)
        got.append(n)
        conn.close()

    t = threading.Thread(target=consumer, daemon=True)
    t.start()

    async def main() -> tuple[str, int]:
        events: list[str] = []
        async with open_sender("tcp", "client", f"tcp://127.0.0.1:{port}", dead_link_ms=300,
                               on_event=lambda name, f: events.append(name)) as sender:
            with trio.fail_after(20):
                report = await sender.send_message(bytes(payload))
            assert "disconnected" not in events, events
            return report.outcome, sender.connects

    outcome, connects = trio.run(main)
    t.join(timeout=20)
    srv.close()
    assert (outcome, connects) == ("delivered", 1)
    assert got == [payload + 8]  # tcp framing: an 8-byte length, then the message
