"""ZMTP 3.x with the NULL mechanism (ZeroMQ RFC 23 and RFC 37), sans-IO.

What goes on the wire, in order, from each side::

    greeting (64 octets)
        signature  FF 00 00 00 00 00 00 00 01 7F   (libzmq's padding; byte 9 must be odd)
        version    03 01                           (we send 3.1 and accept any 3.x)
        mechanism  "NULL" padded with zeros to 20 octets
        as-server  00 | 01
        filler     31 zero octets
    READY command   Socket-Type (and Identity if set), once the peer's greeting is valid
    frames          flags (MORE=1, LONG=2, COMMAND=4; other bits zero)
                    size: 1 octet, or 8 octets big-endian when LONG
                    body

A command body is a 1-octet name length, the name, then its data. READY data is a
list of properties: 1-octet name length, name, 4-octet big-endian value length,
value. PING data is a 2-octet TTL (deciseconds) and up to 16 octets of context;
the answer is PONG with the same context.

libzmq does not send its greeting in one piece: 10 octets of signature, then the
major version once it has seen ours, then the rest. The greeting is therefore
validated octet by octet as it arrives (a non-ZeroMQ peer is refused at its first
byte) and ``initiate()`` returns our whole greeting at once, so neither side waits
for the other.
"""

from __future__ import annotations

import struct

from simstream.wire.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Command,
    LocalProtocolError,
    Message,
    PeerGreeting,
    PeerReady,
    RemoteProtocolError,
    _Connection,
)

GREETING_SIZE = 64
SIGNATURE = b"\xff" + b"\x00" * 7 + b"\x01" + b"\x7f"
VERSION = (3, 1)
MECHANISM = "NULL"

FLAG_MORE = 0x01
FLAG_LONG = 0x02
FLAG_COMMAND = 0x04
_RESERVED_FLAGS = 0xF8
_MAX_SHORT = 255
_MAX_FRAME = 2**63 - 1
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")

#: Which peer socket types each socket type may talk to (RFC 23).
COMPATIBLE: dict[str, frozenset[str]] = {
    "REQ": frozenset({"REP", "ROUTER"}),
    "REP": frozenset({"REQ", "DEALER"}),
    "DEALER": frozenset({"REP", "DEALER", "ROUTER"}),
    "ROUTER": frozenset({"REQ", "DEALER", "ROUTER"}),
    "PUB": frozenset({"SUB", "XSUB"}),
    "XPUB": frozenset({"SUB", "XSUB"}),
    "SUB": frozenset({"PUB", "XPUB"}),
    "XSUB": frozenset({"PUB", "XPUB"}),
    "PUSH": frozenset({"PULL"}),
    "PULL": frozenset({"PUSH"}),
    "PAIR": frozenset({"PAIR"}),
}


def greeting(*, as_server: bool = False, version: tuple[int, int] = VERSION) -> bytes:
    """Our 64-octet greeting with the NULL mechanism."""
    return (
        SIGNATURE
        + bytes(version)
        + MECHANISM.encode().ljust(20, b"\x00")
        + bytes((1 if as_server else 0,))
        + b"\x00" * 31
    )


def frame_header(nbytes: int, *, more: bool = False, command: bool = False) -> bytes:
    """Flags octet and size (1 octet up to 255, else 8 octets big-endian with LONG).

    Raises LocalProtocolError for a size outside 0..2**63-1."""
    if not 0 <= nbytes <= _MAX_FRAME:
        raise LocalProtocolError(f"frame size {nbytes} is outside 0..2**63-1")
    flags = (FLAG_MORE if more else 0) | (FLAG_COMMAND if command else 0)
    if nbytes <= _MAX_SHORT:
        return bytes((flags, nbytes))
    return bytes((flags | FLAG_LONG,)) + _U64.pack(nbytes)


def command_frame(name: str, data: bytes = b"") -> bytes:
    """A whole command frame: header, name length, name, data."""
    raw = name.encode("ascii")
    if not 0 < len(raw) <= 255:
        raise LocalProtocolError(f"command name {name!r} must be 1..255 ASCII characters")
    body = bytes((len(raw),)) + raw + data
    return frame_header(len(body), command=True) + body


def encode_properties(properties: dict[str, bytes]) -> bytes:
    """READY metadata: for each, 1-octet name length, name, 4-octet value length, value."""
    out = bytearray()
    for name, value in properties.items():
        raw = name.encode("ascii")
        out += bytes((len(raw),)) + raw + _U32.pack(len(value)) + value
    return bytes(out)


def parse_properties(data: bytes) -> dict[str, bytes]:
    """Inverse of ``encode_properties``; raises RemoteProtocolError when truncated."""
    props: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        nlen = data[pos]
        pos += 1
        if nlen == 0 or pos + nlen + 4 > len(data):
            raise RemoteProtocolError("malformed READY metadata: truncated property name")
        name = data[pos : pos + nlen].decode("ascii")
        pos += nlen
        (vlen,) = _U32.unpack_from(data, pos)
        pos += 4
        if pos + vlen > len(data):
            raise RemoteProtocolError(f"malformed READY metadata: value of {name!r} truncated")
        props[name] = data[pos : pos + vlen]
        pos += vlen
    return props


def _split_command(body: bytes) -> tuple[str, bytes]:
    if not body or body[0] == 0 or 1 + body[0] > len(body):
        raise RemoteProtocolError(f"malformed command frame {body[:32]!r}")
    name = body[1 : 1 + body[0]].decode("ascii")
    return name, body[1 + body[0] :]


class ZmtpConnection(_Connection):
    """One end of a ZMTP 3.x connection with the NULL mechanism.

    ``socket_type``: ours ("PUSH" for the producer, "PULL" for the consumer).
    ``as_server``: the greeting's as-server flag (libzmq ignores it for NULL).
    ``identity``: sent as the READY Identity property when given.
    ``max_message_bytes``: cap on one incoming message (all frames) or command.

    Raises LocalProtocolError for an unknown socket type."""

    def __init__(
        self,
        socket_type: str = "PUSH",
        *,
        as_server: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        identity: bytes | None = None,
    ) -> None:
        super().__init__(max_message_bytes=max_message_bytes)
        socket_type = socket_type.upper()
        if socket_type not in COMPATIBLE:
            raise LocalProtocolError(
                f"unknown ZeroMQ socket type {socket_type!r} (known: {', '.join(COMPATIBLE)})"
            )
        self.socket_type = socket_type
        self.as_server = as_server
        self.identity = identity
        self.peer_version: tuple[int, int] | None = None
        self.peer_socket_type: str | None = None
        self._state = "greeting"  # -> "ready_wait" -> "traffic"
        self._ready_queued = False
        self._ready_sent = False
        self._frames: list[bytes] = []  # finished frames of the message being received
        self._frames_bytes = 0  # their payload bytes
        self._frames_wire = 0  # their bytes on the wire, headers included

    # -- outgoing --------------------------------------------------------
    def _opening(self) -> bytes:
        return greeting(as_server=self.as_server)

    def data_to_send(self) -> bytes:
        if self._ready_queued:
            self._ready_sent = True
        return super().data_to_send()

    def message_header(self, nbytes: int, *, more: bool = False) -> bytes:
        """Header of one message frame of ``nbytes`` (``more``: another frame follows).

        Raises LocalProtocolError before PeerReady, before our READY was taken from
        ``data_to_send()``, for a socket type that does not send (PULL), or for a bad size."""
        if self.socket_type == "PULL":
            raise LocalProtocolError("a PULL socket does not send messages")
        self._check_sendable(nbytes)
        if not self._ready_sent:
            raise LocalProtocolError("our READY is still queued: send data_to_send() first")
        return frame_header(nbytes, more=more)

    def send_frames(self, frames: list[bytes]) -> bytes:
        """A multipart message as bytes (copies; for tests and small messages)."""
        if not frames:
            raise LocalProtocolError("a message has at least one frame")
        out = bytearray()
        for i, frame in enumerate(frames):
            out += self.message_header(len(frame), more=i < len(frames) - 1) + frame
        return bytes(out)

    # -- incoming --------------------------------------------------------
    def _pending_bytes(self) -> int:
        return self._frames_wire

    def _parse(self) -> PeerGreeting | PeerReady | Message | Command | None:
        if self._state == "greeting":
            return self._parse_greeting()
        while True:
            head = self._frame_header()
            if head is None:
                return None
            flags, size, hlen = head
            if flags & FLAG_COMMAND:
                if flags & FLAG_MORE:
                    raise RemoteProtocolError("command frame with the MORE flag set")
                if self._frames:
                    raise RemoteProtocolError("command frame inside a multipart message")
                self._check_size(size, "command")
                if len(self._buf) < hlen + size:
                    return None
                self._buf.skip(hlen)
                return self._on_command(self._buf.take(size))
            if self._state != "traffic":
                raise RemoteProtocolError("message frame before the peer's READY command")
            if self.socket_type == "PUSH":
                raise RemoteProtocolError("the PULL peer sent a message; PULL sockets never send")
            self._check_size(self._frames_bytes + size)
            if len(self._buf) < hlen + size:
                return None
            self._buf.skip(hlen)
            self._frames.append(self._buf.take(size))
            self._frames_bytes += size
            self._frames_wire += hlen + size
            if not flags & FLAG_MORE:
                msg = Message(tuple(self._frames))
                self._frames = []
                self._frames_bytes = self._frames_wire = 0
                return msg

    def _parse_greeting(self) -> PeerGreeting | None:
        n = min(len(self._buf), GREETING_SIZE)
        if n == 0:
            return None
        head = self._buf.peek(n)
        if head[0] != 0xFF:
            raise RemoteProtocolError(
                f"bad ZMTP signature: first byte 0x{head[0]:02x}, expected 0xff "
                "(is the peer a ZeroMQ socket?)"
            )
        if n >= 10 and not head[9] & 0x01:
            raise RemoteProtocolError(
                f"bad ZMTP signature {head[:10].hex()}: byte 9 must be 0x7f "
                "(a ZMTP 1.0 peer? simstream needs ZMTP 3.x)"
            )
        if n >= 11 and head[10] < 3:
            raise RemoteProtocolError(
                f"peer speaks ZMTP version {head[10]}; simstream needs ZMTP 3.0 or later"
            )
        if n < GREETING_SIZE:
            return None
        major, minor = head[10], head[11]
        raw = head[12:32]
        name = raw.rstrip(b"\x00")
        if name != MECHANISM.encode() or b"\x00" in name:
            shown = name.decode("ascii", "replace")
            raise RemoteProtocolError(
                f"peer asks for security mechanism {shown!r}; simstream speaks NULL only"
            )
        self._buf.skip(GREETING_SIZE)
        self.peer_version = (major, minor)
        self._state = "ready_wait"
        props = {"Socket-Type": self.socket_type.encode()}
        if self.identity is not None:
            props["Identity"] = self.identity
        self._outgoing.append(command_frame("READY", encode_properties(props)))
        self._ready_queued = True
        return PeerGreeting((major, minor), MECHANISM, bool(head[32]))

    def _frame_header(self) -> tuple[int, int, int] | None:
        if len(self._buf) < 2:
            return None
        flags = self._buf.peek(1)[0]
        if flags & _RESERVED_FLAGS:
            raise RemoteProtocolError(
                f"frame flags 0x{flags:02x} have reserved bits set: not ZMTP framing"
            )
        if not flags & FLAG_LONG:
            return flags, self._buf.peek(2)[1], 2
        if len(self._buf) < 9:
            return None
        (size,) = _U64.unpack_from(self._buf.peek(9), 1)
        if size > _MAX_FRAME:
            raise RemoteProtocolError(f"frame size {size} has the top bit set")
        return flags, size, 9

    def _on_command(self, body: bytes) -> PeerReady | Command:
        name, data = _split_command(body)
        if self._state == "ready_wait":
            if name == "ERROR":
                reason = data[1 : 1 + data[0]].decode("utf-8", "replace") if data else ""
                raise RemoteProtocolError(f"peer refused the handshake: ERROR {reason!r}")
            if name != "READY":
                raise RemoteProtocolError(f"expected the READY command, got {name!r}")
            return self._on_ready(data)
        if name == "READY":
            raise RemoteProtocolError("second READY command after the handshake")
        if name == "PING":
            if len(data) < 2 or len(data) > 2 + 16:
                raise RemoteProtocolError(f"malformed PING: {len(data)} bytes of data")
            self._outgoing.append(command_frame("PONG", data[2:]))
        return Command(name, data)

    def _on_ready(self, data: bytes) -> PeerReady:
        props = parse_properties(data)
        by_lower = {k.lower(): v for k, v in props.items()}
        raw = by_lower.get("socket-type")
        if raw is None:
            raise RemoteProtocolError("peer's READY has no Socket-Type property")
        peer = raw.decode("ascii", "replace").upper()
        if peer not in COMPATIBLE[self.socket_type]:
            want = " or ".join(sorted(COMPATIBLE[self.socket_type]))
            raise RemoteProtocolError(
                f"peer socket type {peer} cannot talk to {self.socket_type} (needs {want})"
            )
        self.peer_socket_type = peer
        self._state = "traffic"
        self.ready = True
        return PeerReady(peer, props)
