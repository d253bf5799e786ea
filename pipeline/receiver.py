"""The receiver: messages off the wire, each stamped with its arrival time and size.

Three transports, one shape (``recv(timeout_s) -> RawMessage | None``, ``close()``):

- ``zmq``: a pyzmq PULL socket, the library production's consumer uses. It binds
  by default (LCLStreamer connects, ``role: client``) or connects to a
  server-role emitter. ZeroMQ hands over whole messages only, so an oversize one
  is refused after it is in memory (never decoded).
- ``tcp``: 8-byte big-endian length, then the payload, per message.
- ``nng``: the SP-over-TCP protocol pynng's Push0 speaks: an 8-byte header each
  way (``\\0SP\\0``, protocol id, 0), then the same length-prefixed messages.

``tcp`` and ``nng`` are framed by simstream's sans-IO wire layer
(``simstream.wire.new_connection``, the same code the producer sends with); this
module only moves bytes between sockets and it. The declared length is checked
before the body is read: an oversize body is read past as it arrives (the stream
stays in step) and only its head is kept for quarantine. A message is held as the
chunks that arrived until it is whole, so memory follows what peers send, not the
lengths they announce. Several connections (one per rank) are served by one
selector loop.

``recv`` waits at most ``timeout_s`` so the caller's loop can notice a stop.
Raises UsageError when the address cannot be bound (in use, not local) or is bad.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import selectors
import socket
import struct
import termios
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from simstream.clock import now
from simstream.errors import UsageError
from simstream.profile import split_url

if TYPE_CHECKING:
    import numpy as np

from simstream.wire import (
    NEED_DATA,
    ConnectionClosed,
    Message,
    OversizeMessage,
    RemoteProtocolError,
    new_connection,
)

__all__ = ["RawMessage", "Receiver", "ReceiverStats", "check_bindable", "open_receiver"]

log = logging.getLogger("pipeline.receiver")

HEAD_KEEP = 1 << 20  # bytes of an oversize message kept for quarantine
_CHUNK_MIN = 64 << 10  # one read asks for this many bytes at first...
_CHUNK_MAX = 4 << 20  # ...doubling while reads come back full, up to this


@dataclass
class RawMessage:
    """One message as received. ``payload`` is None-free except for an oversize
    stream message, where it holds only the head (``oversize`` True)."""

    # an ndarray of uint8: a host-pool buffer the fast layout's zmq receiver read into
    payload: bytes | bytearray | memoryview | np.ndarray
    nbytes: int
    t_arrival: float
    peer: str = ""
    oversize: bool = False
    # set when the message is refused as received (e.g. multi-part): the quarantine reason
    reject: str | None = None
    # returns ``payload``'s buffer to the host pool it was read into (the fast layout's
    # zmq receiver), once, by whoever holds the message last; None: nothing to return
    release: Callable[[], None] | None = None


@dataclass
class ReceiverStats:
    """Counts, and where the receiver's time went: ``wait_s`` inside poll/select
    with nothing to read, ``read_s`` reading and copying once woken; ``wakeups``
    counts the waits that blocked and ended with data (``ready_without_wait``:
    the polls that found data already queued). ``span_s`` runs from the first recv
    call to the last return, so ``busy_share`` = 1 - wait_s / span_s is the
    receiver thread's busy share (reads, copies and whatever the caller does
    between calls: parse hand-off, Q1 put). ``rx_queue_bytes_*`` sample the
    kernel's receive queue on the stream's sockets (where /proc/net/tcp or
    FIONREAD offers it; None elsewhere)."""

    messages: int = 0
    bytes: int = 0
    oversize: int = 0
    connections: int = 0
    cut: int = 0  # connections that closed part-way through a message
    multipart: int = 0  # zmq messages of more than one frame (quarantined)
    # connections that ended: a peer leaving or found dead by keepalive (a cut link);
    # zmq: also one sending a message over max_message_bytes (libzmq drops it at its
    # size header, before buffering it)
    disconnects: int = 0
    protocol_errors: int = 0
    errors: list[str] = field(default_factory=list)
    wait_s: float = 0.0
    read_s: float = 0.0
    wakeups: int = 0
    t_first: float | None = None
    t_last: float | None = None
    rx_queue_samples: list[int] = field(default_factory=list)

    ready_without_wait: int = 0

    def waited(self, t_start: float, t_woke: float, ready: bool) -> None:
        """A poll/select from t_start to t_woke; ``ready``: it found data. One that
        returns within _IMMEDIATE_S found data already queued (no wake-up)."""
        if self.t_first is None:
            self.t_first = t_start
        self.wait_s += t_woke - t_start
        if ready and t_woke - t_start > _IMMEDIATE_S:
            self.wakeups += 1
        elif ready:
            self.ready_without_wait += 1

    def read(self, t_woke: float, t_done: float) -> None:
        self.read_s += t_done - t_woke
        self.t_last = t_done

    def as_dict(self) -> dict[str, object]:
        # one snapshot: the receiver thread may still be adding to these while the
        # summary is made, and every figure below must come from the same moment
        t_first, t_last, wait_s, read_s = self.t_first, self.t_last, self.wait_s, self.read_s
        span = (t_last - t_first) if t_first is not None and t_last is not None else None
        rxq = self.rx_queue_samples
        return {
            "messages": self.messages, "bytes": self.bytes, "oversize": self.oversize,
            "connections": self.connections, "cut": self.cut, "multipart": self.multipart,
            "disconnects": self.disconnects,
            "protocol_errors": self.protocol_errors, "errors": self.errors[-10:],
            "span_s": None if span is None else round(span, 6),
            "wait_s": round(wait_s, 6), "read_s": round(read_s, 6),
            "busy_share": round(max(0.0, 1.0 - wait_s / span), 4) if span else None,
            "wakeups": self.wakeups, "ready_without_wait": self.ready_without_wait,
            "bytes_per_wakeup": round(self.bytes / max(self.wakeups, 1), 1) if self.bytes else None,
            "rx_queue_bytes_mean": round(sum(rxq) / len(rxq), 1) if rxq else None,
            "rx_queue_bytes_max": max(rxq) if rxq else None,
            "rx_queue_samples": len(rxq),
        }


_IMMEDIATE_S = 1e-4  # a poll that returns data sooner found it already queued
_RXQ_EVERY_S = 0.05  # at most this often the kernel's receive queue is sampled
_RXQ_MAX_SHARE = 0.02  # ...and with at most this share of the receiver's time
#: keepalive on the stream's connections: a peer that stops answering (a cut link,
#: a host gone) is found within about IDLE + CNT * INTVL seconds of silence
KEEPALIVE_IDLE_S = 2
KEEPALIVE_INTVL_S = 1
KEEPALIVE_CNT = 3


def _keepalive(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTVL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_CNT)):
        opt = getattr(socket, name, None)
        if opt is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)


def _proc_rx_queue(port: int, local: bool) -> int | None:
    """Bytes in the kernel's receive queues of the established TCP sockets whose
    local (or remote) port is ``port`` (Linux /proc/net/tcp*); None elsewhere."""
    total, seen = 0, False
    # a busy host lists thousands of sockets: skip, without splitting it, every line
    # that does not mention the port at all
    port_hex = f":{port:04X} "
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as fh:
                next(fh, None)
                for line in fh:
                    if port_hex not in line:
                        continue
                    f = line.split()
                    if len(f) < 5 or f[3] != "01":  # 01: ESTABLISHED
                        continue
                    addr = f[1] if local else f[2]
                    if int(addr.rsplit(":", 1)[1], 16) == port:
                        total += int(f[4].split(":")[1], 16)
                        seen = True
        except OSError:
            continue
    return total if seen else None


class Receiver:
    """Base: ``recv`` and ``close``; ``url`` is the address bound or connected to."""

    url: str
    stats: ReceiverStats

    def recv(self, timeout_s: float) -> RawMessage | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _bind_error(url: str, exc: OSError | Exception) -> UsageError:
    code = getattr(exc, "errno", None)
    if code == errno.EADDRINUSE:
        return UsageError(f"cannot bind {url}: address in use")
    if code == errno.EADDRNOTAVAIL:
        return UsageError(f"cannot bind {url}: address not available on this host")
    if code in (errno.EACCES, errno.EPERM):
        return UsageError(f"cannot bind {url}: permission denied")
    return UsageError(f"cannot bind {url}: {exc}")


# --------------------------------------------------------------------------
# ZeroMQ


class ZmqReceiver(Receiver):
    """pyzmq PULL. ``role``: bind | connect."""

    def __init__(self, url: str, role: str, max_message_bytes: int, rcvhwm: int = 1000,
                 clock: Callable[[], float] = now, rcvbuf: int | None = None) -> None:
        import zmq  # the consumer extra

        self._zmq = zmq
        self.clock = clock
        self.url = url
        self.max_message_bytes = max_message_bytes
        self.stats = ReceiverStats()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.LINGER, 0)
        # messages libzmq reads ahead per connection while the consumer is busy:
        # part of the backpressure chain, and of the consumer's memory in bursts
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        # libzmq refuses a bigger message at its size header and drops that connection,
        # so an oversize message is never buffered (no count of its own: see disconnects)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if rcvbuf is not None:  # SO_RCVBUF of every connection (None: the kernel's autotuning)
            self._sock.setsockopt(zmq.RCVBUF, rcvbuf)
        # a peer behind a cut link is found dead by keepalive within about
        # KEEPALIVE_IDLE_S + 3 * KEEPALIVE_INTVL_S, and counted as a disconnect
        self._sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        self._sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
        self._sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S)
        self._sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT)
        self._mon = self._sock.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED)
        host, port = split_url(url)
        # the kernel queues of the stream's TCP sockets: ours have the bound port as
        # their local port, or the server's as their remote one
        self._rxq_port: int | None = port if url.startswith("tcp://") else None
        self._rxq_local = role == "bind"
        self._rxq_next = 0.0
        if ":" in host:
            self._sock.setsockopt(zmq.IPV6, 1)
        try:
            if role == "bind":
                self._sock.bind(url)
            else:
                self._sock.connect(url)
        except zmq.ZMQError as exc:
            self.close()
            raise _bind_error(url, exc) from None

    def _sample_rx_queue(self, t: float) -> None:
        if self._rxq_port is None or t < self._rxq_next:
            return
        t0 = now()
        q = _proc_rx_queue(self._rxq_port, self._rxq_local)
        cost = now() - t0
        # reading /proc/net/tcp holds this thread (and the GIL) for as long as the host
        # has sockets: sample at most every _RXQ_EVERY_S, and less often where one
        # sample costs more than _RXQ_MAX_SHARE of that
        self._rxq_next = t + max(_RXQ_EVERY_S, cost / _RXQ_MAX_SHARE)
        if q is not None:
            self.stats.rx_queue_samples.append(q)

    def recv(self, timeout_s: float) -> RawMessage | None:
        zmq = self._zmq
        t_wait = now()
        got = self._sock.poll(int(max(timeout_s, 0) * 1000), zmq.POLLIN)
        t_woke = now()
        self.stats.waited(t_wait, t_woke, bool(got))
        while self._mon.poll(0):
            event = self._mon.recv_multipart()[0]
            if struct.unpack("=H", event[:2])[0] == zmq.EVENT_DISCONNECTED:
                self.stats.disconnects += 1
            else:
                self.stats.connections += 1
        if not got:
            self.stats.t_last = t_woke
            return None
        self._sample_rx_queue(t_woke)
        frames = self._sock.recv_multipart(copy=False)
        t = self.clock()
        payload: bytes | memoryview = frames[0].buffer
        n = sum(len(f.buffer) for f in frames)
        self.stats.messages += 1
        self.stats.bytes += n
        self.stats.read(t_woke, now())
        if len(frames) > 1:
            # LCLStreamer sends one frame per message: joining frames would hide the
            # second batch's sequence number inside the first
            self.stats.multipart += 1
            return RawMessage(memoryview(payload)[:HEAD_KEEP], n, t, reject=(
                f"multipart: {len(frames)} frames ({', '.join(str(len(f.buffer)) for f in frames[:8])}"
                f"{', ...' if len(frames) > 8 else ''} bytes); LCLStreamer sends one frame "
                f"per message"))
        if n > self.max_message_bytes:
            self.stats.oversize += 1
            return RawMessage(memoryview(payload)[:HEAD_KEEP], n, t, oversize=True)
        return RawMessage(payload, n, t)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sock.disable_monitor()
        with contextlib.suppress(Exception):
            self._mon.close(linger=0)
        with contextlib.suppress(Exception):
            self._sock.close(linger=0)
        with contextlib.suppress(Exception):
            self._ctx.term()


# --------------------------------------------------------------------------
# plain TCP and nng: length-prefixed streams


class _Conn:
    """One peer connection: its socket and its sans-IO framing state."""

    def __init__(self, sock: socket.socket, peer: str, wire: Any) -> None:
        self.sock = sock
        self.peer = peer
        self.wire = wire
        self.chunk = _CHUNK_MIN  # bytes the next read asks for

    @property
    def mid_message(self) -> bool:
        """Part-way through a message (not through nng's connection header)."""
        return bool(self.wire.ready and self.wire.unprocessed_bytes)


class StreamReceiver(Receiver):
    """Length-prefixed messages over TCP (``kind`` tcp), or nng SP Pull0 (``kind`` nng)."""

    def __init__(self, kind: str, url: str, role: str, max_message_bytes: int,
                 connect_timeout_s: float = 30.0, clock: Callable[[], float] = now,
                 rcvbuf: int | None = None) -> None:
        self.kind = kind
        self.rcvbuf = rcvbuf
        self.clock = clock
        self.url = url
        self.role = role
        self.max_message_bytes = max_message_bytes
        self.stats = ReceiverStats()
        self._sel = selectors.DefaultSelector()
        self._ready: deque[RawMessage] = deque()
        self._listener: socket.socket | None = None
        self._conns: dict[int, _Conn] = {}
        self._host, self._port = split_url(url)
        self._connect_deadline = now() + connect_timeout_s
        self._next_connect = 0.0
        self._rxq_next = 0.0
        if role == "bind":
            host = "" if self._host in ("*", "0.0.0.0") else self._host
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                self._listener = socket.create_server((host, self._port), family=family, backlog=64)
            except OSError as exc:
                raise _bind_error(url, exc) from None
            if rcvbuf is not None:  # accepted connections inherit it
                self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._listener.setblocking(False)
            self._sel.register(self._listener, selectors.EVENT_READ, None)

    def _try_connect(self) -> None:
        t = now()
        if self._conns or t < self._next_connect:
            return
        try:
            sock = socket.create_connection((self._host, self._port), timeout=1.0)
            if self.rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        except OSError as exc:
            if t > self._connect_deadline and not self.stats.connections:
                raise UsageError(f"cannot connect to {self.url}: {exc}") from None
            self._next_connect = t + 0.1
            return
        self._add(sock, f"{self._host}:{self._port}")

    def _add(self, sock: socket.socket, peer: str) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(sock)
        wire = new_connection(self.kind, "PULL", max_message_bytes=self.max_message_bytes,
                              on_oversize="skip", keep_head=HEAD_KEEP)
        opening = wire.initiate()  # nng: our Pull0 header; tcp: nothing
        if opening:
            with contextlib.suppress(OSError):
                sock.sendall(opening)
        conn = _Conn(sock, peer, wire)
        self._conns[sock.fileno()] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)
        self.stats.connections += 1

    def _drop(self, conn: _Conn, why: str | None = None, *, ended: bool = True) -> None:
        if ended:  # the peer left or failed; not our own close at the end
            self.stats.disconnects += 1
        if conn.mid_message:
            self.stats.cut += 1
        if why:
            self.stats.protocol_errors += 1
            self.stats.errors.append(f"{conn.peer}: {why}")
            log.warning("dropping connection %s: %s", conn.peer, why)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def recv(self, timeout_s: float) -> RawMessage | None:
        if self._ready:
            return self._ready.popleft()
        if self.role == "connect":
            self._try_connect()
        deadline = now() + max(timeout_s, 0.0)
        while True:
            t_wait = now()
            remaining = deadline - t_wait
            events = self._sel.select(timeout=max(remaining, 0.0) if self._sel.get_map() else 0)
            t_woke = now()
            self.stats.waited(t_wait, t_woke, bool(events))
            for key, _ in events:
                if key.data is None:
                    self._accept()
                else:
                    self._sample_fionread(key.data, t_woke)
                    self._read(key.data)
            self.stats.read(t_woke, now())
            if self._ready:
                return self._ready.popleft()
            if not self._sel.get_map() and remaining > 0:
                # connect role between attempts: nothing to wait on but the clock
                time.sleep(min(remaining, 0.05))
            if now() >= deadline:
                return None
            if self.role == "connect":
                self._try_connect()

    def _sample_fionread(self, conn: _Conn, t: float) -> None:
        """The bytes waiting in this socket's kernel receive queue (FIONREAD)."""
        if t < self._rxq_next:
            return
        self._rxq_next = t + _RXQ_EVERY_S
        with contextlib.suppress(OSError, ValueError):
            buf = fcntl.ioctl(conn.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            self.stats.rx_queue_samples.append(struct.unpack("i", buf)[0])

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._add(sock, f"{addr[0]}:{addr[1]}")

    def _read(self, conn: _Conn) -> None:
        # bounded per call so one busy peer cannot starve the others or the stop check
        for _ in range(64):
            try:
                chunk = conn.sock.recv(conn.chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop(conn, f"read failed: {exc}" if conn.mid_message else None)
                return
            # a big buffer per read costs an allocation each: grow it only while the
            # peer fills it (big messages), shrink it back when it does not
            if len(chunk) == conn.chunk:
                conn.chunk = min(2 * conn.chunk, _CHUNK_MAX)
            elif len(chunk) < conn.chunk // 4:
                conn.chunk = max(conn.chunk // 2, _CHUNK_MIN)
            conn.wire.receive_data(chunk)  # b"": the peer closed its side
            if not self._events(conn) or not chunk:
                return

    def _events(self, conn: _Conn) -> bool:
        """Turn what the framing has into messages; False once the connection is gone."""
        while True:
            try:
                event = conn.wire.next_event()
            except RemoteProtocolError as exc:
                self._drop(conn, str(exc))
                return False
            if event is NEED_DATA:
                return True
            if isinstance(event, Message):
                self.stats.messages += 1
                self.stats.bytes += event.nbytes
                self._ready.append(RawMessage(event.payload, event.nbytes, self.clock(), conn.peer))
            elif isinstance(event, OversizeMessage):
                self.stats.messages += 1
                self.stats.oversize += 1
                self.stats.bytes += event.nbytes
                self._ready.append(RawMessage(event.head, event.nbytes, self.clock(), conn.peer,
                                              oversize=True))
            elif isinstance(event, ConnectionClosed):
                self._drop(conn)
                return False

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn, ended=False)
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        self._sel.close()


def check_bindable(url: str) -> None:
    """Raise UsageError now if ``url`` cannot be bound (in use, not local), without
    keeping it: a probe bind with SO_REUSEADDR, as libzmq and our listener use."""
    host, port = split_url(url)
    host = "" if host in ("*", "0.0.0.0") else host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _bind_error(url, exc) from None


def open_receiver(transport: str, url: str, role: str, max_message_bytes: int,
                  rcvhwm: int = 1000, clock: Callable[[], float] = now,
                  rcvbuf: int | None = None) -> Receiver:
    """A bound (``role`` bind) or connecting receiver; ``rcvhwm`` applies to zmq.
    ``clock`` stamps arrivals (waits and timeouts are on the real clock: they wait
    on sockets). ``rcvbuf``: SO_RCVBUF in bytes for its connections (None: the
    kernel's autotuning). Raises UsageError (in use, bad address)."""
    if transport == "zmq":
        return ZmqReceiver(url, role, max_message_bytes, rcvhwm, clock=clock, rcvbuf=rcvbuf)
    if transport in ("tcp", "nng"):
        return StreamReceiver(transport, url, role, max_message_bytes, clock=clock,
                              rcvbuf=rcvbuf)
    raise UsageError(f"transport: {transport!r} is not one of zmq, nng, tcp")
