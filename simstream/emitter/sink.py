"""The loopback sink: a small receiver, what arrived and when (the demo).

``listen`` speaks the three transports through simstream's own sans-IO wire
layer (``simstream.wire``), so a producer-only install needs no pyzmq for
``emit --loopback``; ``receive`` is the same on a real pyzmq PULL socket.

Not the consumer (that is ``simstream.pipeline``): it only timestamps each message,
decodes it with ``simstream.codec`` to read the simstream sequence and rank,
and prints one line per message with the gap since the previous one. Gaps
longer than ``stall_gap_s`` (100 ms) split the stream into bursts; the summary
lists them, so the demo shows the profile's bursts and stalls as they arrive.
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simstream import clock
from simstream.errors import UsageError
from simstream.records.contract import field_keys

__all__ = ["Arrival", "ReceiveSummary", "decode_ids", "format_arrival", "listen", "receive"]

STALL_GAP_S = 0.1


@dataclass(frozen=True)
class Arrival:
    """One received message. ``t``: Unix seconds; ``seq``/``rank``/``events`` None when the
    message carries no simstream fields or does not decode (``error`` says why)."""

    index: int
    t: float
    nbytes: int
    seq: int | None
    rank: int | None
    events: int | None
    error: str | None = None


@dataclass
class ReceiveSummary:
    t_start: float
    arrivals: list[Arrival] = field(default_factory=list)
    bound_url: str | None = None

    @property
    def undecodable(self) -> int:
        return sum(a.error is not None for a in self.arrivals)

    def gaps(self) -> list[tuple[float, float]]:
        """(arrival time of the message after the gap, gap in seconds) for gaps > 100 ms."""
        out = []
        for a, b in zip(self.arrivals, self.arrivals[1:], strict=False):
            if b.t - a.t > STALL_GAP_S:
                out.append((b.t, b.t - a.t))
        return out

    def bursts(self) -> list[tuple[float, float, int]]:
        """(start, end, messages) of each run of arrivals without a gap > 100 ms."""
        out: list[tuple[float, float, int]] = []
        start = None
        n = 0
        prev = None
        for a in self.arrivals:
            if prev is None or a.t - prev > STALL_GAP_S:
                if start is not None and prev is not None:
                    out.append((start, prev, n))
                start, n = a.t, 0
            n += 1
            prev = a.t
        if start is not None and prev is not None:
            out.append((start, prev, n))
        return out

    def lines(self) -> list[str]:
        n = len(self.arrivals)
        total = sum(a.nbytes for a in self.arrivals)
        seqs = [(a.rank, a.seq) for a in self.arrivals if a.seq is not None]
        dups = len(seqs) - len(set(seqs))
        out = [f"received {n} messages, {total / 1e6:.1f} MB, {self.undecodable} undecodable, "
               f"{dups} duplicated"]
        for s, e, k in self.bursts()[:50]:
            out.append(f"  burst +{s - self.t_start:8.3f}s .. +{e - self.t_start:8.3f}s: "
                       f"{k} messages")
        for t, g in self.gaps()[:50]:
            out.append(f"  stall {g * 1000:8.1f} ms before +{t - self.t_start:8.3f}s")
        return out


def decode_ids(buf: Any) -> tuple[int | None, int | None, int | None, str | None]:
    """(seq, rank, events, error) of one message, from its simstream fields.

    A message that decodes but carries no simstream fields (a real LCLStreamer)
    gives seq = rank = None and events from its first array.
    """
    from simstream import codec

    try:
        arrays = codec.decode(buf)
    except codec.CodecError as e:
        return None, None, None, f"undecodable: {e}"
    except Exception as e:  # noqa: BLE001 - a receiver must survive any peer bytes
        return None, None, None, f"undecodable: {type(e).__name__}: {e}"
    events = next((int(a.shape[0]) for a in arrays.values() if getattr(a, "ndim", 0) >= 1), None)

    def first(name: str) -> int | None:
        for key in field_keys(name):
            arr = arrays.get(key)
            if arr is not None and arr.size:
                return int(arr.reshape(-1)[0])
        return None

    return first("simstream_sequence"), first("simstream_rank"), events, None


def format_arrival(a: Arrival, t_start: float, prev_t: float | None) -> str:
    gap = "" if prev_t is None else f"gap {(a.t - prev_t) * 1000:8.1f} ms"
    ids = (f"seq {a.seq:>6} rank {a.rank:>3}" if a.seq is not None
           else f"seq {'-':>6} rank {'-':>3}")
    mark = ""
    if prev_t is not None and a.t - prev_t > STALL_GAP_S:
        mark = "  <- stall"
    if a.error:
        mark += f"  {a.error[:80]}"
    return f"+{a.t - t_start:9.4f}s  {ids}  {a.nbytes / 1e6:9.3f} MB  {gap}{mark}"


def _arrived(summary: ReceiveSummary, buf: Any, t: float, prev_t: float | None, *, decode: bool,
             echo: Callable[[str], None] | None,
             on_message: Callable[[Arrival], None] | None) -> None:
    """One message that arrived at ``t``: recorded in ``summary``, echoed, handed on."""
    seq, rank, events, err = decode_ids(buf) if decode else (None, None, None, None)
    a = Arrival(len(summary.arrivals), t, len(buf), seq, rank, events, err)
    summary.arrivals.append(a)
    if echo is not None:
        echo(format_arrival(a, summary.t_start, prev_t))
    if on_message is not None:
        on_message(a)


def receive(
    url: str,
    *,
    bind: bool = True,
    count: int | None = None,
    idle_timeout_s: float = 2.0,
    on_message: Callable[[Arrival], None] | None = None,
    echo: Callable[[str], None] | None = print,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    max_wait_s: float = 3600.0,
    decode: bool = True,
    on_bound: Callable[[str], None] | None = None,
) -> ReceiveSummary:
    """Receive on a pyzmq PULL socket until ``count`` messages, or ``idle_timeout_s``
    without one once something has arrived (or once ``stop`` is set), or ``max_wait_s``.

    ``url``: tcp://HOST:PORT (port 0 with ``bind``: a free one, see
    ``ReceiveSummary.bound_url``, also passed to ``on_bound`` before ``ready`` is set). ``echo``: where the
    per-message lines go (None: silent). Raises UsageError if the address cannot be
    bound or connected.
    """
    import zmq

    if decode:
        from simstream import codec  # noqa: F401 - imported now, not on the first message

    ctx: Any = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    summary = ReceiveSummary(t_start=clock.now())
    try:
        try:
            if bind:
                if url.endswith(":0"):
                    port = sock.bind_to_random_port(url.rsplit(":", 1)[0])
                    summary.bound_url = f"{url.rsplit(':', 1)[0]}:{port}"
                else:
                    sock.bind(url)
                    summary.bound_url = url
            else:
                sock.connect(url)
                summary.bound_url = url
        except zmq.ZMQError as e:
            raise UsageError(f"receiver cannot {'bind' if bind else 'connect'} {url}: {e}") from None
        if on_bound is not None:
            on_bound(summary.bound_url)
        if ready is not None:
            ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        t_last = None
        prev_t = None
        deadline = summary.t_start + max_wait_s
        while count is None or len(summary.arrivals) < count:
            now = clock.now()
            if now >= deadline:
                break
            idle_from = t_last if t_last is not None else None
            if stop is not None and stop.is_set():
                idle_from = t_last if t_last is not None else now - idle_timeout_s
            if idle_from is not None and now - idle_from >= idle_timeout_s:
                break
            if not poller.poll(50):
                continue
            frames = sock.recv_multipart(copy=True)
            t = clock.now()
            buf = frames[-1] if len(frames) == 1 else b"".join(frames)
            _arrived(summary, buf, t, prev_t, decode=decode, echo=echo, on_message=on_message)
            prev_t = t
            t_last = t
    finally:
        sock.close(linger=0)
    return summary


def listen(
    url: str,
    *,
    kind: str = "zmq",
    count: int | None = None,
    idle_timeout_s: float = 2.0,
    on_message: Callable[[Arrival], None] | None = None,
    echo: Callable[[str], None] | None = print,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    max_wait_s: float = 3600.0,
    decode: bool = True,
    on_bound: Callable[[str], None] | None = None,
) -> ReceiveSummary:
    """``receive`` without pyzmq: a listening TCP socket whose peers (any number, one
    per rank) are spoken to with ``simstream.wire`` as a PULL socket of ``kind``
    ("zmq": ZMTP 3.x, "nng": SP push0/pull0, "tcp": 8-byte length prefix).

    Same stop rules and summary as ``receive``. A peer that breaks the protocol is
    dropped with one line on ``echo``; the others go on. Raises UsageError if the
    address cannot be bound or ``kind`` is unknown.
    """
    from simstream.wire import NEED_DATA, ConnectionClosed, Message, RemoteProtocolError
    from simstream.wire import new_connection as wire_connection
    from simstream.wire.errors import LocalProtocolError

    try:
        wire_connection(kind, "PULL")
    except LocalProtocolError as e:
        raise UsageError(str(e)) from None
    if decode:
        from simstream import codec  # noqa: F401 - imported now, not on the first message
    if not url.startswith("tcp://") or ":" not in url[6:]:
        raise UsageError(f"receiver address {url!r}: expected tcp://HOST:PORT")
    host, _, port_s = url[6:].rpartition(":")
    host = host.strip("[]")
    summary = ReceiveSummary(t_start=clock.now())
    try:
        lsock = socket.create_server((host, int(port_s)), family=socket.AF_INET6
                                     if ":" in host else socket.AF_INET, backlog=64)
    except (OSError, ValueError) as e:
        raise UsageError(f"receiver cannot bind {url}: {e}") from None
    sel = selectors.DefaultSelector()
    peers: dict[socket.socket, Any] = {}
    try:
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ)
        bound_host = f"[{host}]" if ":" in host else host
        summary.bound_url = f"tcp://{bound_host}:{lsock.getsockname()[1]}"
        if on_bound is not None:
            on_bound(summary.bound_url)
        if ready is not None:
            ready.set()
        t_last: float | None = None
        prev_t: float | None = None
        deadline = summary.t_start + max_wait_s

        def drop(sock: socket.socket) -> None:
            sel.unregister(sock)
            peers.pop(sock, None)
            sock.close()

        while count is None or len(summary.arrivals) < count:
            now = clock.now()
            if now >= deadline:
                break
            idle_from = t_last
            if stop is not None and stop.is_set():
                idle_from = t_last if t_last is not None else now - idle_timeout_s
            if idle_from is not None and now - idle_from >= idle_timeout_s:
                break
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is lsock:
                    try:
                        peer, _addr = lsock.accept()
                    except BlockingIOError:
                        continue
                    peer.settimeout(10.0)  # for the few handshake bytes we owe it
                    conn = wire_connection(kind, "PULL", as_server=True)
                    try:
                        peer.sendall(conn.initiate())
                    except OSError:
                        peer.close()
                        continue
                    peers[peer] = conn
                    sel.register(peer, selectors.EVENT_READ)
                    continue
                conn = peers[sock]
                try:
                    data = sock.recv(1 << 20)
                except OSError:
                    data = b""
                conn.receive_data(data)
                try:
                    while True:
                        event = conn.next_event()
                        owed = conn.data_to_send()
                        if owed:
                            sock.sendall(owed)
                        if event is NEED_DATA:
                            break
                        if isinstance(event, ConnectionClosed):
                            if event.unprocessed_bytes and echo is not None:
                                echo(f"peer closed part-way through a message "
                                     f"({event.unprocessed_bytes} bytes discarded)")
                            drop(sock)
                            break
                        if not isinstance(event, Message):
                            continue
                        t = clock.now()
                        buf = event.payload
                        _arrived(summary, buf, t, prev_t, decode=decode, echo=echo,
                                 on_message=on_message)
                        prev_t = t_last = t
                except RemoteProtocolError as e:
                    if echo is not None:
                        echo(f"peer dropped: {e}")
                    drop(sock)
                except OSError:
                    drop(sock)
    finally:
        for sock in list(peers):
            sock.close()
        sel.close()
        lsock.close()
    return summary
