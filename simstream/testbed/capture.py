"""``simstream capture``: write the TCP packets of one port on one interface to a pcap.

scapy sniffs an AF_PACKET socket with a BPF filter for ``tcp port P`` and
streams each packet to the file with ``PcapWriter`` (memory stays bounded: no
packet list is kept). The capture ends after ``--duration`` seconds, after
``--count`` packets, or on Ctrl-C / SIGTERM, and the file is always closed
properly.

The filter is compiled here (classic BPF, the program ``tcpdump -dd 'tcp port
P'`` prints for Ethernet) so no libpcap or tcpdump is needed; a byte-level
check in Python drops whatever reached the socket before the filter was
attached.

``--netns NAME`` runs the same command inside that namespace (``ip netns exec``)
as a child process, with signals passed on.

Prints ``capturing on IF port P`` once the socket is open, then on exit one
line ``captured N packets (D dropped by the kernel) to FILE``.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click

from simstream.errors import UsageError

SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_STATISTICS = 6
DLT_EN10MB = 1
RCVBUF_BYTES = 32 * 1024 * 1024
MAX_COUNT = 10_000_000
MAX_DURATION_S = 3600.0

# classic BPF opcodes
_LDH_ABS, _LDB_ABS, _LDH_IND, _LDXB_MSH = 0x28, 0x30, 0x48, 0xB1
_JEQ_K, _JSET_K, _RET_K = 0x15, 0x45, 0x06


def bpf_tcp_port(port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF for ``tcp port PORT`` on Ethernet (IPv4 and IPv6), as tcpdump compiles it.

    Returns (code, jt, jf, k) instructions. Raises ValueError for a port outside 1..65535.
    """
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not in 1..65535")
    accept, reject = 18, 19

    def j(pc: int, code: int, k: int, t: int, f: int) -> tuple[int, int, int, int]:
        return (code, t - pc - 1, f - pc - 1, k)

    return [
        (_LDH_ABS, 0, 0, 12),                    # 0  ethertype
        j(1, _JEQ_K, 0x86DD, 2, 8),              # 1  IPv6?
        (_LDB_ABS, 0, 0, 20),                    # 2  next header
        j(3, _JEQ_K, 6, 4, reject),              # 3  TCP?
        (_LDH_ABS, 0, 0, 54),                    # 4  source port
        j(5, _JEQ_K, port, accept, 6),           # 5
        (_LDH_ABS, 0, 0, 56),                    # 6  destination port
        j(7, _JEQ_K, port, accept, reject),      # 7
        j(8, _JEQ_K, 0x0800, 9, reject),         # 8  IPv4?
        (_LDB_ABS, 0, 0, 23),                    # 9  protocol
        j(10, _JEQ_K, 6, 11, reject),            # 10 TCP?
        (_LDH_ABS, 0, 0, 20),                    # 11 fragment offset
        j(12, _JSET_K, 0x1FFF, reject, 13),      # 12 not the first fragment: no ports
        (_LDXB_MSH, 0, 0, 14),                   # 13 x = IP header length
        (_LDH_IND, 0, 0, 14),                    # 14 source port
        j(15, _JEQ_K, port, accept, 16),         # 15
        (_LDH_IND, 0, 0, 16),                    # 16 destination port
        j(17, _JEQ_K, port, accept, reject),     # 17
        (_RET_K, 0, 0, 262144),                  # 18 accept: whole packet
        (_RET_K, 0, 0, 0),                       # 19 reject
    ]


def attach_bpf(sock: socket.socket, prog: Sequence[tuple[int, int, int, int]]) -> None:
    """Attach a classic BPF program to a socket (SO_ATTACH_FILTER). Raises OSError."""
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def tcp_port_matches(frame: bytes, port: int) -> bool:
    """Does an Ethernet frame carry TCP with source or destination ``port``?"""
    if len(frame) < 14:
        return False
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0800 and len(frame) >= 34:
        if frame[23] != 6 or struct.unpack_from("!H", frame, 20)[0] & 0x1FFF:
            return False
        off = 14 + (frame[14] & 0x0F) * 4
    elif ethertype == 0x86DD and len(frame) >= 58:
        if frame[20] != 6:
            return False
        off = 54
    else:
        return False
    if len(frame) < off + 4:
        return False
    sport, dport = struct.unpack_from("!HH", frame, off)
    return port in (sport, dport)


ARPHRD_NONE = 0xFFFE  # a TUN device: packets start at the IP header


def is_raw_ip(iface: str) -> bool:
    """True for a device without a link-layer header (a TUN device, ARPHRD_NONE)."""
    try:
        with open(f"/sys/class/net/{iface}/type", encoding="ascii") as f:
            return int(f.read().strip()) == ARPHRD_NONE
    except (OSError, ValueError):
        return False


def ethernet_framed(packet: bytes) -> bytes:
    """An IP packet behind a zeroed Ethernet header (ethertype from the IP version), so a
    capture on a TUN device is an Ethernet pcap like every other."""
    ethertype = b"\x86\xdd" if packet[:1] and packet[0] >> 4 == 6 else b"\x08\x00"
    return b"\0" * 12 + ethertype + packet


def is_loopback(iface: str) -> bool:
    """True for a loopback device (IFF_LOOPBACK in /sys/class/net/IF/flags)."""
    try:
        with open(f"/sys/class/net/{iface}/flags", encoding="ascii") as f:
            return bool(int(f.read().strip(), 16) & 0x8)
    except (OSError, ValueError):
        return iface == "lo"


def _listen_socket(iface: str) -> Any:
    """scapy's AF_PACKET listening socket; on loopback, each packet once.

    A packet on loopback is seen twice (leaving, then arriving); the leaving
    copy is dropped there. On any other interface both directions are kept:
    a producer's data is outgoing on its own veth.
    """
    from scapy.arch.linux import L2ListenSocket, get_last_packet_timestamp

    skip_outgoing = is_loopback(iface)

    class _Listen(L2ListenSocket):
        def recv_raw(self, x: int = 65535) -> tuple[Any, Any, Any]:
            pkt, sa_ll, ts = self._recv_raw(self.ins, x)
            if skip_outgoing and sa_ll[2] == socket.PACKET_OUTGOING:
                return None, None, None
            if ts is None:
                ts = get_last_packet_timestamp(self.ins)
            return self.LL, pkt, ts

    return _Listen(iface=iface)


@dataclass
class CaptureResult:
    packets: int
    dropped: int
    out: Path


def capture_to_file(iface: str, port: int, out: Path, duration_s: float, count: int,
                    stop: threading.Event | None = None, snaplen: int = 0) -> CaptureResult:
    """Sniff ``tcp port`` on ``iface`` into ``out`` until duration, count or ``stop``.

    ``snaplen`` > 0 keeps only the first bytes of each packet (headers: enough for
    rates, not for message framing), so a fast link fits on disk.

    Raises OSError (no such interface, no privileges).
    """
    import scapy.layers.l2  # noqa: F401  (registers Ethernet, so the socket knows its link type)
    from scapy.config import conf
    from scapy.sendrecv import AsyncSniffer
    from scapy.utils import PcapWriter

    sock = _listen_socket(iface)
    # the link emulator's TUN devices carry bare IP packets: the Ethernet filter's
    # offsets do not apply, so the port is matched here, on a synthesised frame
    raw_ip = is_raw_ip(iface)
    try:
        if not raw_ip:
            attach_bpf(sock.ins, bpf_tcp_port(port))
        try:
            sock.ins.setsockopt(socket.SOL_SOCKET, 33, RCVBUF_BYTES)  # SO_RCVBUFFORCE
        except OSError:
            sock.ins.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        # no dissection: bytes and kernel timestamps are all the pcap needs
        sock.LL = conf.raw_layer
        # counters from here on: what arrived before the filter is not ours
        sock.ins.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    except BaseException:
        sock.close()
        raise
    writer = PcapWriter(str(out), linktype=DLT_EN10MB, nano=True, sync=False)
    # the global header now: raw bytes go through write_packet(), which skips it,
    # and an empty capture is still a valid pcap
    writer.write_header(None)
    written = 0
    done = stop or threading.Event()

    def keep(pkt: object) -> None:
        nonlocal written
        data = bytes(pkt)  # type: ignore[call-overload]
        if raw_ip:
            data = ethernet_framed(data)
        if written < count and tcp_port_matches(data, port):
            ts = float(pkt.time)  # type: ignore[attr-defined]
            sec = int(ts)
            kept = data[:snaplen] if snaplen else data
            writer.write_packet(kept, sec=sec, usec=min(round((ts - sec) * 1e9), 999_999_999),
                                wirelen=len(data))
            written += 1
            if written >= count:
                done.set()

    sniffer = AsyncSniffer(opened_socket=sock, prn=keep, store=False)
    sniffer.start()
    click.echo(f"capturing on {iface} port {port}", err=True)
    try:
        done.wait(timeout=duration_s)
    finally:
        # stop() raises when the sniffer thread already ended on an error
        with contextlib.suppress(Exception):
            sniffer.stop(join=True)
        dropped = 0
        with contextlib.suppress(OSError):
            _, dropped = struct.unpack("II", sock.ins.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        sock.close()
        writer.close()
    return CaptureResult(written, dropped, out)


def capture_argv(iface: str, port: int, out: Path | str, duration_s: float,
                 count: int | None = None, netns: str | None = None,
                 snaplen: int = 0) -> list[str]:
    """argv of a capture run in a child process (inside ``netns`` if given)."""
    argv = [sys.executable, "-m", "simstream.testbed.capture", "--iface", iface,
            "--port", str(port), "--out", str(out), "--duration", str(duration_s)]
    if count is not None:
        argv += ["--count", str(count)]
    if snaplen:
        argv += ["--snaplen", str(snaplen)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return argv


@click.command("capture")
@click.option("--iface", required=True, help="interface to sniff on")
@click.option("--port", type=int, required=True, help="TCP port (either end)")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="pcap file to write")
@click.option("--duration", type=float, default=10.0, show_default=True,
              help="seconds to capture")
@click.option("--count", type=int, default=1_000_000, show_default=True,
              help="stop after this many packets")
@click.option("--snaplen", type=int, default=0, show_default=True,
              help="keep only the first N bytes of each packet (0 = whole packets)")
@click.option("--netns", default=None, help="network namespace the interface is in")
def capture(iface: str, port: int, out: Path, duration: float, count: int, snaplen: int,
            netns: str | None) -> None:
    """Write the TCP packets of PORT on IFACE to a pcap file."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port} is not in 1..65535")
    if not 0 < duration <= MAX_DURATION_S:
        raise UsageError(f"--duration {duration} is not in (0, {MAX_DURATION_S:g}]")
    if not 0 < count <= MAX_COUNT:
        raise UsageError(f"--count {count} is not in 1..{MAX_COUNT}")
    if snaplen and snaplen < 96:
        raise UsageError(f"--snaplen {snaplen} is below 96 bytes: TCP headers would be cut")
    if not out.parent.exists():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    if netns:
        _capture_in_netns(iface, port, out, duration, count, netns, snaplen)
        return
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        res = capture_to_file(iface, port, out, duration, count, stop, snaplen)
    except OSError as e:
        raise UsageError(f"cannot capture on {iface!r}: {e}") from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    click.echo(f"captured {res.packets} packets ({res.dropped} dropped by the kernel) to {out}")


def _capture_in_netns(iface: str, port: int, out: Path, duration: float, count: int,
                      netns: str, snaplen: int) -> None:
    argv = capture_argv(iface, port, out.resolve(), duration, count, netns, snaplen)
    child = subprocess.Popen(argv)

    def forward(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = child.wait(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        child.kill()
        rc = child.wait(timeout=10)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc:
        sys.exit(rc)


def main(argv: list[str] | None = None) -> None:
    try:
        capture.main(args=argv, prog_name="simstream capture", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UsageError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
