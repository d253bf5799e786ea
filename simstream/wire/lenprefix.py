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
"""

from __future__ import annotations

import struct

from simstream.wire import (
    DEFAULT_MAX_MESSAGE_BYTES,
    LocalProtocolError,
    Message,
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


def parse_length_prefixed(conn: _Connection, buf: _ReceiveBuffer) -> Message | None:
    """One complete message off the front of ``buf``, or None when incomplete.

    Nothing is consumed until the whole message is there. Raises RemoteProtocolError
    (via ``conn._check_size``) as soon as the length exceeds the connection's cap."""
    if len(buf) < LENGTH.size:
        return None
    (nbytes,) = LENGTH.unpack(buf.peek(LENGTH.size))
    conn._check_size(nbytes)
    if len(buf) < LENGTH.size + nbytes:
        return None
    buf.skip(LENGTH.size)
    return Message((buf.take(nbytes),))


class LenPrefixConnection(_Connection):
    """Either end of a length-prefixed TCP stream. No handshake: ``initiate()``
    returns b"" and the connection is ready at once."""

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(max_message_bytes=max_message_bytes)
        self.ready = True

    def message_header(self, nbytes: int) -> bytes:
        """The 8-byte length to write before an ``nbytes`` payload.

        Raises LocalProtocolError for a negative size or before initiate()."""
        self._check_sendable(nbytes)
        return length_header(nbytes)

    def _parse(self) -> Message | None:
        return parse_length_prefixed(self, self._buf)
