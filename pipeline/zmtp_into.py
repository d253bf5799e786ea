"""The fast layout's zmq receiver: each message read once, straight into host memory.

A zmq PULL that speaks ZMTP 3.x (the NULL mechanism, what libzmq and simstream's
emitter send) itself, so that a message's body is read with ``recv_into`` into a
buffer from ``alloc`` (the engine's host pool: pinned on CUDA) instead of into
libzmq's own buffer first. The decoder then finds the detector data inside that
buffer and, when its bytes lie back to back (uncompressed HDF5 or npz), hands the
engine a view of it: between the socket and the H2D each byte is copied once, by
the kernel (``pipeline.decode.Decoder.parse(payload, release=...)``).

Same shape as the other receivers (``recv(timeout_s) -> RawMessage | None``,
``close()``, ``stats``); bind role only. Per connection: the peer's greeting and
READY are checked (a peer that is not PUSH, or not ZMTP 3, is dropped and counted
as a protocol error), our greeting and READY (Socket-Type PULL) sent; then frames.
A PING gets its PONG; other commands are read past. A message over
``max_message_bytes`` ends its connection at the size header, as libzmq's
MAXMSGSIZE does (counted under ``oversize`` and ``disconnects``); a multi-frame
message is read whole and handed over as a reject (LCLStreamer sends one frame per
message), its head kept for quarantine. A connection that closes part-way through
a message, or stalls there (no byte for ``stall_s``; a read that got some bytes
and then nothing returns them after ``stall_s`` and the next read waits as long
again, so a stall is found after ``stall_s`` to twice that), is dropped and
counted under ``cut``. Message bodies are read with one ``MSG_WAITALL`` call each
on a blocking socket: the receiver thread holds the GIL once per message, not once
per socket buffer.

``RawMessage.release`` returns a message's buffer to the pool: whoever ends up
holding the message calls it once (the batch's release after its H2D, or the
caller after a quarantine).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from simstream.clock import now
from simstream.profile import split_url
from simstream.wire.zmtp import (
    FLAG_COMMAND,
    FLAG_LONG,
    FLAG_MORE,
    GREETING_SIZE,
    SIGNATURE,
    command_frame,
    encode_properties,
    greeting,
    parse_properties,
)

from .receiver import HEAD_KEEP, RawMessage, Receiver, ReceiverStats, _bind_error, _keepalive

__all__ = ["IntoReceiver"]

log = logging.getLogger("pipeline.zmtp_into")

Alloc = Callable[[tuple[int, ...], Any], tuple[np.ndarray, Callable[[], None]]]

#: the handshake of a new connection must be over within this long
HANDSHAKE_S = 10.0
_U64 = struct.Struct(">Q")
#: the longest command body read (READY metadata, PING context)
_MAX_COMMAND = 1 << 16


class _Drop(Exception):
    """The connection ends here; ``kind`` names the counter (cut, protocol, closed)."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind


def _plain_alloc(shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Callable[[], None]]:
    return np.empty(shape, dtype), lambda: None


class IntoReceiver(Receiver):
    """ZMTP PULL bound at ``url``; message bodies read into ``alloc((n,), uint8)``.

    ``waitall`` False reads what each socket buffer holds per call (the way before
    MSG_WAITALL; kept for comparison, ``bench/bench_fast_receive.py``)."""

    def __init__(self, url: str, max_message_bytes: int, alloc: Alloc | None = None, *,
                 clock: Callable[[], float] = now, rcvbuf: int | None = None,
                 stall_s: float = 30.0, waitall: bool = True) -> None:
        self.url = url
        self.waitall = waitall
        self.max_message_bytes = max_message_bytes
        self.alloc = alloc or _plain_alloc
        self.clock = clock
        self.rcvbuf = rcvbuf
        self.stall_s = stall_s
        self.stats = ReceiverStats()
        host, port = split_url(url)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if rcvbuf is not None:
                # on the listener, so that accepted connections have it from their
                # handshake on (the window scale is agreed there)
                self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._lsock.bind((host.strip("[]"), port))
            self._lsock.listen(64)
        except OSError as exc:
            self._lsock.close()
            raise _bind_error(url, exc) from None
        self._lsock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._lsock, selectors.EVENT_READ)
        self._conns: dict[socket.socket, str] = {}

    # -- the Receiver surface ------------------------------------------------------
    def recv(self, timeout_s: float) -> RawMessage | None:
        t_wait = now()
        events = self._sel.select(max(timeout_s, 0.0))
        t_woke = now()
        ready = [key.fileobj for key, _ in events if key.fileobj is not self._lsock]
        self.stats.waited(t_wait, t_woke, bool(ready))
        if any(key.fileobj is self._lsock for key, _ in events):
            self._accept()
        for sock in ready:
            if sock not in self._conns:
                continue
            try:
                msg = self._read_message(sock)
            except _Drop as d:
                self._drop(sock, d)
                continue
            if msg is not None:
                self.stats.read(t_woke, now())
                return msg
        self.stats.t_last = now()
        return None

    def close(self) -> None:
        for sock in list(self._conns):
            self._drop(sock, None)
        with contextlib.suppress(Exception):
            self._sel.unregister(self._lsock)
        self._lsock.close()
        self._sel.close()

    # -- connections -------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.stats.errors.append(f"accept: {exc}")
                return
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            sock.setblocking(True)
            sock.settimeout(HANDSHAKE_S)
            _keepalive(sock)
            try:
                self._handshake(sock)
            except (_Drop, OSError) as exc:
                self.stats.protocol_errors += 1
                self.stats.errors.append(f"{peer}: handshake: {exc}")
                sock.close()
                continue
            # blocking from here on, each body read one MSG_WAITALL call: the kernel
            # fills the whole buffer while this thread sleeps outside the GIL (a recv
            # per socket-buffer's worth would take and give back the GIL a hundred
            # times a batch, at the cost of the inference thread's kernel launches);
            # SO_RCVTIMEO bounds each call instead of Python's poll-based timeout
            if self.waitall:
                sock.settimeout(None)
                _set_timeouts(sock, self.stall_s)
            else:  # reads of what the socket buffer holds, each bounded by Python's poll
                sock.settimeout(self.stall_s)
            self._conns[sock] = peer
            self._sel.register(sock, selectors.EVENT_READ)
            self.stats.connections += 1

    def _drop(self, sock: socket.socket, d: _Drop | None) -> None:
        peer = self._conns.pop(sock, "?")
        with contextlib.suppress(Exception):
            self._sel.unregister(sock)
        sock.close()
        if d is None:
            return
        self.stats.disconnects += 1
        if d.kind == "cut":
            self.stats.cut += 1
        elif d.kind == "protocol":
            self.stats.protocol_errors += 1
        if d.kind != "closed":
            self.stats.errors.append(f"{peer}: {d}")

    def _handshake(self, sock: socket.socket) -> None:
        sock.sendall(greeting(as_server=True))
        peer = self._exact(sock, GREETING_SIZE, "greeting")
        if peer[:1] != SIGNATURE[:1] or peer[9:10] != SIGNATURE[9:10]:
            raise _Drop("protocol", "not a ZMTP greeting")
        if peer[10] < 3:
            raise _Drop("protocol", f"ZMTP {peer[10]}.{peer[11]}: 3.0 or later needed")
        if peer[12:32].rstrip(b"\x00") != b"NULL":
            raise _Drop("protocol", f"mechanism {peer[12:32].rstrip(bytes(1))!r}: NULL needed")
        sock.sendall(command_frame("READY", encode_properties({"Socket-Type": b"PULL"})))
        flags, size = self._header(sock, first=True)
        if not flags & FLAG_COMMAND or size > _MAX_COMMAND:
            raise _Drop("protocol", "expected the peer's READY")
        name, data = _command(self._exact(sock, size, "READY"))
        if name != "READY":
            raise _Drop("protocol", f"expected READY, got {name}")
        kind = parse_properties(data).get("Socket-Type", b"")
        if kind != b"PUSH":
            raise _Drop("protocol", f"PULL cannot talk to {kind.decode(errors='replace') or '?'}")

    # -- frames ------------------------------------------------------------------------
    def _exact(self, sock: socket.socket, n: int, what: str) -> bytes:
        buf = bytearray(n)
        self._into(sock, memoryview(buf), what, first=False)
        return bytes(buf)

    def _into(self, sock: socket.socket, view: memoryview, what: str, *, first: bool) -> None:
        """Fill ``view`` from ``sock``. ``first``: nothing of a frame read yet, so the
        peer closing here is an orderly end, not a cut."""
        got = 0
        while got < len(view):
            try:
                # MSG_WAITALL (blocking sockets, after the handshake): one call returns
                # when the view is full, the peer closed, or SO_RCVTIMEO ran out (then
                # with what came so far, or EAGAIN when nothing did)
                n = sock.recv_into(view[got:], 0, socket.MSG_WAITALL if self.waitall else 0)
            except (TimeoutError, BlockingIOError):
                raise _Drop("cut", f"stalled {self.stall_s:g} s in a {what}") from None
            except OSError as exc:
                raise _Drop("cut" if got or not first else "closed", f"{what}: {exc}") from None
            if n == 0:
                if got == 0 and first:
                    raise _Drop("closed", "peer closed the connection")
                raise _Drop("cut", f"peer closed part-way through a {what}")
            got += n

    def _header(self, sock: socket.socket, *, first: bool) -> tuple[int, int]:
        head = bytearray(2)
        self._into(sock, memoryview(head), "frame header", first=first)
        flags = head[0]
        if flags & FLAG_LONG:
            rest = bytearray(7)
            self._into(sock, memoryview(rest), "frame header", first=False)
            return flags, _U64.unpack(bytes(head[1:]) + bytes(rest))[0]
        return flags, head[1]

    def _read_message(self, sock: socket.socket) -> RawMessage | None:
        """One whole message (all its frames), or None after a command frame."""
        parts: list[tuple[np.ndarray, Callable[[], None]]] = []
        total = 0
        more = True
        first = True
        try:
            while more:
                flags, size = self._header(sock, first=first)
                if flags & FLAG_COMMAND:
                    if not first or size > _MAX_COMMAND:
                        raise _Drop("protocol", "a command inside a message, or oversized")
                    self._command(sock, self._exact(sock, size, "command"))
                    return None
                first = False
                total += size
                if total > self.max_message_bytes:
                    # libzmq's MAXMSGSIZE: the connection ends at the size header
                    self.stats.oversize += 1
                    raise _Drop("oversize", f"a message of over {total} bytes > "
                                            f"max_message_bytes {self.max_message_bytes}")
                arr, release = self.alloc((size,), np.uint8)
                parts.append((arr, release))
                if size:
                    self._into(sock, arr.data.cast("B"), "message", first=False)
                more = bool(flags & FLAG_MORE)
        except BaseException:
            for _, release in parts:
                release()
            raise
        t = self.clock()
        self.stats.messages += 1
        self.stats.bytes += total
        if len(parts) > 1:
            self.stats.multipart += 1
            head = bytes(parts[0][0].data.cast("B")[:HEAD_KEEP])
            sizes = [len(a) for a, _ in parts]
            for _, release in parts:
                release()
            return RawMessage(head, total, t, reject=(
                f"multipart: {len(parts)} frames ({', '.join(map(str, sizes[:8]))}"
                f"{', ...' if len(sizes) > 8 else ''} bytes); LCLStreamer sends one frame "
                f"per message"))
        arr, release = parts[0]
        return RawMessage(arr, total, t, release=release)

    def _command(self, sock: socket.socket, body: bytes) -> None:
        name, data = _command(body)
        if name == "PING":
            # PING: 2-octet TTL, then a context the PONG echoes
            sock.sendall(command_frame("PONG", data[2:]))
        elif name == "ERROR":
            raise _Drop("protocol", f"peer sent ERROR {data[1:].decode(errors='replace')!r}")


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO and SO_SNDTIMEO of a blocking socket: a receive that gets nothing
    for ``seconds`` fails with EAGAIN (a MSG_WAITALL one that got part returns it),
    as does a send that cannot go on."""
    sec = int(seconds)
    tv = struct.pack("ll", sec, int((seconds - sec) * 1e6))
    for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        sock.setsockopt(socket.SOL_SOCKET, opt, tv)


def _command(body: bytes) -> tuple[str, bytes]:
    if not body or body[0] == 0 or 1 + body[0] > len(body):
        raise _Drop("protocol", f"malformed command frame {body[:32]!r}")
    return body[1 : 1 + body[0]].decode("ascii", errors="replace"), body[1 + body[0]:]
