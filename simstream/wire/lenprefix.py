"""Plain TCP framing with a length prefix: the ``tcp`` transport kind.

Framing (both directions, no handshake, no greeting, no commands)::

    message = length payload
    length  = 8 octets, unsigned integer, big-endian (network order): len(payload)
    payload = `length` octets, passed through untouched

A zero-length message is the 8 bytes ``00 00 00 00 00 00 00 00`` alone. Messages
follow each other back to back; the stream ends with the TCP connection (FIN). A
stream that ends part-way through a length or a payload carried an incomplete (cut
or lost) message, which the receiver discards. A reader in any language needs only
``read exactly 8 bytes, unpack >Q, read exactly that many bytes``.

The same length-plus-payload framing is what nng puts after its 8-byte connection
header (see ``simstream.wire.nng``), which reuses the parser here.

With ``on_oversize="skip"`` a length over ``max_message_bytes`` is not an error:
the payload is read past as it arrives (its first ``keep_head`` bytes kept), never
buffered whole, and an ``OversizeMessage`` follows, so the stream stays in step.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from simstream.wire.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    LocalProtocolError,
    Message,
    OversizeMessage,
    _Connection,
    _ReceiveBuffer,
)

LENGTH = struct.Struct(">Q")
_MAX_LENGTH = 2**64 - 1


def length_header(nbytes: int) -> bytes:
    """The 8-byte big-endian length; raises LocalProtocolError outside 0..2**64-1."""
    if not 0 <= nbytes <= _MAX_LENGTH:
        raise LocalProtocolError(f"message size {nbytes} does not fit an 8-byte length")
    return LENGTH.pack(nbytes)


@dataclass
class Skipping:
    """An oversize message being read past: its declared length, the bytes of it
    still to come, the head kept so far."""

    nbytes: int
    remaining: int
    head: bytearray = field(default_factory=bytearray)

    @property
    def pending(self) -> int:
        """Bytes of it consumed without an event yet (its length field included)."""
        return LENGTH.size + self.nbytes - self.remaining


def skip_oversize(conn: _Connection, buf: _ReceiveBuffer, skipping: Skipping) -> OversizeMessage | None:
    """Read past what ``buf`` holds of an oversize message; its event once all of it
    went by, else None."""
    while skipping.remaining and len(buf):
        n = min(skipping.remaining, len(buf))
        keep = max(0, min(n, conn.keep_head - len(skipping.head)))
        if keep:
            skipping.head += buf.take(keep)
        buf.skip(n - keep)
        skipping.remaining -= n
    if skipping.remaining:
        return None
    return OversizeMessage(skipping.nbytes, bytes(skipping.head))


def parse_length_prefixed(conn: _Connection, buf: _ReceiveBuffer) -> Message | Skipping | None:
    """One complete message off the front of ``buf``, or None when incomplete.

    Nothing is consumed until the whole message is there. Raises RemoteProtocolError
    (via ``conn._check_size``) as soon as the length exceeds the connection's cap,
    unless the connection skips oversize messages: then the length is consumed and
    a ``Skipping`` returned for ``skip_oversize``."""
    if len(buf) < LENGTH.size:
        return None
    (nbytes,) = LENGTH.unpack(buf.peek(LENGTH.size))
    if nbytes > conn.max_message_bytes and conn.on_oversize == "skip":
        buf.skip(LENGTH.size)
        return Skipping(nbytes, nbytes)
    conn._check_size(nbytes)
    if len(buf) < LENGTH.size + nbytes:
        return None
    buf.skip(LENGTH.size)
    return Message((buf.take(nbytes),))


class LengthFraming:
    """The length-prefixed message parser with its oversize skipping state, for a
    connection to own (``LenPrefixConnection``, and nng once its header is done)."""

    def __init__(self) -> None:
        self.skipping: Skipping | None = None

    def parse(self, conn: _Connection, buf: _ReceiveBuffer) -> Message | OversizeMessage | None:
        if self.skipping is None:
            got = parse_length_prefixed(conn, buf)
            if not isinstance(got, Skipping):
                return got
            self.skipping = got
        event = skip_oversize(conn, buf, self.skipping)
        if event is not None:
            self.skipping = None
        return event

    @property
    def pending(self) -> int:
        return 0 if self.skipping is None else self.skipping.pending


class LenPrefixConnection(_Connection):
    """Either end of a length-prefixed TCP stream. No handshake: ``initiate()``
    returns b"" and the connection is ready at once. ``on_oversize``, ``keep_head``:
    see ``simstream.wire.base._Connection``."""

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 on_oversize: str = "error", keep_head: int = 0) -> None:
        super().__init__(max_message_bytes=max_message_bytes, on_oversize=on_oversize,
                         keep_head=keep_head)
        self._framing = LengthFraming()
        self.ready = True

    def message_header(self, nbytes: int) -> bytes:
        """The 8-byte length to write before an ``nbytes`` payload.

        Raises LocalProtocolError for a negative size or before initiate()."""
        self._check_sendable(nbytes)
        return length_header(nbytes)

    def _parse(self) -> Message | OversizeMessage | None:
        return self._framing.parse(self, self._buf)

    def _pending_bytes(self) -> int:
        return self._framing.pending
