"""``simstream verify``: did the shaping happen? Read a capture, rebuild what went
over the wire, compare it with the profile (and the emit log when given).

Steps:

1. Read the pcap (Ethernet, IPv4/IPv6, TCP; microsecond or nanosecond stamps).
2. For each TCP connection on the port, pick the data direction (the one that
   carries more payload), order its segments by sequence number and keep each
   stream byte with the time it was first seen (retransmissions do not count
   twice; a hole the capture missed ends the framing walk there).
3. Feed the stream to the sans-IO receiver of the profile's transport
   (``simstream.wire``: ZMTP, nng or length-prefixed TCP) to find where every
   message starts and ends, hence its first- and last-byte times.
4. Lay the profile's timeline over the capture (from the first ``t_sched`` of the
   emit log, else from the first data packet) and, per phase, compare the
   achieved on-wire rate with the cap; list silences on the wire and whether a
   stall (a zero-rate phase, a ``stall`` fault, an idle emitter) explains them;
   with an emit log, count messages both ways and measure emit-to-wire latency.

On-wire rate counts what the kernel's shaper counts: each TCP segment with its
Ethernet, IP and TCP headers. A GSO packet seen by the capture is counted as
the segments it becomes (payload / MSS, one set of headers each).

Exit status: 0 when every check passes, 1 when one fails, 2 for bad input.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from simstream.errors import UsageError
from simstream.profile import Profile, find_profile, load_profile, split_url
from simstream.testbed import tc
from simstream.testbed.link import GilbertElliott

__all__ = [
    "Check",
    "Flow",
    "Report",
    "Loss",
    "WireMessage",
    "read_pcap",
    "tcp_flows",
    "verify_capture",
    "walk_messages",
]

ETH_HDR = 14
DEFAULT_MSS = 1448  # 1500-byte MTU, TCP timestamps on
DEFAULT_TOLERANCE = 0.10
DEFAULT_GAP_MS = 200.0
MIN_WINDOW_S = 0.2  # shorter windows are dominated by the token bucket's burst


# --------------------------------------------------------------------------
# pcap reading


def read_pcap(path: Path) -> Iterator[tuple[float, bytes, int]]:
    """(timestamp Unix s, frame bytes, original length) per packet. Raises UsageError."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally below
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e}") from None
    try:
        head = f.read(24)
        if len(head) < 24:
            raise UsageError(f"{path}: not a pcap file (too short)")
        magic = head[:4]
        table = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
                 b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
        if magic not in table:
            raise UsageError(f"{path}: not a pcap file (magic {magic.hex()}; pcapng is not read)")
        endian, frac = table[magic]
        linktype = struct.unpack(endian + "I", head[20:24])[0] & 0x0FFFFFFF
        if linktype != 1:
            raise UsageError(f"{path}: link type {linktype} is not Ethernet (1)")
        rec = struct.Struct(endian + "IIII")
        for _ in range(100_000_000):
            h = f.read(16)
            if len(h) < 16:
                return
            sec, sub, incl, orig = rec.unpack(h)
            data = f.read(incl)
            if len(data) < incl:
                return
            yield sec + sub * frac, data, orig
    finally:
        f.close()


@dataclass
class _Seg:
    ts: float
    seq: int
    payload: bytes
    flags: int
    hdr_len: int  # Ethernet + IP + TCP header bytes of this packet
    win: int
    plen: int = 0  # payload length on the wire (more than len(payload) when truncated)
    ts_ecr: int | None = None  # TCP timestamp option's echo reply
    ts_val: int | None = None  # TCP timestamp option's value

    @property
    def truncated(self) -> bool:
        return self.plen > len(self.payload)


@dataclass
class Flow:
    """One direction of one TCP connection."""

    src: tuple[str, int]
    dst: tuple[str, int]
    segs: list[_Seg] = field(default_factory=list)
    syn_seq: int | None = None
    mss: int | None = None
    fin_ts: float | None = None
    # (first-seen time, TSval) of every TCP timestamp this direction sent, ACKs included
    tsvals: list[tuple[float, int]] = field(default_factory=list)

    @property
    def payload_bytes(self) -> int:
        return sum(s.plen for s in self.segs)

    @property
    def truncated(self) -> bool:
        return any(s.truncated for s in self.segs)


def _ip(b: bytes) -> str:
    if len(b) == 4:
        return ".".join(str(x) for x in b)
    return ":".join(b[i:i + 2].hex() for i in range(0, 16, 2))


def _parse_tcp(frame: bytes) -> tuple[str, int, str, int, _Seg, bytes] | None:
    if len(frame) < ETH_HDR + 20:
        return None
    etype = struct.unpack_from("!H", frame, 12)[0]
    if etype == 0x0800:
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != 6:
            return None
        total = struct.unpack_from("!H", frame, 16)[0]
        src, dst = frame[26:30], frame[30:34]
        off = ETH_HDR + ihl
        # the IP length says how much payload there was even when the capture
        # kept only the first bytes of the packet (--snaplen)
        wire_end = ETH_HDR + total if total else len(frame)
    elif etype == 0x86DD:
        if frame[20] != 6:
            return None
        plen = struct.unpack_from("!H", frame, 18)[0]
        src, dst = frame[22:38], frame[38:54]
        off = ETH_HDR + 40
        wire_end = off + plen
    else:
        return None
    if len(frame) < off + 20:
        return None
    sport, dport, seq, _ack, doff_flags, win = struct.unpack_from("!HHIIHH", frame, off)
    thl = (doff_flags >> 12) * 4
    flags = doff_flags & 0x1FF
    options = frame[off + 20: off + thl]
    end = min(len(frame), wire_end)
    seg = _Seg(0.0, seq, frame[off + thl: end], flags, off + thl, win,
               max(0, wire_end - off - thl))
    return _ip(src), sport, _ip(dst), dport, seg, options


def _tcp_option(options: bytes, want: int, length: int) -> bytes | None:
    """The body of TCP option ``want`` when it has ``length`` bytes in all, None without one."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            return None
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options):
            return None
        ln = options[i + 1]
        if kind == want and ln == length and i + length <= len(options):
            return options[i + 2: i + length]
        i += max(ln, 2)
    return None


def _timestamps_option(options: bytes) -> tuple[int, int] | None:
    """(TSval, TSecr) of the TCP timestamps option (kind 8), None without one."""
    body = _tcp_option(options, 8, 10)
    if body is None:
        return None
    a, b = struct.unpack("!II", body)
    return int(a), int(b)


def receiver_rtts(data: Flow, acks: Flow, *, ack_clocked: bool = True) -> list[tuple[float, float]]:
    """(time, seconds) round trips seen where the capture is, from TCP timestamps.

    A TSval the receiver sent at t comes back as the TSecr of the first data
    segment the sender sent after hearing it; that segment's arrival minus t is
    one round trip plus whatever the sender waited. The TSval clock ticks every
    millisecond and t is the first ACK that carried it, so a sample may be up to
    1 ms long.

    ``ack_clocked``: keep only samples where data kept arriving between the ACK
    and its echo (the sender was sending on ACKs, not waiting for its
    application): the first segment after the sender was idle echoes an ACK sent
    before the silence and would count the silence as a round trip.
    """
    sent: dict[int, float] = {}
    for t, v in acks.tsvals:
        sent.setdefault(v, t)
    arrivals = sorted(s.ts for s in data.segs)
    out = []
    used: set[int] = set()
    for seg in sorted(data.segs, key=lambda x: x.ts):
        e = seg.ts_ecr
        if e is None or e in used or e not in sent or seg.ts < sent[e]:
            continue
        used.add(e)
        if ack_clocked:
            i = bisect.bisect_right(arrivals, sent[e])
            if i >= len(arrivals) or arrivals[i] >= seg.ts:
                continue
        out.append((seg.ts, seg.ts - sent[e]))
    return out


@dataclass(frozen=True)
class Loss:
    """Packets of one direction that the receiver never got in their first sending."""

    ts: float  # arrival of the packet after the hole (when the receiver saw the gap)
    packets: int  # estimated packets in the hole (its bytes / the flow's usual packet)
    nbytes: int


def receiver_losses(flow: Flow) -> tuple[list[Loss], int]:
    """Losses on the way to the capture point, from sequence holes that are filled later.

    On a link that keeps order, a segment starting beyond the highest byte seen
    so far means the bytes in between were sent and lost; the sender's
    retransmission filling the hole proves it. A hole never filled is the
    capture missing packets, not the link losing them, and is not counted
    (``reassemble`` reports it as missing bytes). A hole's packet count is the
    larger of the packets that resent bytes into it and its bytes over the median
    payload of the flow's packets (at least 1). A lost retransmission leaves no
    hole of its own and is not seen here: at loss p the count is short by about
    p of the losses.

    Returns (losses, bytes in holes never filled).
    """
    if not flow.segs:
        return [], 0
    offsets = _offsets(flow)
    sizes = sorted(s.plen for s in flow.segs)
    usual = max(1, sizes[len(sizes) // 2])
    highest: int | None = None
    # each hole: [start, end, ts, [(a, b) ranges resent into it], packets that resent new bytes]
    holes: list[list[Any]] = []
    ends: list[int] = []  # each hole's end: holes open in stream order and never overlap
    for s, start in zip(flow.segs, offsets, strict=True):
        end = start + s.plen
        if highest is None:
            highest = end
            continue
        if start > highest:
            holes.append([highest, start, s.ts, [], 0])
            ends.append(start)
        elif start < highest:
            for k in range(bisect.bisect_right(ends, start), len(holes)):
                h = holes[k]
                if h[0] >= end:
                    break
                a, b = max(start, h[0]), min(end, h[1])
                if a < b and not any(x <= a and b <= y for x, y in h[3]):
                    h[3].append((a, b))
                    h[4] += 1
        highest = max(highest, end)
    # a hole's packets: the larger of the resent packets that filled it and its bytes
    # over the usual packet (a retransmission may carry several lost packets' bytes)
    losses = [Loss(h[2], max(1, h[4], round((h[1] - h[0]) / usual)), h[1] - h[0])
              for h in holes if h[3]]
    return losses, sum(h[1] - h[0] for h in holes if not h[3])


def paired_packets(sent: Flow, got: Flow) -> tuple[list[tuple[float, float]], list[float]]:
    """One direction captured on both sides of the link: (arrival time, one-way delay s)
    of every packet seen on both, and the send times of those that never arrived.

    A packet is known on both sides by its sequence number, payload length and TCP
    timestamp value (a retransmission carries a later TSval than the original).
    Both captures must have seen the same packets: on the user-space link the
    producer's TUN device and the consumer's carry the same packets, whereas on a
    tc path the producer's capture is already past the loss.
    """
    first: dict[tuple[int, int, int | None], float] = {}
    for g in got.segs:
        first.setdefault((g.seq, g.plen, g.ts_val), g.ts)
    delays, lost = [], []
    for x in sent.segs:
        t = first.get((x.seq, x.plen, x.ts_val))
        if t is None:
            lost.append(x.ts)
        else:
            delays.append((t, t - x.ts))
    return delays, lost


def _mss_option(options: bytes) -> int | None:
    body = _tcp_option(options, 2, 4)
    return None if body is None else int(struct.unpack("!H", body)[0])


def tcp_flows(path: Path, port: int) -> list[Flow]:
    """Every direction of every TCP connection with ``port`` at either end, in first-seen order."""
    current: dict[tuple[str, int, str, int], Flow] = {}
    found: list[Flow] = []
    for ts, frame, _orig in read_pcap(path):
        parsed = _parse_tcp(frame)
        if parsed is None:
            continue
        src, sport, dst, dport, seg, options = parsed
        if port not in (sport, dport):
            continue
        seg.ts = ts
        tso = _timestamps_option(options)
        if tso is not None:
            seg.ts_val, seg.ts_ecr = tso
        key = (src, sport, dst, dport)
        fl = current.get(key)
        if fl is None or (seg.flags & 0x02 and fl.syn_seq is not None and fl.syn_seq != seg.seq):
            # a new connection reusing the address pair gets its own flow
            fl = current[key] = Flow((src, sport), (dst, dport))
            found.append(fl)
        if seg.flags & 0x02:  # SYN
            fl.syn_seq = seg.seq
            fl.mss = _mss_option(options) or fl.mss
        if seg.flags & 0x01 and fl.fin_ts is None:
            fl.fin_ts = ts
        if tso is not None and (not fl.tsvals or fl.tsvals[-1][1] != tso[0]):
            fl.tsvals.append((ts, tso[0]))
        if seg.plen:
            fl.segs.append(seg)
    return found


# --------------------------------------------------------------------------
# stream reassembly


@dataclass
class Stream:
    """The contiguous start of a flow's byte stream, each chunk with its first-seen time."""

    chunks: list[tuple[int, bytes, float]]  # (offset, data, ts), ascending offsets
    new_bytes: int  # bytes seen for the first time (holes excluded)
    retransmitted_bytes: int
    missing_bytes: int  # bytes in holes the capture did not see
    contiguous: int  # length of the hole-free prefix

    def time_at(self, offset: int) -> float:
        """When the byte at ``offset`` was first seen."""
        i = bisect.bisect_right(self._starts, offset) - 1
        return self.chunks[max(i, 0)][2]

    def __post_init__(self) -> None:
        self._starts = [c[0] for c in self.chunks]


def _offsets(flow: Flow) -> list[int]:
    """Stream offset of each of ``flow``'s segments (sequence numbers unwrapped past 4 GiB
    by following the stream in time order)."""
    base = (flow.syn_seq + 1) if flow.syn_seq is not None else flow.segs[0].seq

    def rel(seq: int) -> int:
        r = (seq - base) % 2**32
        return r - 2**32 if r >= 2**31 else r

    offsets = []
    hi = 0
    for s in flow.segs:
        r = rel(s.seq)
        cand = r + (hi // 2**32) * 2**32
        if cand < hi - 2**31:
            cand += 2**32
        offsets.append(cand)
        hi = max(hi, cand + len(s.payload))
    return offsets


def reassemble(flow: Flow) -> Stream:
    """Order ``flow``'s payload by sequence number; first sighting wins."""
    if not flow.segs:
        return Stream([], 0, 0, 0, 0)
    offsets = _offsets(flow)
    order = sorted(range(len(flow.segs)), key=lambda i: (offsets[i], flow.segs[i].ts))
    chunks: list[tuple[int, bytes, float]] = []
    cursor = 0
    new = retx = missing = 0
    contiguous: int | None = None
    for i in order:
        s = flow.segs[i]
        start, end = offsets[i], offsets[i] + len(s.payload)
        if end <= cursor or start < 0:
            retx += len(s.payload)
            continue
        if start > cursor:
            missing += start - cursor
            if contiguous is None:
                contiguous = cursor
            cursor = start
        cut = cursor - start
        if cut:
            retx += cut
        chunks.append((cursor, s.payload[cut:], s.ts))
        new += end - cursor
        cursor = end
    return Stream(chunks, new, retx, missing, cursor if contiguous is None else contiguous)


# --------------------------------------------------------------------------
# messages


@dataclass(frozen=True)
class WireMessage:
    start: int  # stream offset of its first byte (framing included)
    end: int  # offset just past its last byte
    nbytes: int  # payload bytes
    t_first: float
    t_last: float


@dataclass
class Walk:
    messages: list[WireMessage]
    error: str | None
    leftover_bytes: int


def walk_messages(stream: Stream, kind: str) -> Walk:
    """Messages of a producer->consumer stream, found by ``simstream.wire``'s receiver.

    ``kind``: the profile's transport kind (zmq, nng, tcp). The receiver poses as
    the consumer (PULL). Offsets come from how much of the fed bytes the receiver
    has consumed after each event.
    """
    from simstream.wire import NEED_DATA, Message, ProtocolError, new_connection

    conn = new_connection(kind, "PULL", as_server=True)
    conn.initiate()
    fed = 0
    last_end = 0
    out: list[WireMessage] = []
    error = None
    limit = stream.contiguous

    def consumed() -> int:
        pending = conn._pending_bytes()  # noqa: SLF001 - frames of a multipart in progress
        return fed - len(conn._buf) - pending  # noqa: SLF001

    for off, data, _ts in stream.chunks:
        if off >= limit:
            break
        piece = data[: limit - off]
        conn.receive_data(piece)
        fed += len(piece)
        try:
            for _ in range(1_000_000):
                ev = conn.next_event()
                if ev is NEED_DATA:
                    break
                end = consumed()
                if isinstance(ev, Message):
                    start = last_end
                    out.append(WireMessage(start, end, ev.nbytes, stream.time_at(start),
                                           stream.time_at(end - 1)))
                last_end = end
        except ProtocolError as e:
            error = f"{kind} framing broken at stream offset {last_end}: {e}"
            break
    return Walk(out, error, fed - last_end)


# --------------------------------------------------------------------------
# timeline and checks


@dataclass(frozen=True)
class Window:
    phase: str
    start: float
    end: float
    cap_mbps: float | None
    rate_hz: float | None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    burst_loss: bool = False  # Gilbert-Elliott: loss_pct is its stationary mean
    rate_stage: bool = False  # a cap or a trace: queueing adds to the round trip


#: slack above the profile's round trip for a user-space forwarder's late wake-ups
#: (a loaded machine: medians 5-8 ms high at load 11-13 on 2 cores, BENCHMARKS.md)
#: and the TCP timestamp clock's millisecond: the larger of these, in ms and as a
#: fraction of the round trip
RTT_SLACK_MS = 10.0
RTT_SLACK_FRAC = 0.25
#: fewest samples a phase needs before its round trip or loss is judged
MIN_RTT_SAMPLES = 10
MIN_LOSS_PACKETS = 50


def rtt_bounds(w: Window, emulator: str, ways: int | None = None) -> tuple[float, float]:
    """(low, high) ms the median round trip must lie in, for ``emulator``.

    The profile's round trip R is 2 x latency through the user-space link (both
    ways) and 1 x latency with tc netem (the producer's egress only); ``ways``
    1 gives the one-way delay's bounds for either. Low: R
    less three standard deviations of the jitter (sqrt(2) x jitter with two
    directions) less 1 ms. High: R plus 4 x jitter (a link that keeps packet
    order holds a packet behind a later-drawn one, so a dense stream's delays
    are the running maximum of the draws, up to about 2 jitters a direction)
    plus the larger of 10 ms and 25 % of R (late wake-ups, the timestamp clock).
    """
    ways = ways or (2 if emulator == "user-link" else 1)
    r = ways * w.latency_ms
    low = max(0.0, r - 3 * math.sqrt(ways) * w.jitter_ms - 1.0)
    high = r + 2 * ways * w.jitter_ms + max(RTT_SLACK_MS, RTT_SLACK_FRAC * r)
    return low, high


def _rtt_check(where: str, w: Window, samples: list[float], emulator: str | None) -> Check:
    """Round trips from TCP timestamps in one phase, against the profile's latency."""
    lat = f"{w.latency_ms:g} ms" + (f" +- {w.jitter_ms:g} ms jitter" if w.jitter_ms else "")
    if emulator not in ("user-link", "tc"):
        expected = (f"{2 * w.latency_ms:g} ms with the user-space link (latency {lat} each "
                    f"way); {w.latency_ms:g} ms with tc netem (producer's egress only)")
        return _rtt_info(where, samples, expected, "which emulator shaped is unknown "
                         "(--emulator): not judged")
    low, high = rtt_bounds(w, emulator)
    ways = "each way" if emulator == "user-link" else "producer's egress"
    expected = f"median in {low:.1f}-{high:.1f} ms (latency {lat} {ways})"
    if emulator == "tc":
        return _rtt_info(where, samples, expected, "tc netem's latency is not judged here "
                         "(no kernel of this project has netem to calibrate it)")
    if len(samples) < MIN_RTT_SAMPLES:
        return Check("rtt", where, f"{len(samples)} samples", expected, "SKIP",
                     f"fewer than {MIN_RTT_SAMPLES} ACK-clocked TCP timestamp echoes")
    srt = sorted(samples)
    med = srt[len(srt) // 2] * 1e3
    measured = _rtt_text(srt)
    if med < low:
        return Check("rtt", where, measured, expected, "FAIL",
                     "round trips shorter than the profile's: the latency was not applied")
    if med <= high:
        return Check("rtt", where, measured, expected, "PASS",
                     "from TCP timestamps echoed at the consumer")
    if w.rate_stage:
        return Check("rtt", where, measured, expected, "PASS",
                     "above the path's round trip: packets queue at the rate cap (bufferbloat)")
    return Check("rtt", where, measured, expected, "FAIL",
                 "round trips longer than the profile's and no rate cap to queue at")


def _delay_check(where: str, w: Window, delays: list[float]) -> Check:
    """One-way delays producer -> consumer from paired captures, against the profile."""
    low, high = rtt_bounds(w, "user-link", ways=1)
    lat = f"{w.latency_ms:g} ms" + (f" +- {w.jitter_ms:g} ms jitter" if w.jitter_ms else "")
    expected = f"median in {low:.1f}-{high:.1f} ms (latency {lat})"
    if len(delays) < MIN_RTT_SAMPLES:
        return Check("delay", where, f"{len(delays)} packets", expected, "SKIP",
                     f"fewer than {MIN_RTT_SAMPLES} packets seen on both sides")
    srt = sorted(delays)
    med = srt[len(srt) // 2] * 1e3
    measured = _rtt_text(srt).replace(" samples)", " packets)")
    if med < low:
        return Check("delay", where, measured, expected, "FAIL",
                     "shorter than the profile's latency: it was not applied")
    if med <= high or w.rate_stage:
        return Check("delay", where, measured, expected, "PASS",
                     "producer -> consumer, each packet on both sides of the link"
                     + ("" if med <= high else "; packets queue at the rate cap"))
    return Check("delay", where, measured, expected, "FAIL",
                 "longer than the profile's latency and no rate cap to queue at")


def _rtt_text(srt: list[float]) -> str:
    def q(f: float) -> float:
        return srt[min(len(srt) - 1, int(f * len(srt)))] * 1e3

    return f"median {q(0.5):.2f} ms (p10 {q(0.1):.2f}, p90 {q(0.9):.2f}; {len(srt)} samples)"


def _rtt_info(where: str, samples: list[float], expected: str, note: str) -> Check:
    if not samples:
        return Check("rtt", where, "no samples", expected, "INFO",
                     "no ACK-clocked TCP timestamp echoes in this phase")
    return Check("rtt", where, _rtt_text(sorted(samples)), expected, "INFO", note)


def loss_tolerance(n: int, pct: float) -> float:
    """Packets a loss count may differ from n x pct %: three binomial standard deviations
    plus one packet."""
    p = pct / 100
    return 3 * math.sqrt(n * p * (1 - p)) + 1


def _loss_check(where: str, w: Window, lost: int, seen: int, emulator: str | None,
                paired: bool = False) -> Check:
    """Packets lost producer -> consumer in one phase against the profile's loss."""
    n = lost + seen
    pct = 100 * lost / n if n else 0.0
    measured = f"{pct:.2f} % ({lost} of {n} packets)"
    tol = loss_tolerance(n, w.loss_pct)
    lo, hi = max(0.0, n * w.loss_pct / 100 - tol), n * w.loss_pct / 100 + tol
    kind = "burst loss, stationary mean" if w.burst_loss else "random loss"
    expected = (f"{w.loss_pct:.3g} % {kind}: {lo:.0f}-{hi:.0f} packets "
                f"(3 binomial std + 1)")
    if emulator != "user-link":
        return Check("loss", where, measured, f"{w.loss_pct:.3g} % ({kind})", "INFO",
                     "judged for the user-space link only" if emulator == "tc"
                     else "which emulator shaped is unknown (--emulator): not judged")
    if n < MIN_LOSS_PACKETS:
        return Check("loss", where, f"{n} packets", expected, "SKIP",
                     f"fewer than {MIN_LOSS_PACKETS} packets to count losses among")
    if w.burst_loss:
        return Check("loss", where, measured, f"{w.loss_pct:.3g} % ({kind})", "INFO",
                     "bursts make the count vary more than a binomial: not judged")
    if lo <= lost <= hi:
        return Check("loss", where, measured, expected, "PASS",
                     "packets captured at the producer's side and never at the consumer's"
                     if paired else
                     "sequence holes the sender's retransmissions filled, at the consumer "
                     "(lost retransmissions and tail losses are not seen)")
    if lost > hi and w.rate_stage:
        return Check("loss", where, measured, expected, "WARN",
                     "more than asked: the drop-tail queue at the rate cap drops too")
    return Check("loss", where, measured, expected, "FAIL",
                 "fewer losses than asked: loss was not applied" if lost < lo
                 else "more losses than asked, and no queue to drop them")


def timeline_windows(profile: Profile, t0: float, t_end: float) -> list[Window]:
    """The profile's phases laid from ``t0`` until ``t_end`` (bounded by phase count)."""
    out: list[Window] = []
    t = t0
    phases = profile.timeline.phases
    for _ in range(100_000):
        for ph in phases:
            if t >= t_end:
                return out
            shaping = tc.shaping_from_network(profile.network, ph.network,
                                              ranks=profile.transport.ranks)
            end = t_end if ph.duration_s is None else min(t + ph.duration_s, t_end)
            burst = profile.network.loss_burst
            loss = shaping.netem.loss_pct
            if burst is not None:
                loss = GilbertElliott(burst.p_pct, burst.r_pct, burst.bad_loss_pct,
                                      burst.good_loss_pct).mean_loss_pct
            out.append(Window(ph.name, t, end, shaping.rate_mbps, ph.rate_hz,
                              shaping.netem.delay_ms, shaping.netem.jitter_ms, loss,
                              burst is not None,
                              shaping.rate_mbps is not None or profile.network.trace is not None))
            if ph.duration_s is None:
                return out
            t += ph.duration_s
        if not profile.timeline.repeat:
            return out
    return out


@dataclass(frozen=True)
class Check:
    name: str
    where: str
    measured: str
    expected: str
    status: str  # PASS, FAIL, WARN, INFO, SKIP
    note: str = ""


@dataclass
class Report:
    checks: list[Check]
    facts: dict[str, Any]

    @property
    def failed(self) -> bool:
        return any(c.status == "FAIL" for c in self.checks)


def _wire_bytes(seg: _Seg, mss: int) -> int:
    """Bytes the shaper counts for a captured packet (a GSO packet as its segments)."""
    n = max(1, math.ceil(seg.plen / mss))
    return seg.plen + n * seg.hdr_len


def load_emit_log(path: Path) -> list[dict[str, Any]]:
    """Records of an emit log (docs/formats.md). Raises UsageError naming the bad line."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise UsageError(f"{path}:{i}: not JSON: {e}") from None
        if not isinstance(rec, dict) or "t_sched" not in rec:
            raise UsageError(f"{path}:{i}: not an emit-log record (no t_sched)")
        out.append(rec)
    return out


def _stall_windows(profile: Profile, t0: float, t_end: float,
                   windows: list[Window]) -> list[tuple[float, float, str]]:
    out = [(w.start, w.end, f"phase {w.phase} (rate_hz 0)") for w in windows if w.rate_hz == 0]
    for f in profile.faults:
        if f.kind != "stall" or f.duration_ms is None:
            continue
        dur = f.duration_ms / 1e3
        if f.at_s is not None:
            out.append((t0 + f.at_s, t0 + f.at_s + dur, "stall fault"))
        if f.every_s is not None:
            k = 1
            while t0 + k * f.every_s < t_end and k < 100_000:
                s = t0 + k * f.every_s
                out.append((s, s + dur, "stall fault"))
                k += 1
    return out


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def verify_capture(pcap: Path, profile: Profile, *, emit_log: list[dict[str, Any]] | None = None,
                   port: int | None = None, framing: str | None = None,
                   tolerance: float = DEFAULT_TOLERANCE, gap_ms: float = DEFAULT_GAP_MS,
                   saturated: bool = False, emulator: str | None = None,
                   sender_pcap: Path | None = None) -> Report:
    """All checks for one capture. Raises UsageError for an unreadable capture.

    ``emulator``: what shaped the link ("user-link" or "tc"; None: unknown), which
    says how far a round trip goes through the latency and whether the round
    trips and losses are judged or only reported.
    ``sender_pcap``: a capture of the same port on the producer's side of the
    user-space link (its TUN device); each data packet is then followed across
    the link: one-way delays and losses counted exactly, not inferred.
    """
    port = port if port is not None else split_url(profile.transport.all_urls[0])[1]
    kind = framing or profile.transport.kind
    flows = tcp_flows(pcap, port)
    checks: list[Check] = []
    facts: dict[str, Any] = {"port": port, "framing": kind}
    # data direction of each connection: the side with more payload
    by_conn: dict[tuple[frozenset[tuple[str, int]], int], list[Flow]] = {}
    generation: dict[tuple[tuple[str, int], tuple[str, int]], int] = {}
    for fl in flows:
        # the k-th flow A->B and the k-th flow B->A are one connection
        k = generation.get((fl.src, fl.dst), 0)
        generation[(fl.src, fl.dst)] = k + 1
        by_conn.setdefault((frozenset((fl.src, fl.dst)), k), []).append(fl)
    data_flows = [max(fls, key=lambda f: f.payload_bytes) for fls in by_conn.values()]
    data_flows = [f for f in data_flows if f.payload_bytes > 0]
    rtts: list[tuple[float, float]] = []
    for fls in by_conn.values():
        if len(fls) == 2:
            data, acks = sorted(fls, key=lambda f: f.payload_bytes, reverse=True)
            rtts += receiver_rtts(data, acks)
    losses: list[Loss] = []
    for fl in data_flows:
        losses += receiver_losses(fl)[0]
    paired: tuple[list[tuple[float, float]], list[float]] | None = None
    if sender_pcap is not None:
        sender_flows = tcp_flows(sender_pcap, port)
        delays: list[tuple[float, float]] = []
        dropped: list[float] = []
        for fl in data_flows:
            twin = next((f for f in sender_flows if (f.src, f.dst) == (fl.src, fl.dst)
                         and f.syn_seq == fl.syn_seq), None)
            if twin is None:
                raise UsageError(f"{sender_pcap}: no connection {fl.src} -> {fl.dst} "
                                 f"as in {pcap}: not the same link's other side")
            d, x = paired_packets(twin, fl)
            delays += d
            dropped += x
        paired = delays, dropped
        facts["paired_lost_packets"] = len(dropped)
    facts["connections"] = len(data_flows)
    facts["emulator"] = emulator
    facts["lost_packets"] = sum(x.packets for x in losses)
    if not data_flows:
        checks.append(Check("data", "capture", "no TCP payload", f"traffic on port {port}",
                            "FAIL", "nothing to verify: wrong port, interface or time?"))
        return Report(checks, facts)
    segs = sorted(((s, fl.mss or DEFAULT_MSS) for fl in data_flows for s in fl.segs),
                  key=lambda x: x[0].ts)
    t_first_pkt, t_last_pkt = segs[0][0].ts, segs[-1][0].ts
    times = [s.ts for s, _ in segs]
    wire = [_wire_bytes(s, m) for s, m in segs]
    cum = [0]
    for nb in wire:
        cum.append(cum[-1] + nb)
    facts.update(t_first=t_first_pkt, t_last=t_last_pkt, wire_bytes=cum[-1],
                 payload_bytes=sum(s.plen for s, _ in segs))

    def bytes_between(a: float, b: float) -> int:
        return cum[bisect.bisect_left(times, b)] - cum[bisect.bisect_left(times, a)]

    # messages
    streams = [reassemble(f) for f in data_flows]
    truncated = any(f.truncated for f in data_flows)
    if truncated:
        checks.append(Check("capture", "all", "packets truncated (snaplen)", "whole packets",
                            "INFO", "rates only: message framing not walked"))
        kind = "none"
    walks = [walk_messages(s, kind) for s in streams] if kind != "none" else []
    messages = sorted((m for wk in walks for m in wk.messages), key=lambda m: m.t_first)
    missing = sum(s.missing_bytes for s in streams)
    retx = sum(s.retransmitted_bytes for s in streams)
    facts.update(messages=len(messages), missing_bytes=missing, retransmitted_bytes=retx)
    if missing and not any(f.truncated for f in data_flows):
        checks.append(Check("capture", "all", f"{missing} bytes missing", "0", "WARN",
                            "the capture missed packets; the framing walk stops at the hole"))
    for walk in walks:
        if walk.error:
            checks.append(Check("framing", kind, walk.error, f"{kind} framing", "FAIL"))

    # timeline
    t0 = min(r["t_sched"] for r in emit_log) if emit_log else t_first_pkt
    t_end = t_last_pkt
    if emit_log:
        ends = [r.get("t_last_byte") or r["t_sched"] for r in emit_log]
        t_end = max(t_end, max(ends))
    windows = timeline_windows(profile, t0, t_end)
    facts["windows"] = [w.__dict__ for w in windows]
    asks_latency = any(w.latency_ms or w.jitter_ms for w in windows)
    asks_loss = any(w.loss_pct for w in windows)
    # the rate is measured while messages were on the wire: before the first
    # message (handshake, a peer still starting) and after the last (closing)
    # the wire is quiet by design, not held back by a shaper
    data_first = messages[0].t_first if messages else t_first_pkt
    data_last = max(m.t_last for m in messages) if messages else t_last_pkt
    starts = [w.start for w in windows]

    def phase_of(t: float) -> int:
        """The window a packet time falls in; before the first or after the last
        window (the timeline ends at the last packet) counts in that window."""
        return min(len(windows) - 1, max(0, bisect.bisect_right(starts, t) - 1))

    by_phase: dict[str, list[list[Any]]] = {
        k: [[] for _ in windows] for k in ("rtt", "delay", "paired_lost", "holes")}
    for t, r in rtts:
        by_phase["rtt"][phase_of(t)].append(r)
    for loss in losses:
        by_phase["holes"][phase_of(loss.ts)].append(loss.packets)
    if paired is not None:
        for t, delay in paired[0]:
            by_phase["delay"][phase_of(t)].append(delay)
        for t in paired[1]:
            by_phase["paired_lost"][phase_of(t)].append(1)
    seen_in = [0] * len(windows)
    if asks_loss and paired is None:
        for t in times:
            seen_in[phase_of(t)] += 1
    for i, w in enumerate(windows):
        a, b = max(w.start, data_first), min(w.end, data_last)
        span = b - a
        where = f"{w.phase} {w.start - t0:.2f}-{w.end - t0:.2f} s"
        if asks_latency:
            checks.append(_rtt_check(where, w, by_phase["rtt"][i], emulator))
        if paired is not None and asks_latency:
            checks.append(_delay_check(where, w, by_phase["delay"][i]))
        if asks_loss and paired is not None:
            checks.append(_loss_check(where, w, len(by_phase["paired_lost"][i]),
                                      len(by_phase["delay"][i]), emulator, paired=True))
        elif asks_loss:
            checks.append(_loss_check(where, w, sum(by_phase["holes"][i]), seen_in[i],
                                      emulator))
        if span < MIN_WINDOW_S:
            checks.append(Check("rate", where, f"{span:.3f} s of data", f">= {MIN_WINDOW_S} s",
                                "SKIP", "too short to measure against a token bucket"))
            continue
        rate = bytes_between(a, b) * 8 / span / 1e6
        measured = f"{rate:.2f} Mbit/s"
        if w.cap_mbps is None:
            checks.append(Check("rate", where, measured, "uncapped", "INFO"))
            continue
        cap = w.cap_mbps
        expected = f"<= {cap:g} Mbit/s (+{tolerance:.0%})"
        if rate > cap * (1 + tolerance):
            checks.append(Check("rate", where, measured, expected, "FAIL",
                                "above the cap: the shaping did not happen"))
            continue
        if rate >= cap * (1 - tolerance):
            checks.append(Check("rate", where, measured, expected, "PASS", "at the cap"))
            continue
        pushing, why = _sender_pushing(emit_log, w, cap) if emit_log else (saturated, "--saturated")
        if pushing:
            checks.append(Check("rate", where, measured, f">= {cap * (1 - tolerance):.2f} Mbit/s",
                                "FAIL", f"below the cap while the sender had more ({why})"))
        else:
            checks.append(Check("rate", where, measured, expected, "PASS" if emit_log else "WARN",
                                "below the cap; the sender offered less" if emit_log
                                else "below the cap; sender-limited? (give --emit-log)"))

    # gaps vs stalls
    gap_s = gap_ms / 1e3
    gaps = [(times[i - 1], times[i]) for i in range(1, len(times)) if times[i] - times[i - 1] > gap_s]
    stalls = _stall_windows(profile, t0, t_end, windows)
    idle = _emitter_idle(emit_log, gap_s) if emit_log else []
    # before the first message (handshake, a client's wait after connecting)
    # and after the last one (closing) the wire is quiet by design
    firsts = [r["t_first_byte"] for r in emit_log or [] if r.get("t_first_byte") is not None]
    lasts = [r["t_last_byte"] for r in emit_log or [] if r.get("t_last_byte") is not None]
    first_msg = min(firsts) if firsts else (messages[0].t_first if messages else None)
    last_msg = max(lasts) if lasts else (messages[-1].t_last if messages else None)
    if first_msg is not None:
        idle.append((t_first_pkt - 1.0, first_msg, "before the first message (set-up)"))
    if last_msg is not None:
        idle.append((last_msg, t_last_pkt + 1.0, "after the last message (closing)"))
    explained = unexplained = 0
    for g0, g1 in gaps:
        reason = next((r for s0, s1, r in stalls + idle
                       if _overlap(g0, g1, s0, s1) >= 0.5 * min(g1 - g0, s1 - s0)), None)
        if reason:
            explained += 1
        else:
            unexplained += 1
            blocked = emit_log is not None and _blocked_during(emit_log, g0, g1)
            checks.append(Check("gap", f"{g0 - t0:.2f}-{g1 - t0:.2f} s",
                                f"{(g1 - g0) * 1e3:.0f} ms silent", "no silence",
                                "FAIL" if blocked else "WARN",
                                "the emitter was blocked: a stall in the network or consumer"
                                if blocked else "no stall in the profile explains it"))
    for s0, s1, reason in stalls:
        if s1 - s0 < gap_s or s0 > t_last_pkt or s1 < t_first_pkt:
            continue
        seen = any(_overlap(g0, g1, s0, s1) > 0 for g0, g1 in gaps)
        checks.append(Check("stall", f"{s0 - t0:.2f}-{s1 - t0:.2f} s", "silence on the wire"
                            if seen else "data kept flowing", reason, "PASS" if seen else "WARN",
                            "" if seen else "queued data draining, or the stall did not happen"))
    checks.append(Check("gaps", "all", f"{len(gaps)} silences > {gap_ms:g} ms",
                        f"{explained} explained", "PASS" if not unexplained else "INFO",
                        f"{unexplained} unexplained" if unexplained else ""))
    facts["gaps"] = gaps

    # messages vs emit log, and latency
    if kind != "none":
        sizes = [m.nbytes for m in messages]
        desc = (f"{len(messages)} messages, {min(sizes)}-{max(sizes)} B" if sizes
                else "0 messages")
        if emit_log:
            sent = [r for r in emit_log if r.get("outcome") == "delivered"
                    and r.get("t_first_byte") is not None
                    and r["t_first_byte"] >= t_first_pkt - 1.0]
            ok = len(messages) == len(sent)
            checks.append(Check("messages", "all", desc, f"{len(sent)} delivered (emit log)",
                                "PASS" if ok else "FAIL",
                                "" if ok else "messages differ between the emit log and the wire"))
            if ok and sent:
                sent.sort(key=lambda r: r["t_first_byte"])
                lat = sorted(m.t_first - r["t_first_byte"] for m, r in zip(messages, sent,
                                                                        strict=True))
                med = statistics.median(lat) * 1e3
                p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] * 1e3
                facts["latency_ms"] = {"median": med, "p95": p95}
                checks.append(Check("latency", "emit -> wire", f"median {med:.2f} ms, "
                                    f"p95 {p95:.2f} ms",
                                    f"profile latency {profile.network.latency_ms:g} ms", "INFO",
                                    "first byte handed to the kernel -> first byte at the capture "
                                    "(time queued in the socket buffer behind the shaper included)"))
        else:
            checks.append(Check("messages", "all", desc, "(no emit log)", "INFO"))
    return Report(checks, facts)


def _sender_pushing(emit_log: list[dict[str, Any]], w: Window, cap: float) -> tuple[bool, str]:
    recs = [r for r in emit_log if w.start <= r["t_sched"] < w.end]
    blocked = sum(r.get("blocked_s") or 0.0 for r in recs)
    offered = sum(r.get("wire_bytes") or r.get("nbytes") or 0 for r in recs) * 8 / 1e6
    offered_rate = offered / max(w.end - w.start, 1e-9)
    if blocked > 0.1 * (w.end - w.start):
        return True, f"blocked {blocked:.2f} s"
    if offered_rate > cap:
        return True, f"offered {offered_rate:.1f} Mbit/s"
    return False, ""


def _emitter_idle(emit_log: list[dict[str, Any]], gap_s: float) -> list[tuple[float, float, str]]:
    spans = sorted((r["t_first_byte"], r.get("t_last_byte") or r["t_first_byte"])
                   for r in emit_log if r.get("t_first_byte") is not None)
    out = []
    for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False):
        if s1 - e0 > gap_s:
            out.append((e0, s1, "emitter idle"))
    return out


def _blocked_during(emit_log: list[dict[str, Any]], g0: float, g1: float) -> bool:
    for r in emit_log:
        s, e = r.get("t_first_byte"), r.get("t_last_byte")
        if s is not None and e is not None and s < g1 and e > g0 and (r.get("blocked_s") or 0) > 0:
            return True
    return False


# --------------------------------------------------------------------------
# command


def emulator_of(run_dir: Path, profile: Profile) -> str | None:
    """What shaped a run's link: ``emulator`` of DIR/shaping.json (a ``--kernel-shaping``
    run), else the profile's ``network.emulator`` when it is not auto; None when unknown."""
    try:
        got = json.loads((run_dir / "shaping.json").read_text()).get("emulator")
    except (OSError, ValueError, AttributeError):
        got = None
    if got in ("tc", "user-link"):
        return str(got)
    emu = profile.network.emulator
    return emu if emu in ("tc", "user-link") else None


def print_report(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="simstream verify")
    for col in ("check", "where", "measured", "expected", "status", "note"):
        table.add_column(col)
    colour = {"PASS": "green", "FAIL": "bold red", "WARN": "yellow"}
    for c in report.checks:
        st = f"[{colour[c.status]}]{c.status}[/]" if c.status in colour else c.status
        table.add_row(c.name, c.where, c.measured, c.expected, st, c.note)
    Console(width=160).print(table)
    n_fail = sum(c.status == "FAIL" for c in report.checks)
    verdict = "FAIL" if n_fail else "PASS"
    click.echo(f"verify: {verdict} ({len(report.checks)} checks, {n_fail} failed)")


@click.command("verify")
@click.argument("pcap", type=click.Path(path_type=Path))
@click.option("--profile", "profile_path", required=True, help="profile file or bundled name")
@click.option("--emit-log", "emit_log", type=click.Path(path_type=Path), default=None,
              help="the emitter's emit.jsonl")
@click.option("--port", type=int, default=None, help="TCP port (default: the profile's url)")
@click.option("--framing", type=click.Choice(["zmq", "nng", "tcp", "none"]), default=None,
              help="framing to walk (default: the profile's transport.kind)")
@click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True,
              help="allowed rate error, as a fraction of the cap")
@click.option("--gap-ms", type=float, default=DEFAULT_GAP_MS, show_default=True,
              help="silence on the wire longer than this is a gap")
@click.option("--saturated", is_flag=True,
              help="the sender always had data: a rate below the cap is a failure")
@click.option("--sender-pcap", "sender_pcap", type=click.Path(path_type=Path), default=None,
              help="capture of the same port on the producer's side of the user-space link: "
                   "one-way delays and losses packet by packet")
@click.option("--emulator", type=click.Choice(["auto", "tc", "user-link"]), default="auto",
              show_default=True,
              help="what shaped the link; auto: the run's shaping.json beside the capture, "
                   "else the profile's network.emulator when it names one")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="also write the checks and facts as JSON")
def verify(pcap: Path, profile_path: str, emit_log: Path | None, port: int | None,
           framing: str | None, tolerance: float, gap_ms: float, saturated: bool,
           emulator: str, sender_pcap: Path | None, json_out: Path | None) -> None:
    """Check a capture against the profile: rate vs cap per phase, gaps vs stalls,
    messages and latency vs the emit log. Exit 1 when a check fails."""
    if not pcap.exists():
        raise UsageError(f"{pcap}: no such file")
    if sender_pcap is not None and not sender_pcap.exists():
        raise UsageError(f"--sender-pcap {sender_pcap}: no such file")
    if not 0 < tolerance < 1:
        raise UsageError(f"--tolerance {tolerance} is not in (0, 1)")
    if gap_ms <= 0:
        raise UsageError(f"--gap-ms {gap_ms} is not > 0")
    profile = load_profile(find_profile(profile_path))
    log = load_emit_log(emit_log) if emit_log else None
    report = verify_capture(pcap, profile, emit_log=log, port=port, framing=framing,
                            tolerance=tolerance, gap_ms=gap_ms, saturated=saturated,
                            emulator=emulator_of(pcap.parent, profile) if emulator == "auto"
                            else emulator, sender_pcap=sender_pcap)
    print_report(report)
    if json_out:
        json_out.write_text(json.dumps({"checks": [c.__dict__ for c in report.checks],
                                        "facts": report.facts}, default=str, indent=1))
    if report.failed:
        raise SystemExit(1)
