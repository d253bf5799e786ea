"""The link emulator's forwarder: two TUN devices, one :class:`~simstream.testbed.link.Link`
per direction, a selectors loop between them.

Started by the testbed inside the producer's namespace::

    ip netns exec ssb-NAME-prod python -m simstream.testbed.linkfwd \\
        --peer-ns ssb-NAME-cons --prod-iface ssb-prod --cons-iface ssb-cons \\
        --params '{"p2c": {...}, "c2p": {...}}' [--watch-parent]

It creates both TUN devices in its own namespace and moves the consumer's
into the consumer's namespace (an attached TUN keeps working across the
move), so one process serves both ends without entering a second namespace.
It prints one JSON line ``{"ready": true, ...}`` when both devices exist,
then reads control lines on stdin:

- ``{"set": {"p2c": PARAMS, "c2p": PARAMS}}`` -> ``{"ok": true, "t": MONOTONIC}``
  (a phase change, applied to packets arriving from then on);
- ``{"stats": true}`` -> ``{"p2c": {...counters}, "c2p": {...}}``.

It ends on SIGTERM/SIGINT, when a device goes away (its namespace was
deleted), and, with ``--watch-parent``, when stdin closes (the process that
started it is gone: SIGKILL included). Counters are written to
``--stats-file`` on the way out.

Packets are whole IP packets (IFF_TUN | IFF_NO_PI); without loss the testbed
makes the device MTU large (65000) so TCP sends few, large packets and the loop
is not the bottleneck. With loss it asks for MTU 1500 and no ``--offload``
(:func:`simstream.testbed.userlink.link_devices`): the link drops a packet
whole, so a packet must be one TCP segment for loss to fall per segment.
With ``--offload`` each packet carries a virtio-net header (IFF_VNET_HDR) and the
devices take checksum and TCP segmentation offload (TUNSETOFFLOAD): the kernel
neither computes nor verifies TCP checksums on this path and may hand over
segmentation-offload packets of up to 64 KiB whatever the MTU; the header goes
through unchanged and the link's stages count the IP packet behind it. An old
kernel that refuses the offload gets plain devices (said in the ready line).

A packet waits in a TUN device's queue until the forwarder runs: on a busy
machine a forwarder that is not scheduled for 100 ms stalls the link for as long
(TCP's ACK clock stops with it). ``--nice -10`` (the testbed's default) puts it
ahead of ordinary work where the process may (CAP_SYS_NICE); the ready line says
the niceness it got.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from simstream.testbed.link import Link, LinkParams

__all__ = ["MTU", "main", "open_tun"]

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
#: struct virtio_net_hdr in front of each packet with IFF_VNET_HDR (the device's default size)
VNET_HDR_LEN = 10
MTU = 65000
READ_SIZE = 65536 + VNET_HDR_LEN + 64
#: packets read from one device per wake-up, so one busy direction cannot starve the other
BATCH = 64
#: longest sleep when nothing is due (to notice a vanished device)
IDLE_S = 0.5


def open_tun(name: str, offload: bool = False) -> int:
    """A non-blocking fd attached to a new TUN device ``name`` in this namespace.

    ``offload``: with a virtio-net header on each packet (IFF_VNET_HDR) and checksum
    and TCP segmentation offload (TUNSETOFFLOAD), so the kernel hands over TCP
    segments of up to 64 KiB with their checksum left to do, and takes them back so
    (the header passes through the forwarder unchanged). Raises OSError.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        if offload:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return fd


def _ns_inode(name: str) -> int | None:
    """The identity of a named network namespace (its nsfs inode), None when it is gone."""
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def _set_nice(nice: int) -> int:
    """Ask for niceness ``nice`` (best effort); returns the niceness this process has."""
    if nice:
        # without CAP_SYS_NICE it runs at the default, said in the ready line
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


class Forwarder:
    def __init__(self, fd_prod: int, fd_cons: int, p2c: LinkParams, c2p: LinkParams,
                 seed: int | None, header: int = 0) -> None:
        self.header = header  # bytes in front of each IP packet (the virtio-net header)
        rng = random.Random(seed)
        now = time.monotonic()
        self.fds = {"p2c": (fd_prod, fd_cons), "c2p": (fd_cons, fd_prod)}
        self.links = {"p2c": Link(p2c, random.Random(rng.random()), t0=now),
                      "c2p": Link(c2p, random.Random(rng.random()), t0=now)}
        self.write_errors = 0

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {d: link.stats.as_dict() for d, link in self.links.items()}
        out["write_errors"] = self.write_errors
        return out

    def _read(self, direction: str, now: float) -> bool:
        fd_in = self.fds[direction][0]
        link = self.links[direction]
        for _ in range(BATCH):
            try:
                pkt = os.read(fd_in, READ_SIZE)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not pkt:
                return False
            link.offer(now, len(pkt) - self.header, pkt)
        return True

    def _deliver(self, now: float) -> None:
        for direction, link in self.links.items():
            fd_out = self.fds[direction][1]
            for pkt in link.pop_due(now):
                try:
                    os.write(fd_out, pkt)
                except OSError:
                    self.write_errors += 1

    def _control(self, line: str) -> dict[str, Any]:
        try:
            msg = json.loads(line)
            if "set" in msg:
                now = time.monotonic()
                for d in ("p2c", "c2p"):
                    if d in msg["set"]:
                        self.links[d].set_params(now, LinkParams.from_json(msg["set"][d]))
                return {"ok": True, "t": now}
            if "stats" in msg:
                return self.stats()
            return {"ok": False, "error": f"unknown control message {line.strip()!r}"}
        except (ValueError, TypeError, KeyError) as e:
            return {"ok": False, "error": str(e)}

    def run(self, control: Any | None) -> str:
        """Forward until stopped; returns why: "orphan" (stdin closed) or "device" (gone)."""
        sel = selectors.DefaultSelector()
        fd_prod, fd_cons = self.fds["p2c"]
        sel.register(fd_prod, selectors.EVENT_READ, "p2c")
        sel.register(fd_cons, selectors.EVENT_READ, "c2p")
        if control is not None:
            sel.register(control, selectors.EVENT_READ, "control")
        buf = b""
        while True:
            now = time.monotonic()
            dues = [t for t in (lk.next_due() for lk in self.links.values()) if t is not None]
            timeout = min([IDLE_S] + [max(0.0, t - now) for t in dues])
            events = sel.select(timeout)
            now = time.monotonic()
            for key, _ in events:
                if key.data == "control":
                    assert control is not None
                    chunk = os.read(control.fileno(), 65536)
                    if not chunk:
                        return "orphan"
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        reply = self._control(line.decode())
                        sys.stdout.write(json.dumps(reply) + "\n")
                        sys.stdout.flush()
                elif not self._read(key.data, now):
                    return "device"  # a device went away with its namespace
            self._deliver(time.monotonic())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simstream.testbed.linkfwd")
    ap.add_argument("--peer-ns", required=True, help="namespace the consumer's device moves to")
    ap.add_argument("--prod-iface", required=True)
    ap.add_argument("--cons-iface", required=True)
    ap.add_argument("--params", required=True, help='JSON {"p2c": {...}, "c2p": {...}}')
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--nice", type=int, default=0,
                    help="scheduling niceness to ask for (negative: ahead of other work; "
                         "needs CAP_SYS_NICE, kept as it is otherwise)")
    ap.add_argument("--offload", action="store_true",
                    help="virtio-net headers with checksum and TCP segmentation offload")
    ap.add_argument("--watch-parent", action="store_true",
                    help="end when stdin closes and take control lines from it")
    ap.add_argument("--stats-file", default=None)
    ap.add_argument("--own-ns", default=None,
                    help="with --watch-parent: when the parent dies without ending this "
                         "forwarder (SIGKILL), delete this namespace and --peer-ns too")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        params = json.loads(a.params)
        p2c = LinkParams.from_json(params["p2c"])
        c2p = LinkParams.from_json(params["c2p"])
    except (ValueError, TypeError, KeyError) as e:
        print(json.dumps({"ready": False, "error": f"bad --params: {e}"}), flush=True)
        return 2
    fwd: Forwarder | None = None
    why = ""
    try:
        offload_error = ""
        fd_prod = fd_cons = -1
        if a.offload:
            try:
                fd_prod = open_tun(a.prod_iface, True)
                fd_cons = open_tun(a.cons_iface, True)
            except OSError as e:  # an old kernel: plain devices, said in the ready line
                offload_error = f"TUNSETOFFLOAD refused: {e.strerror}"
                for fd in (fd_prod, fd_cons):
                    if fd >= 0:
                        os.close(fd)
                fd_prod = fd_cons = -1
        offload = fd_prod >= 0
        if not offload:
            fd_prod = open_tun(a.prod_iface)
            fd_cons = open_tun(a.cons_iface)
        cp = subprocess.run(["ip", "link", "set", "dev", a.cons_iface, "netns", a.peer_ns],
                            capture_output=True, text=True, timeout=10, check=False)
        if cp.returncode != 0:
            raise OSError(f"moving {a.cons_iface} to {a.peer_ns}: {cp.stderr.strip()}")
        fwd = Forwarder(fd_prod, fd_cons, p2c, c2p, a.seed, VNET_HDR_LEN if offload else 0)
        nice = _set_nice(a.nice)
        print(json.dumps({"ready": True, "pid": os.getpid(), "offload": offload,
                          "offload_error": offload_error, "nice": nice}), flush=True)
        mine = {ns: _ns_inode(ns) for ns in (a.peer_ns, a.own_ns) if ns}
        why = fwd.run(sys.stdin if a.watch_parent else None)
        if why == "orphan" and a.own_ns:
            # nobody is left to run `testbed down`: the testbed goes with its forwarder,
            # unless a name now belongs to a newer testbed
            for ns, ino in mine.items():
                if ino is not None and _ns_inode(ns) == ino:
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10,
                                   check=False)
    except OSError as e:
        print(json.dumps({"ready": False, "error": str(e)}), flush=True)
        return 1
    finally:
        # an orphan's counters have no reader: leave no file behind
        if fwd is not None and a.stats_file and why != "orphan":
            with open(a.stats_file, "w") as f:
                json.dump(fwd.stats(), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
