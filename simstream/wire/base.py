"""The wire layer's shared parts: the events every protocol yields, the NEED_DATA
sentinel, the receive buffer and the base connection (end of stream, error
state, the one place peer bytes are parsed). The protocols (``zmtp``, ``nng``,
``lenprefix``) build on it; ``simstream.wire`` re-exports it.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from simstream.wire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "NEED_DATA",
    "Command",
    "ConnectionClosed",
    "Event",
    "LocalProtocolError",
    "Message",
    "OversizeMessage",
    "PeerGreeting",
    "PeerReady",
    "ProtocolError",
    "RemoteProtocolError",
]

#: Default cap on one incoming message (all frames together), bytes: 4 GiB. A peer
#: announcing more is refused before any of it is buffered.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024**3


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: Returned by ``next_event()`` when more bytes are needed to make progress.
NEED_DATA = _Sentinel("NEED_DATA")


@dataclass(frozen=True)
class PeerGreeting:
    """The peer's ZMTP greeting was valid (version (major, minor), mechanism name)."""

    version: tuple[int, int]
    mechanism: str
    as_server: bool


@dataclass(frozen=True)
class PeerReady:
    """Handshake complete: messages may flow. ``socket_type`` is the peer's, upper case
    ("PULL"); ``properties`` are ZMTP READY metadata (empty for nng)."""

    socket_type: str
    properties: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """One complete message. ``frames`` has one entry except for ZMTP multipart."""

    frames: tuple[bytes, ...]

    @property
    def payload(self) -> bytes:
        """All frames joined; the frame itself (no copy) for a single-frame message."""
        if len(self.frames) == 1:
            return self.frames[0]
        return b"".join(self.frames)

    @property
    def nbytes(self) -> int:
        return sum(len(f) for f in self.frames)


@dataclass(frozen=True)
class OversizeMessage:
    """A message whose declared length was over ``max_message_bytes``, read past
    without being buffered (``on_oversize="skip"``, length-prefixed kinds only), so
    the stream stays in step. ``nbytes``: its declared length; ``head``: its first
    bytes, at most the connection's ``keep_head``."""

    nbytes: int
    head: bytes


@dataclass(frozen=True)
class Command:
    """A ZMTP command after the handshake: PING, PONG, ERROR, SUBSCRIBE, CANCEL, ..."""

    name: str
    body: bytes


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer ended the stream. ``unprocessed_bytes`` > 0: it stopped part-way
    through a greeting, frame or message (a cut or lost message), those bytes
    (framing included) are discarded."""

    unprocessed_bytes: int = 0


Event = PeerGreeting | PeerReady | Message | OversizeMessage | Command | ConnectionClosed


class _ReceiveBuffer:
    """Incoming bytes as a queue of chunks: feeding never copies a ``bytes`` chunk and
    taking n bytes copies them at most once (not at all when a chunk is taken whole)."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._head = 0  # bytes of _chunks[0] already consumed
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        chunk = data if type(data) is bytes else bytes(data)
        if chunk:
            self._chunks.append(chunk)
            self._len += len(chunk)

    def peek(self, n: int) -> bytes:
        """The first n bytes (n <= len), without consuming them; meant for headers."""
        first = self._chunks[0]
        if len(first) - self._head >= n:
            return first[self._head : self._head + n]
        parts = [first[self._head :]]
        got = len(parts[0])
        for chunk in list(self._chunks)[1:]:
            parts.append(chunk[: n - got])
            got += len(parts[-1])
            if got >= n:
                break
        return b"".join(parts)

    def skip(self, n: int) -> None:
        self._take(n, keep=False)

    def take(self, n: int) -> bytes:
        return self._take(n, keep=True)

    def _take(self, n: int, *, keep: bool) -> bytes:
        if n > self._len:
            raise AssertionError("take beyond the buffer")  # a parser bug, not peer data
        self._len -= n
        parts: list[bytes] = []
        while n:
            first = self._chunks[0]
            avail = len(first) - self._head
            if avail <= n:
                if keep:
                    parts.append(first if self._head == 0 else first[self._head :])
                self._chunks.popleft()
                self._head = 0
                n -= avail
            else:
                if keep:
                    parts.append(first[self._head : self._head + n])
                self._head += n
                n = 0
        if not keep:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _Connection:
    """Shared machinery: buffering, end of stream, error state, error conversion.

    Subclasses implement ``_parse()`` (return an event, or None when the buffer holds
    too little) and ``_pending_bytes()`` (bytes of an unfinished unit, for
    ``ConnectionClosed.unprocessed_bytes``).

    ``on_oversize``: ``"error"`` (a message over ``max_message_bytes`` is a
    RemoteProtocolError) or ``"skip"`` (where the kind supports it: an
    ``OversizeMessage`` event keeping its first ``keep_head`` bytes).
    """

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 on_oversize: str = "error", keep_head: int = 0) -> None:
        if max_message_bytes < 0:
            raise LocalProtocolError(f"max_message_bytes must be >= 0, got {max_message_bytes}")
        if on_oversize not in ("error", "skip"):
            raise LocalProtocolError(f"on_oversize must be error or skip, got {on_oversize!r}")
        if keep_head < 0:
            raise LocalProtocolError(f"keep_head must be >= 0, got {keep_head}")
        self.max_message_bytes = max_message_bytes
        self.on_oversize = on_oversize
        self.keep_head = keep_head
        self._buf = _ReceiveBuffer()
        self._outgoing: list[bytes] = []
        self._initiated = False
        self._eof = False
        self._closed_event: ConnectionClosed | None = None
        self._error: RemoteProtocolError | None = None
        self._fed = 0
        self.ready = False  # handshake complete: messages may be sent and received

    # -- outgoing --------------------------------------------------------
    def initiate(self) -> bytes:
        """Our opening bytes (greeting, header); call once, before anything else.

        Raises LocalProtocolError when called twice."""
        if self._initiated:
            raise LocalProtocolError("initiate() was already called")
        self._initiated = True
        return self._opening()

    def _opening(self) -> bytes:
        return b""

    def data_to_send(self) -> bytes:
        """Bytes the protocol itself owes the peer (READY, PONG); empties the queue.

        Write them between messages, never inside one."""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def send_message(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Header and payload as one bytes object (copies the payload; for small
        messages and tests; the transport writes ``message_header()`` then the payload)."""
        return self.message_header(memoryview(payload).nbytes) + bytes(payload)

    def message_header(self, nbytes: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_sendable(self, nbytes: int) -> None:
        if nbytes < 0:
            raise LocalProtocolError(f"message size must be >= 0, got {nbytes}")
        if self._error is not None:
            raise LocalProtocolError(f"connection is dead after: {self._error}")
        if not self._initiated:
            raise LocalProtocolError("call initiate() and send its bytes before any message")
        if not self.ready:
            raise LocalProtocolError("handshake not complete: wait for PeerReady before sending")

    # -- incoming --------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; b"" means the peer closed its side.

        Raises LocalProtocolError when called after end of stream."""
        if self._eof:
            raise LocalProtocolError("receive_data() after end of stream")
        if len(data) == 0:
            self._eof = True
        else:
            self._fed += len(data)
            self._buf.feed(data)

    @property
    def unprocessed_bytes(self) -> int:
        """Bytes received but not yet turned into an event (buffered, or read past
        inside an oversize message being skipped): > 0 means part-way through a unit."""
        return len(self._buf) + self._pending_bytes()

    @property
    def consumed_bytes(self) -> int:
        """Bytes of the peer's stream turned into events so far (greeting, commands,
        whole messages): the stream offset where the next event's bytes begin."""
        return self._fed - len(self._buf) - self._pending_bytes()

    def next_event(self) -> Event | _Sentinel:
        """The next event, or NEED_DATA.

        Raises RemoteProtocolError when the peer's bytes break the protocol (and on
        every call after that); LocalProtocolError when called before initiate()."""
        if self._error is not None:
            raise self._error
        if self._closed_event is not None:
            return self._closed_event
        if not self._initiated:
            raise LocalProtocolError("call initiate() before next_event()")
        try:
            event = self._parse()
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        except (ValueError, struct.error, IndexError, UnicodeDecodeError) as exc:
            # Any parser slip on peer bytes is the peer's garbage, not a crash.
            self._error = RemoteProtocolError(f"malformed data from peer: {exc}")
            raise self._error from exc
        if event is not None:
            return event
        if self._eof:
            self._closed_event = ConnectionClosed(len(self._buf) + self._pending_bytes())
            return self._closed_event
        return NEED_DATA

    def _parse(self) -> Event | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pending_bytes(self) -> int:
        return 0

    def _check_size(self, nbytes: int, what: str = "message") -> None:
        if nbytes > self.max_message_bytes:
            raise RemoteProtocolError(
                f"peer announced a {what} of {nbytes} bytes, over max_message_bytes="
                f"{self.max_message_bytes}"
            )
