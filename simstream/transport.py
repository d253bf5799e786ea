"""The producer's sockets: the sans-IO wire framing driven over TCP with trio.

Why not libzmq for sending: libzmq hands a whole message to its I/O thread, so a
100 MB batch could not be paced at a bandwidth cap, stalled half-way or cut
mid-frame. Here every byte goes through ``Sender.send_message``, chunk by chunk.

Usage (both forms work)::

    async with open_sender("zmq", "client", "tcp://127.0.0.1:12321") as sender:
        report = await sender.send_message(batch_bytes, gate=pacer.wait)

    sender = await open_sender("nng", "server", "tcp://0.0.0.0:12321")
    try: ...
    finally: await sender.close()

The ``async with`` form closes the sender when the block ends; with the ``await``
form ``close()`` is the caller's job. Each connection's background reader is a trio
system task owned by the sender and cancelled when that connection is dropped: it
never raises (a peer error only marks the connection dead), so no nursery is needed
and exceptions of the ``async with`` body are not wrapped in exception groups.

Roles:
- client: connects, retrying with exponential backoff (``backoff_ms`` = first and
  largest delay; every failed attempt is reported as ``on_event("connect_retry",
  {...})``) and raises ``ConnectTimeout`` after ``connect_timeout_s``. After a lost
  or cut connection it waits the first backoff delay before reconnecting, as
  libzmq waits its reconnect interval.
- server: binds at open (``AddressInUse`` if taken; port 0 picks a free one, see
  ``bound_port``) and returns at once. A peer is accepted when a send needs one,
  waiting up to ``connect_timeout_s`` (then ``ConnectTimeout``). One peer at a
  time: LCLStreamer's PUSH spreads messages over peers round robin, here a second
  peer waits in the listen backlog until the first one goes away.

After the handshake a background reader watches the socket: it answers ZMTP PINGs
with PONGs (between messages, never inside one) and notices the peer closing, so
the next send reconnects first instead of writing into a dead connection.

No user-space queue: a send returns when the kernel has taken the last byte, and
blocks (``socket_wait_s``) while the kernel's send buffer is full, i.e. while the
consumer is not reading. The emitter keeps its own SNDHWM-style queue above this.

Events passed to ``on_event(name, fields)``: ``listening`` {url, port};
``connect_retry`` {url, attempt, error, retry_in_s}; ``connected`` {url, peer,
attempt}; ``handshake_failed`` {url, peer, error} (server role);
``disconnected`` {url, peer, reason}.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import trio

from simstream import clock
from simstream.errors import UsageError
from simstream.profile import split_url
from simstream.wire import NEED_DATA, ConnectionClosed, RemoteProtocolError, new_connection

KINDS = ("zmq", "nng", "tcp")
ROLES = ("client", "server")

#: The PULL peer only ever sends commands (READY, PING, ERROR): a small cap suffices.
_MAX_INCOMING_BYTES = 1 << 16
_RECV_BYTES = 1 << 16
#: A message that could not get its first byte out is retried on a fresh connection
#: at most this many times (no byte of it reached the peer, so nothing is duplicated).
_FRESH_ATTEMPTS = 3

EventHook = Callable[[str, dict[str, Any]], None]
Gate = Callable[[int], Awaitable[None]]
Dial = Callable[[], Awaitable[socket.socket]]


@dataclass
class SendReport:
    """What happened to one message on the wire.

    Times are ``simstream.clock.now()`` (Unix seconds); None when no byte went out."""

    t_first_byte: float | None  # when the kernel started taking the first byte
    t_last_byte: float | None  # when the kernel had taken the last byte written
    wire_bytes: int  # bytes written, framing included
    socket_wait_s: float  # time blocked on a full kernel send buffer (TCP backpressure)
    outcome: str  # "delivered" | "cut" (on purpose) | "lost" (peer/connection went away)
    error: str | None


class ConnectTimeout(Exception):
    """No peer within ``connect_timeout_s``: client role could not reach it, or (server
    role) none connected. The message names the address and the last error."""


class AddressInUse(UsageError):
    """Server role: the address to bind is taken (one line, exit status 2)."""


class WouldBlockAtClose(Exception):
    """An abrupt close is under way (``close_when_blocked``) and the kernel cannot
    take more of this message without waiting for the peer: it is abandoned, as
    libzmq with LINGER 0 drops what its I/O thread has not yet handed over."""


class _CloseGate:
    """Abrupt close: a write that would wait for the peer is abandoned instead."""

    def __init__(self) -> None:
        self.closing = False
        self.scope: trio.CancelScope | None = None  # around a wait for writability

    def close(self) -> None:
        self.closing = True
        if self.scope is not None:
            self.scope.cancel()


class _LinkDown(Exception):
    pass


class _Link:
    """One TCP connection after its handshake, with its protocol state."""

    def __init__(self, sock: socket.socket, conn: Any, peer: str) -> None:
        self.sock = sock
        self.conn = conn
        self.peer = peer
        self.dead = False
        self.why: str | None = None
        self.on_purpose = False  # we cut or reset it
        self.closed = False
        self.reader_scope = trio.CancelScope()
        self.watch_scope = trio.CancelScope()  # the dead-link watch, when there is one


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"address lookup failed: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _set_keepalive(sock: socket.socket, ms: float) -> None:
    """Keepalive probes on an idle connection, every ``ms``/3 (at least 1 s) after as
    long without traffic: an idle peer behind a cut link leaves them unanswered
    (``_peer_silent``). Linux names; elsewhere the kernel's defaults stay."""
    sec = max(1, round(ms / 3000))
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", sec), ("TCP_KEEPINTVL", sec), ("TCP_KEEPCNT", 3)):
        opt = getattr(socket, name, None)
        if opt is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)


#: struct tcp_info (linux/tcp.h): tcpi_retransmits and tcpi_probes are bytes 2 and 3,
#: tcpi_last_ack_recv (ms) the u32 at byte 56
_TCP_INFO_BYTES = 60


def _peer_silent(sock: socket.socket, bound_ms: float) -> float | None:
    """Seconds since the peer last acknowledged anything, when that exceeds
    ``bound_ms`` while at least two retransmissions or probes (zero-window or
    keepalive) in a row went unanswered: the link is cut or the peer's host is
    gone. None otherwise, and where TCP_INFO cannot be read.

    Not TCP_USER_TIMEOUT: that one also ends a connection whose receiver keeps
    answering with a zero window for longer than the bound, i.e. backpressure,
    which must stall the producer, never disconnect it. A live peer answers every
    probe, so its unanswered count stays below two however long the window is shut."""
    opt = getattr(socket, "TCP_INFO", None)
    if opt is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, opt, _TCP_INFO_BYTES)
    except OSError:
        return None
    return _silence(info, bound_ms)


def _silence(info: bytes, bound_ms: float) -> float | None:
    """``_peer_silent`` from the bytes of a struct tcp_info."""
    if len(info) < _TCP_INFO_BYTES:
        return None
    retransmits, probes = info[2], info[3]
    (last_ack_ms,) = struct.unpack_from("I", info, 56)
    if max(retransmits, probes) >= 2 and last_ack_ms > bound_ms:
        return last_ack_ms / 1000
    return None


def _close_socket(sock: socket.socket, *, rst: bool) -> None:
    try:
        if rst:
            # SO_LINGER 0: close() sends RST and drops unsent data, as a crash would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already reset by the peer: closing is all that is left
    trio.lowlevel.notify_closing(sock)
    sock.close()


async def _recv(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(_RECV_BYTES)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def _tcp_dial(host: str, port: int, *, dead_link_ms: float | None = None,
                    known: list[Any] | None = None) -> tuple[socket.socket, list[Any]]:
    """A connected non-blocking TCP socket and the addresses ``host`` resolved to;
    raises OSError (refused, unreachable, timed out).

    With ``dead_link_ms`` the socket gets keepalive before it connects, and
    resolving and connecting are each bounded by that time: a host
    cut off from its network (no resolver, SYNs unanswered) fails fast and the
    caller retries. ``known``: the addresses of an earlier resolution, used when
    resolving fails or takes too long."""
    bound = math.inf if dead_link_ms is None else dead_link_ms / 1000
    infos: list[Any] | None = None
    try:
        with trio.move_on_after(bound):
            infos = list(await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except OSError:
        if not known:
            raise
    if not infos:
        if not known:
            raise OSError(errno.ETIMEDOUT, f"resolving {host!r} took over {bound:g} s")
        infos = known
    last: OSError = OSError(f"no address for {host!r}")
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        if dead_link_ms is not None:
            _set_keepalive(sock, dead_link_ms)
        try:
            err = sock.connect_ex(addr)
            if err == errno.EINPROGRESS:
                with trio.move_on_after(bound):
                    await trio.lowlevel.wait_writable(sock)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == errno.EINPROGRESS:
                    err = errno.ETIMEDOUT
            if err:
                raise OSError(err, os.strerror(err))
        except OSError as exc:
            _close_socket(sock, rst=False)
            last = exc
            continue
        except BaseException:
            _close_socket(sock, rst=False)
            raise
        return sock, infos
    raise last


class Sender:
    """The producer end of one transport connection (one rank's socket).

    ``kind``: "zmq" (ZMTP 3.1, PUSH), "nng" (SP push0) or "tcp" (length-prefixed).
    ``role``: "client" (connect) or "server" (bind). ``url``: tcp://HOST:PORT.
    ``dial``: replaces how a connected socket is obtained (tests use socket pairs).
    ``sndbuf_bytes``: SO_SNDBUF of every connection (None: the kernel's autotuning).
    Raises UsageError for an unknown kind or role or a malformed url.

    Prefer ``open_sender``; a Sender made directly must be started with ``await
    sender.start()``.
    """

    def __init__(
        self,
        kind: str,
        role: str,
        url: str,
        *,
        connect_timeout_s: float = 30.0,
        backoff_ms: tuple[float, float] = (100.0, 5000.0),
        on_event: EventHook | None = None,
        dial: Dial | None = None,
        dead_link_ms: float | None = None,
        sndbuf_bytes: int | None = None,
    ) -> None:
        if kind not in KINDS:
            raise UsageError(f"unknown transport kind {kind!r} (expected one of {', '.join(KINDS)})")
        if role not in ROLES:
            raise UsageError(f"unknown role {role!r} (expected client or server)")
        try:
            self.host, self.port = split_url(url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        first, largest = backoff_ms
        if not 0 < first <= largest:
            raise UsageError(f"backoff_ms must be 0 < first <= max, got {backoff_ms}")
        self.kind = kind
        self.role = role
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.backoff_ms = (float(first), float(largest))
        self.bound_port: int | None = None
        self.connects = 0  # connections established so far
        self.dead_link_ms = dead_link_ms
        self.sndbuf_bytes = sndbuf_bytes
        self._addresses: list[Any] = []  # what the peer's host name last resolved to
        self._on_event = on_event
        self._dial = dial
        self._listener: socket.socket | None = None
        self._link: _Link | None = None
        self._write_lock = trio.Lock()
        self._after_loss = False
        self._closed = False
        self._close_gate = _CloseGate()

    # -- state ---------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """A handshaken connection is up and its peer has not gone away (as far as the
        background reader has seen)."""
        return self._link is not None and not self._link.dead

    def _emit(self, name: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(name, {"url": self.url, **fields})

    # -- opening -------------------------------------------------------------------
    async def start(self) -> None:
        """Bind (server) or connect (client). Raises AddressInUse, ConnectTimeout."""
        if self.role == "server" and self._dial is None:
            await self._bind()
        if self.role == "client":
            async with self._write_lock:
                await self._ensure_link()

    async def _bind(self) -> None:
        host = "0.0.0.0" if self.host == "*" else self.host  # as libzmq: IPv4 wildcard
        try:
            infos = await trio.socket.getaddrinfo(
                host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise UsageError(f"cannot bind {self.url}: {_describe(exc)}") from None
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(
                    f"cannot bind {self.url}: address already in use (another emitter or "
                    "consumer bound there? choose another port or role client)"
                ) from None
            raise UsageError(f"cannot bind {self.url}: {_describe(exc)}") from None
        sock.setblocking(False)
        self._listener = sock
        self.bound_port = sock.getsockname()[1]
        self._emit("listening", port=self.bound_port)

    async def _accept(self) -> socket.socket:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._listener)
                continue
            sock.setblocking(False)
            return sock

    async def _new_socket(self) -> socket.socket:
        if self._dial is not None:
            sock = await self._dial()
        elif self.role == "client":
            sock, self._addresses = await _tcp_dial(
                self.host, self.port, dead_link_ms=self.dead_link_ms,
                known=self._addresses)
        else:
            sock = await self._accept()
        _set_nodelay(sock)
        if self.sndbuf_bytes is not None:
            # how much the kernel holds for the peer (turns its autotuning off)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf_bytes)
        if self.dead_link_ms is not None:
            _set_keepalive(sock, self.dead_link_ms)
        return sock

    async def _ensure_link(self) -> _Link:
        """The live connection, reconnecting first if there is none. Caller holds the
        write lock. Raises ConnectTimeout."""
        if self._closed:
            raise trio.ClosedResourceError("the sender is closed")
        link = self._link
        if link is not None and not link.dead:
            # The reader may not have run since the peer left: look now, or the next
            # message goes into a connection whose far end is gone (TCP takes the first
            # write after a FIN without complaint).
            gone = _peer_gone(link.sock)
            if gone is None:
                return link
            self._mark_dead(link, gone)
        if link is not None:
            self._drop(link, rst=True)
        self._link = await self._connect()
        return self._link

    async def _connect(self) -> _Link:
        start = trio.current_time()
        deadline = start + self.connect_timeout_s
        delay_ms, largest_ms = self.backoff_ms
        attempt = 0
        last_error = "no attempt finished"
        with trio.move_on_at(deadline):
            if self._after_loss and self.role == "client":
                await trio.sleep(delay_ms / 1000)  # libzmq's reconnect interval
            while True:
                attempt += 1
                sock: socket.socket | None = None
                peer = "?"
                try:
                    sock = await self._new_socket()
                    peer = _peer_name(sock)
                    conn = await self._handshake(sock)
                except (OSError, RemoteProtocolError, _LinkDown) as exc:
                    last_error = _describe(exc)
                    if sock is not None:
                        _close_socket(sock, rst=True)
                    if self.role == "server":
                        self._emit("handshake_failed", peer=peer, error=last_error)
                        # accept() itself failing (EMFILE...) must not spin.
                        await trio.sleep(0.1 if sock is None else 0)
                        continue
                    retry_in_s = delay_ms / 1000
                    self._emit("connect_retry", attempt=attempt, error=last_error,
                               retry_in_s=retry_in_s)
                    await trio.sleep(retry_in_s)
                    delay_ms = min(delay_ms * 2, largest_ms)
                    continue
                except BaseException:
                    if sock is not None:
                        _close_socket(sock, rst=True)
                    raise
                link = _Link(sock, conn, peer)
                self.connects += 1
                self._after_loss = False
                self._emit("connected", peer=peer, attempt=attempt)
                trio.lowlevel.spawn_system_task(self._read, link, name=f"reader {self.url}")
                if self.dead_link_ms is not None and self._dial is None:
                    trio.lowlevel.spawn_system_task(self._watch, link, name=f"watch {self.url}")
                return link
        if self.role == "server":
            what = f"no {self.kind} peer connected to {self.url}"
            if self.port == 0 and self.bound_port:
                what += f" (bound port {self.bound_port})"
        else:
            what = f"could not reach the {self.kind} peer at {self.url}"
        raise ConnectTimeout(
            f"{what} within {self.connect_timeout_s:g} s ({attempt} "
            f"attempt{'s' if attempt != 1 else ''}; last error: {last_error})"
        )

    async def _handshake(self, sock: socket.socket) -> Any:
        conn = new_connection(self.kind, "PUSH", as_server=self.role == "server",
                              max_message_bytes=_MAX_INCOMING_BYTES)
        await _write_all(sock, conn.initiate())
        while not conn.ready:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(await _recv(sock))
                continue
            if isinstance(event, ConnectionClosed):
                raise _LinkDown("peer closed the connection during the handshake")
            await _write_all(sock, conn.data_to_send())  # READY once the greeting is valid
        await _write_all(sock, conn.data_to_send())
        return conn

    # -- background reader -----------------------------------------------------------
    async def _read(self, link: _Link) -> None:
        with link.reader_scope:
            try:
                await self._read_until_closed(link)
            except (OSError, trio.ClosedResourceError, RemoteProtocolError) as exc:
                self._mark_dead(link, _describe(exc))
                if isinstance(exc, RemoteProtocolError):
                    self._drop(link, rst=True)
            except Exception as exc:  # noqa: BLE001 - the reader must never take the run down
                self._mark_dead(link, f"reader failed: {exc!r}")
                self._drop(link, rst=True)

    async def _read_until_closed(self, link: _Link) -> None:
        conn = link.conn
        while True:
            data = await _recv(link.sock)
            if self.kind == "tcp":  # a length-prefixed consumer never talks back
                if not data:
                    self._mark_dead(link, "peer closed the connection")
                    return
                await trio.lowlevel.checkpoint()
                continue
            conn.receive_data(data)
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    self._mark_dead(link, "peer closed the connection")
                    return
            # A PONG is owed: write it now unless a message is being written (its
            # sender flushes it after the message, never inside a frame).
            if not self._write_lock.locked():
                async with self._write_lock:
                    owed = conn.data_to_send()
                    if owed and not link.closed:
                        await _write_all(link.sock, owed)
            await trio.lowlevel.checkpoint()

    async def _watch(self, link: _Link) -> None:
        """Drops the connection (RST) once its peer has stopped answering for longer
        than ``dead_link_ms`` (``_peer_silent``); a write blocked on it fails as a
        lost connection and the next send reconnects."""
        assert self.dead_link_ms is not None
        with link.watch_scope:
            while not (link.dead or link.closed):
                await trio.sleep(self.dead_link_ms / 4000)
                silent = None if link.closed else _peer_silent(link.sock, self.dead_link_ms)
                if silent is not None:
                    self._mark_dead(link, f"the peer has not answered for {silent:.1f} s "
                                          f"(link cut or host gone)")
                    self._drop(link, rst=True)

    def _mark_dead(self, link: _Link, why: str, *, on_purpose: bool = False) -> None:
        if link.dead:
            return
        link.dead = True
        link.why = why
        link.on_purpose = on_purpose
        self._after_loss = True
        self._emit("disconnected", peer=link.peer, reason=why)

    def _drop(self, link: _Link, *, rst: bool) -> None:
        link.reader_scope.cancel()
        link.watch_scope.cancel()
        if not link.closed:
            link.closed = True
            _close_socket(link.sock, rst=rst)
        if self._link is link:
            self._link = None

    # -- sending ---------------------------------------------------------------------
    async def send_message(
        self,
        payload: Any,
        *,
        gate: Gate | None = None,
        chunk_bytes: int = 256 * 1024,
        cut_after_bytes: int | None = None,
    ) -> SendReport:
        """Write one message (framing + payload) and say how it went.

        ``payload``: a bytes-like object or a ``simstream.codec.Scatter`` (its
        pieces are written as they are, with scatter writes: nothing is copied).

        ``gate(nbytes)`` is awaited before each chunk of at most ``chunk_bytes`` wire
        bytes (the bandwidth pacer); without a gate the message goes out in one go.
        ``cut_after_bytes``: write only that many wire bytes of it, then abort the
        connection with RST (outcome "cut"). A peer going away gives outcome "lost"
        and the next send reconnects first; a message none of whose bytes went out
        is retried on the new connection. Never raises for a peer going away; raises
        ConnectTimeout when no peer can be had within ``connect_timeout_s``, and
        trio.ClosedResourceError after ``close()``."""
        parts = _payload_parts(payload)
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        async with self._write_lock:
            for _ in range(_FRESH_ATTEMPTS):
                link = await self._ensure_link()
                report = await self._send_on(link, parts, gate, chunk_bytes, cut_after_bytes)
                if report is not None:
                    return report
            why = f"connection broke before the first byte, {_FRESH_ATTEMPTS} times"
            return SendReport(None, None, 0, 0.0, "lost", why)

    async def _send_on(
        self,
        link: _Link,
        parts: list[memoryview],
        gate: Gate | None,
        chunk_bytes: int,
        cut_after: int | None,
    ) -> SendReport | None:
        conn = link.conn
        nbytes = sum(len(p) for p in parts)
        segments = [memoryview(conn.message_header(nbytes)), *parts]
        total = len(segments[0]) + nbytes
        limit = total if cut_after is None else max(0, min(cut_after, total))
        report = SendReport(None, None, 0, 0.0, "delivered", None)
        owed_part_way = False
        try:
            owed = conn.data_to_send()  # a PONG goes before the message, not inside it
            if owed:
                owed_part_way = True
                await _write_all(link.sock, owed)
                owed_part_way = False
            step = limit if gate is None else chunk_bytes
            pos = 0
            while pos < limit:
                end = min(pos + step, limit)
                if gate is not None:
                    await gate(end - pos)
                if link.dead:
                    raise _LinkDown(link.why or "connection closed")
                await _write_pieces(link.sock, _pieces(segments, pos, end), report,
                                    self._close_gate)
                pos = end
        except (OSError, trio.ClosedResourceError, _LinkDown) as exc:
            why = link.why or _describe(exc)
            self._mark_dead(link, why)
            self._drop(link, rst=True)
            if report.wire_bytes == 0 and not link.on_purpose:
                return None  # nothing of it went out: send it on a new connection
            report.outcome = "cut" if link.on_purpose else "lost"
            report.error = why
            return report
        except BaseException:
            # Cancelled, or the gate failed, part-way: the peer would read the next
            # message as the rest of this one, so the connection cannot be reused.
            # Closed with FIN, not RST: earlier messages still in the kernel's send
            # buffer were delivered as far as the log is concerned and must arrive;
            # the peer sees this one end incomplete at the FIN.
            if report.wire_bytes or owed_part_way:
                self._mark_dead(link, "message abandoned part-way", on_purpose=True)
                self._drop(link, rst=False)
            raise
        if cut_after is not None:
            why = f"cut on purpose after {limit} of {total} bytes"
            self._mark_dead(link, why, on_purpose=True)
            self._drop(link, rst=True)
            report.outcome = "cut"
            report.error = why
            return report
        if link.dead:
            # Checked before any checkpoint after the last write: the peer was gone
            # before the kernel had all of it, so it cannot have the whole message.
            report.outcome = "lost"
            report.error = link.why
            self._drop(link, rst=True)
            return report
        owed = conn.data_to_send()
        if owed:
            try:
                await _write_all(link.sock, owed)
            except (OSError, trio.ClosedResourceError) as exc:
                self._mark_dead(link, _describe(exc))
        return report

    # -- faults and closing ------------------------------------------------------------
    async def reset(self) -> None:
        """Abort the connection now with RST (a message being written ends "cut"), then
        reconnect. Raises ConnectTimeout."""
        link = self._link
        if link is not None:
            self._mark_dead(link, "reset on purpose", on_purpose=True)
            self._drop(link, rst=True)
        async with self._write_lock:
            await self._ensure_link()

    def close_when_blocked(self) -> None:
        """Start an abrupt close (LINGER 0): messages go on while the kernel takes
        them without waiting; a write that would wait for the peer (or is waiting
        now) raises WouldBlockAtClose and its message is abandoned."""
        self._close_gate.close()

    async def reconnect(self) -> None:
        """Close the connection gracefully (FIN) after any message being written, and
        connect again at once. Raises ConnectTimeout."""
        async with self._write_lock:
            link = self._link
            if link is not None:
                self._mark_dead(link, "reconnect on purpose", on_purpose=True)
                self._drop(link, rst=False)
            self._after_loss = False
            await self._ensure_link()

    async def wait_connected(self) -> None:
        """Return once a peer is connected (server role: accepted and handshaken).
        Raises ConnectTimeout."""
        async with self._write_lock:
            await self._ensure_link()

    async def close(self, *, delay_s: float = 0.0) -> None:
        """Close gracefully (FIN) once any message being written is done, optionally
        ``delay_s`` seconds later (a slow close: the peer sees the connection linger)."""
        if self._closed:
            return
        async with self._write_lock:
            if delay_s > 0:
                await trio.sleep(delay_s)
            self.abort(graceful=True)

    def abort(self, *, graceful: bool = False) -> None:
        """Close at once, without waiting (RST unless ``graceful``); idempotent."""
        self._closed = True
        if self._link is not None:
            self._mark_dead(self._link, "closed by the sender", on_purpose=True)
            self._drop(self._link, rst=not graceful)
        if self._listener is not None:
            trio.lowlevel.notify_closing(self._listener)
            self._listener.close()
            self._listener = None


def _peer_gone(sock: socket.socket) -> str | None:
    """Why the peer is known to be gone (end of stream or reset seen), else None.
    Peeks, so bytes waiting for the reader stay where they are."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        return _describe(exc)
    return None if data else "peer closed the connection"


def _peer_name(sock: socket.socket) -> str:
    try:
        name = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name) or "local"


def _payload_parts(payload: Any) -> list[memoryview]:
    """A payload's bytes as unsigned-byte views, nothing copied: one for a
    bytes-like payload, the pieces of a ``simstream.codec.Scatter``."""
    pieces = getattr(payload, "parts", None)
    out = []
    for p in (payload,) if pieces is None else pieces:
        view = memoryview(p)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        out.append(view)
    return out


def _pieces(segments: list[memoryview], start: int, end: int) -> list[memoryview]:
    """Wire bytes [start, end) of the consecutive ``segments`` (header, then the
    payload's parts) as views (nothing copied)."""
    out = []
    at = 0
    for seg in segments:
        n = len(seg)
        if at + n > start and at < end and n:
            out.append(seg[max(start - at, 0) : min(end - at, n)])
        at += n
        if at >= end:
            break
    return out


async def _write_all(sock: socket.socket, data: bytes) -> None:
    if data:
        await _write_pieces(sock, [memoryview(data)], None)


async def _write_pieces(
    sock: socket.socket, pieces: list[memoryview], report: SendReport | None,
    close_gate: _CloseGate | None = None,
) -> None:
    """Hand ``pieces`` to the kernel in as few system calls as it allows (scatter
    writes, no copy); time blocked on a full send buffer goes to socket_wait_s.
    Raises WouldBlockAtClose instead of waiting once ``close_gate`` is closing."""
    while pieces:
        t_try = clock.now() if report is not None and report.t_first_byte is None else 0.0
        try:
            sent = sock.sendmsg(pieces)
        except BlockingIOError:
            if close_gate is not None and close_gate.closing:
                raise WouldBlockAtClose("the kernel's send buffer is full at the close") from None
            t0 = time.perf_counter()
            with trio.CancelScope() as scope:
                if close_gate is not None:
                    close_gate.scope = scope
                await trio.lowlevel.wait_writable(sock)
            if close_gate is not None:
                close_gate.scope = None
            if report is not None:
                report.socket_wait_s += time.perf_counter() - t0
            if scope.cancelled_caught:
                raise WouldBlockAtClose("the close came while waiting on the peer") from None
            continue
        if report is not None and sent:
            if report.t_first_byte is None:
                report.t_first_byte = t_try
            report.wire_bytes += sent
            report.t_last_byte = clock.now()
        while sent:
            first = pieces[0]
            if sent >= len(first):
                sent -= len(first)
                pieces.pop(0)
            else:
                pieces[0] = first[sent:]
                sent = 0


class _OpenSender:
    """``await open_sender(...)`` or ``async with open_sender(...) as sender``."""

    def __init__(self, sender: Sender) -> None:
        self._sender = sender

    def __await__(self) -> Generator[Any, None, Sender]:
        return self._start().__await__()

    async def _start(self) -> Sender:
        try:
            await self._sender.start()
        except BaseException:
            self._sender.abort()
            raise
        return self._sender

    async def __aenter__(self) -> Sender:
        return await self._start()

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            if exc_info[0] is None:
                await self._sender.close()
        finally:
            # on error or cancellation too, close with FIN, not RST: messages the log
            # already calls delivered may still sit in the kernel's send buffer, and
            # an RST would destroy them; a message cut mid-write ends at the FIN,
            # where the peer sees it incomplete
            self._sender.abort(graceful=True)


def open_sender(
    kind: str,
    role: str,
    url: str,
    *,
    connect_timeout_s: float = 30.0,
    backoff_ms: tuple[float, float] = (100.0, 5000.0),
    on_event: EventHook | None = None,
    dead_link_ms: float | None = None,
    sndbuf_bytes: int | None = None,
) -> _OpenSender:
    """Open the producer end of a transport: ``sender = await open_sender(...)`` or
    ``async with open_sender(...) as sender``.

    Client role returns once connected and handshaken; server role once bound.
    Raises UsageError (bad kind, role, url), AddressInUse, ConnectTimeout."""
    return _OpenSender(
        Sender(kind, role, url, connect_timeout_s=connect_timeout_s, backoff_ms=backoff_ms,
               on_event=on_event, dead_link_ms=dead_link_ms, sndbuf_bytes=sndbuf_bytes)
    )
