"""nng's SP-over-TCP transport, as pynng speaks it: the ``nng`` transport kind.

Connection header, sent by both sides at once, 8 octets::

    00 'S' 'P' 00  protocol-id (16-bit big-endian)  00 00

``protocol-id`` names the sender's SP protocol (push0 = 0x50, pull0 = 0x51, checked
against pynng); nng refuses a header whose fixed or reserved bytes differ and a
peer whose protocol is not its protocol's peer. Then each message is an 8-byte
big-endian length and the payload (the framing of ``simstream.wire.lenprefix``);
pipeline (push/pull) messages carry no SP header of their own.
"""

from __future__ import annotations

import struct

from simstream.wire.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    LocalProtocolError,
    Message,
    OversizeMessage,
    PeerReady,
    RemoteProtocolError,
    _Connection,
)
from simstream.wire.lenprefix import LengthFraming, length_header

HEADER = struct.Struct(">4sH2s")
_MAGIC = b"\x00SP\x00"

#: SP protocol ids (nng's NNI_PROTO(major, minor) = major * 16 + minor).
PROTOCOL_IDS: dict[str, int] = {
    "PAIR": 0x10,
    "PUB": 0x20,
    "SUB": 0x21,
    "REQ": 0x30,
    "REP": 0x31,
    "PUSH": 0x50,
    "PULL": 0x51,
    "SURVEYOR": 0x62,
    "RESPONDENT": 0x63,
    "BUS": 0x70,
}
_NAMES = {v: k for k, v in PROTOCOL_IDS.items()}
_PEERS: dict[str, str] = {
    "PAIR": "PAIR",
    "PUB": "SUB",
    "SUB": "PUB",
    "REQ": "REP",
    "REP": "REQ",
    "PUSH": "PULL",
    "PULL": "PUSH",
    "SURVEYOR": "RESPONDENT",
    "RESPONDENT": "SURVEYOR",
    "BUS": "BUS",
}


def connection_header(socket_type: str) -> bytes:
    """The 8-byte header announcing ``socket_type`` ("PUSH" -> 00 'S' 'P' 00 00 50 00 00)."""
    return HEADER.pack(_MAGIC, PROTOCOL_IDS[socket_type], b"\x00\x00")


class NngConnection(_Connection):
    """One end of an nng TCP pipe.

    ``socket_type``: "PUSH" (the producer) or "PULL" (the consumer), or another SP
    protocol name. Raises LocalProtocolError for an unknown one. ``on_oversize``,
    ``keep_head``: see ``simstream.wire.base._Connection``."""

    def __init__(
        self, socket_type: str = "PUSH", *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_oversize: str = "error", keep_head: int = 0,
    ) -> None:
        super().__init__(max_message_bytes=max_message_bytes, on_oversize=on_oversize,
                         keep_head=keep_head)
        self._framing = LengthFraming()
        socket_type = socket_type.upper()
        if socket_type not in PROTOCOL_IDS:
            raise LocalProtocolError(
                f"unknown SP protocol {socket_type!r} (known: {', '.join(PROTOCOL_IDS)})"
            )
        self.socket_type = socket_type
        self.peer_socket_type: str | None = None

    def _opening(self) -> bytes:
        return connection_header(self.socket_type)

    def message_header(self, nbytes: int) -> bytes:
        """The 8-byte length before an ``nbytes`` payload.

        Raises LocalProtocolError before the peer's header was validated, for a PULL
        socket, or for a negative size."""
        if self.socket_type == "PULL":
            raise LocalProtocolError("a PULL socket does not send messages")
        self._check_sendable(nbytes)
        return length_header(nbytes)

    def _parse(self) -> PeerReady | Message | OversizeMessage | None:
        if not self.ready:
            return self._parse_header()
        msg = self._framing.parse(self, self._buf)
        if msg is not None and self.socket_type == "PUSH":
            raise RemoteProtocolError("the PULL peer sent a message; pull0 never sends")
        return msg

    def _pending_bytes(self) -> int:
        return self._framing.pending

    def _parse_header(self) -> PeerReady | None:
        # Check the fixed bytes as they arrive, so a non-nng peer is refused at once.
        if not len(self._buf):
            return None
        head = self._buf.peek(min(len(self._buf), HEADER.size))
        if head[:4] != _MAGIC[: len(head[:4])]:
            raise RemoteProtocolError(
                f"bad SP header {head!r}: expected 00 'S' 'P' 00 (is the peer nng?)"
            )
        if len(head) < HEADER.size:
            return None
        _, proto, reserved = HEADER.unpack(head)
        if reserved != b"\x00\x00":
            raise RemoteProtocolError(f"bad SP header {head!r}: reserved bytes are not zero")
        peer = _NAMES.get(proto)
        want = _PEERS[self.socket_type]
        if peer != want:
            shown = peer or f"unknown protocol 0x{proto:04x}"
            raise RemoteProtocolError(
                f"peer speaks SP {shown}; {self.socket_type} needs {want} "
                f"(0x{PROTOCOL_IDS[want]:02x})"
            )
        self._buf.skip(HEADER.size)
        self.peer_socket_type = peer
        self.ready = True
        return PeerReady(peer, {})
