# Layout: the sans-IO wire layer. Bytes in, events out; no sockets, no trio.
#   errors.py     ProtocolError / LocalProtocolError (our misuse) / RemoteProtocolError (peer garbage)
#   base.py       the events every protocol yields, the NEED_DATA sentinel, the receive buffer
#                 and the base connection (EOF, error state, the one place peer bytes are parsed)
#   this file     re-exports base.py and makes a connection for a transport kind
#   zmtp.py       ZMTP 3.x, NULL mechanism (libzmq / pyzmq peers)
#   nng.py        SP over TCP (nng / pynng peers)
#   lenprefix.py  plain TCP, 8-byte big-endian length per message
# The I/O loops around these live elsewhere (simstream.transport for the producer).
"""Sans-IO framing for the three transports simstream speaks.

Every connection object has the same shape (h11 style)::

    conn = ZmtpConnection("PUSH", as_server=False)
    sock.sendall(conn.initiate())            # our greeting / header (b"" for lenprefix)
    conn.receive_data(peer_bytes)            # only buffers; b"" means end of stream
    event = conn.next_event()                # one event, or NEED_DATA
    sock.sendall(conn.data_to_send())        # READY, PONG: bytes the protocol owes the peer
    sock.sendall(conn.message_header(n)); sock.sendall(payload)   # payload never copied

Events: ``PeerGreeting`` (ZMTP only), ``PeerReady``, ``Message``, ``Command`` (ZMTP
only), ``OversizeMessage`` (length-prefixed kinds with ``on_oversize="skip"``),
``ConnectionClosed``. Whatever the split of the incoming bytes, the sequence of
events is the same.
"""

from __future__ import annotations

from simstream.wire.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    NEED_DATA,
    Command,
    ConnectionClosed,
    Event,
    LocalProtocolError,
    Message,
    OversizeMessage,
    PeerGreeting,
    PeerReady,
    ProtocolError,
    RemoteProtocolError,
    _Connection,
)
from simstream.wire.lenprefix import LenPrefixConnection
from simstream.wire.nng import NngConnection
from simstream.wire.zmtp import ZmtpConnection

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
    "new_connection",
]


def new_connection(
    kind: str,
    socket_type: str,
    *,
    as_server: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    on_oversize: str = "error",
    keep_head: int = 0,
) -> _Connection:
    """A connection object for a transport kind of the profile: "zmq", "nng" or "tcp".

    ``socket_type`` is "PUSH" or "PULL" (ignored by "tcp"). ``on_oversize``,
    ``keep_head``: see ``_Connection`` ("skip" needs "nng" or "tcp"). Raises
    LocalProtocolError for an unknown kind or socket type."""
    if kind == "zmq":
        if on_oversize != "error":
            raise LocalProtocolError("on_oversize skip needs a length-prefixed kind (nng, tcp)")
        return ZmtpConnection(socket_type, as_server=as_server, max_message_bytes=max_message_bytes)
    if kind == "nng":
        return NngConnection(socket_type, max_message_bytes=max_message_bytes,
                             on_oversize=on_oversize, keep_head=keep_head)
    if kind == "tcp":
        return LenPrefixConnection(max_message_bytes=max_message_bytes,
                                   on_oversize=on_oversize, keep_head=keep_head)
    raise LocalProtocolError(f"unknown transport kind {kind!r} (expected zmq, nng or tcp)")
