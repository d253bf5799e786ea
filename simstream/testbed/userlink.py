"""The user-space link emulator in a testbed: which emulator shapes, the profile's
network section as per-direction :class:`~simstream.testbed.link.LinkParams`,
and the forwarder process's life (start, phase changes, counters, end).

Directions: latency and jitter apply both ways (``latency_ms`` is a one-way
delay, so a round trip sees twice it); loss, the rate cap or trace and the
queue apply producer -> consumer, the direction tc shapes (the producer's
egress), so acknowledgements are delayed but not dropped or rate-limited.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simstream import clock
from simstream.profile import NetworkConditions, NetworkOverride, Profile
from simstream.testbed.detect import KernelOffer
from simstream.testbed.link import GilbertElliott, LinkParams, load_trace
from simstream.testbed.tc import Shaping

__all__ = [
    "USER_LINK_ONLY",
    "Forwarder",
    "LinkDevices",
    "choose_emulator",
    "forwarder_pids",
    "link_devices",
    "link_params",
]

#: profile keys only the user-space emulator applies
USER_LINK_ONLY = ("loss_burst", "reorder", "queue_packets", "queue_bytes", "trace")
READY_TIMEOUT_S = 30.0
#: the forwarder's niceness: ahead of ordinary work on a busy machine (a forwarder
#: not scheduled stalls the link), yet below anything real-time
FORWARDER_NICE = -10
REPLY_TIMEOUT_S = 10.0
#: the TUN devices' MTU when loss is asked for: a real Ethernet path's, so TCP's
#: segments (MSS 1448 with timestamps) are what the link loses one by one
LOSS_MTU = 1500


@dataclass(frozen=True)
class LinkDevices:
    """What the forwarder's TUN devices are asked for: MTU, offload, and why."""

    mtu: int
    offload: bool
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"mtu": self.mtu, "offload": self.offload, "why": self.why}


def _loses(p: LinkParams) -> bool:
    return bool(p.loss_pct) or (p.loss_burst is not None and p.loss_burst.mean_loss_pct > 0)


def link_devices(phases: list[tuple[LinkParams, LinkParams]], *, mtu: int | None = None,
                 offload: bool | None = None, large_mtu: int = 65000) -> LinkDevices:
    """The TUN devices for a timeline's links (each phase's (p2c, c2p)).

    With TCP segmentation offload (or a large MTU) one TUN packet carries up to
    64 KB of TCP payload, and the link drops packets whole: at 1 % that gives TCP
    about 45 times fewer loss events per byte than a 1500-byte path. So when any
    phase asks for loss (random or burst), the devices get MTU 1500 and no offload,
    each packet is one TCP segment and loss falls per segment, in every phase
    (the devices are set once; a phase change only changes the link's parameters).
    Otherwise ``large_mtu`` with offload, where the forwarder spends least CPU per
    byte. ``mtu``/``offload`` given by the caller are kept, said in ``why``.
    """
    lossy = any(_loses(p) for pair in phases for p in pair)
    if lossy:
        auto_mtu, auto_off = LOSS_MTU, False
        why = ("loss is asked for: each packet is one TCP segment, so loss falls per "
               "segment as on a real 1500-byte path, at more forwarder CPU per byte")
    else:
        auto_mtu, auto_off = large_mtu, True
        why = "no loss asked for: large packets, the least forwarder CPU per byte"
    if mtu is None and offload is None:
        return LinkDevices(auto_mtu, auto_off, why)
    got_mtu = auto_mtu if mtu is None else mtu
    got_off = auto_off if offload is None else offload
    why = f"MTU {got_mtu}, offload {'on' if got_off else 'off'} as the caller asked"
    if lossy and (got_off or got_mtu > LOSS_MTU):
        why += ("; loss is asked for, and it drops whole packets of up to "
                f"{'64 KB' if got_off else f'{got_mtu} bytes'}: fewer loss events per byte "
                "than a 1500-byte path")
    return LinkDevices(got_mtu, got_off, why)


def _asks(net: NetworkConditions, overrides: list[NetworkOverride | None]) -> tuple[bool, list[str]]:
    """(latency, jitter or loss asked anywhere in the timeline; user-link-only keys set)."""
    packet = bool(net.latency_ms or net.jitter_ms or net.loss_pct or net.loss_burst)
    for o in overrides:
        if o is not None and (o.latency_ms or o.jitter_ms or o.loss_pct):
            packet = True
    only = [k for k in USER_LINK_ONLY if getattr(net, k) not in (None, False)]
    return packet, only


def choose_emulator(profile: Profile | None, offer: KernelOffer | None) -> tuple[str, str]:
    """("tc" or "user-link", why). ``auto`` picks user-link when netem is missing and
    latency, jitter or loss are asked for, or when a key only user-link applies is set."""
    if profile is None:
        return "tc", "no profile"
    net = profile.network
    packet, only = _asks(net, [ph.network for ph in profile.timeline.phases])
    if net.emulator == "tc":
        return "tc", "network.emulator: tc"
    if net.emulator == "user-link":
        return "user-link", "network.emulator: user-link"
    if only:
        return "user-link", f"auto: {', '.join(only)} only the user-space link emulator applies"
    if packet and offer is not None and offer.qdiscs and "netem" not in offer.kinds:
        return "user-link", "auto: netem is missing and latency, jitter or loss is asked for"
    if packet and (offer is None or not offer.qdiscs):
        return "tc", "auto: qdisc kinds not probed; tc tries netem and says what it could not apply"
    return "tc", "auto: " + ("netem is available" if packet else "no latency, jitter or loss asked")


def link_params(shaping: Shaping, net: NetworkConditions, *,
                trace_cache: dict[str, Any] | None = None) -> tuple[LinkParams, LinkParams]:
    """(producer -> consumer, consumer -> producer) for one phase's shaping (rate,
    latency, jitter, loss: ``tc.shaping_from_network``) and the profile's
    user-link-only keys (burst loss, reordering, queue, trace).

    Raises ValueError for a trace that cannot be read or parsed (naming the file).
    """
    n = shaping.netem
    trace = None
    if net.trace is not None:
        cache = trace_cache if trace_cache is not None else {}
        if net.trace not in cache:
            try:
                cache[net.trace] = load_trace(net.trace)
            except OSError as e:
                raise ValueError(f"network.trace {net.trace!r} cannot be read: {e.strerror}") from None
            except ValueError as e:
                raise ValueError(f"network.trace: {e}") from None
        trace = cache[net.trace]
    lb = net.loss_burst
    p2c = LinkParams(
        delay_ms=n.delay_ms, jitter_ms=n.jitter_ms, distribution=n.distribution,
        reorder=net.reorder, loss_pct=n.loss_pct,
        loss_burst=GilbertElliott(lb.p_pct, lb.r_pct, lb.bad_loss_pct, lb.good_loss_pct)
        if lb is not None else None,
        rate_mbps=shaping.rate_mbps, trace=trace,
        queue_bytes=net.queue_bytes, queue_packets=net.queue_packets,
    )
    c2p = LinkParams(delay_ms=n.delay_ms, jitter_ms=n.jitter_ms, distribution=n.distribution,
                     reorder=net.reorder)
    return p2c, c2p


def describe(p2c: LinkParams, c2p: LinkParams) -> list[str]:
    """Lines for ``applied``: what each direction does, naming the emulator."""
    out = [f"{line} (user-link, producer -> consumer)" for line in p2c.describe()]
    out += [f"{line} (user-link, consumer -> producer)" for line in c2p.describe()]
    return out or ["user-link forwarding with no conditions (packets pass at once)"]


@dataclass
class _Started:
    proc: subprocess.Popen[str]
    stats_file: Path


class Forwarder:
    """The forwarder process of one testbed (see :mod:`simstream.testbed.linkfwd`)."""

    def __init__(self, producer_ns: str, consumer_ns: str, prod_iface: str, cons_iface: str,
                 p2c: LinkParams, c2p: LinkParams, *, stats_file: Path,
                 seed: int | None = None, detached: bool = False, offload: bool = True,
                 nice: int = FORWARDER_NICE) -> None:
        argv = ["ip", "netns", "exec", producer_ns, sys.executable, "-m",
                "simstream.testbed.linkfwd", "--peer-ns", consumer_ns,
                "--prod-iface", prod_iface, "--cons-iface", cons_iface,
                "--params", json.dumps({"p2c": p2c.to_json(), "c2p": c2p.to_json()})]
        if not detached:  # nobody reads a detached forwarder's counters: no file left behind
            argv += ["--stats-file", str(stats_file)]
        if seed is not None:
            argv += ["--seed", str(seed)]
        if offload:
            argv.append("--offload")
        if nice:
            argv += ["--nice", str(nice)]
        if not detached:
            argv += ["--watch-parent", "--own-ns", producer_ns]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # detached: the forwarder outlives this process; `testbed down` ends it
        # by the namespace's pids. Otherwise it reads control lines on stdin and
        # ends when stdin closes, i.e. when this process dies however it dies.
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL if detached else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if detached else subprocess.PIPE,
            text=True, env=env,
            start_new_session=detached,
        )
        self.stats_file = stats_file
        self.detached = detached
        reply = self._reply(READY_TIMEOUT_S)
        if not reply.get("ready"):
            err = reply.get("error") or self._stderr()
            self.stop()
            raise RuntimeError(f"link forwarder did not start: {err}")
        self.pid = int(reply["pid"])
        # what the TUN devices got: offload asked for may be refused by an old kernel
        self.offload = bool(reply.get("offload"))
        self.offload_error = str(reply.get("offload_error") or "")
        self.nice = int(reply.get("nice") or 0)

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "no answer"
        return (self.proc.stderr.read() if self.proc.stderr else "").strip()[-500:]

    def _reply(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not r:
            return {"error": f"no answer in {timeout_s:g} s"}
        line = self.proc.stdout.readline()
        if not line:
            return {"error": self._stderr() or "exited"}
        try:
            out: dict[str, Any] = json.loads(line)
        except ValueError:
            return {"error": f"unexpected output {line.strip()!r}"}
        return out

    def _ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.detached or self.proc.stdin is None:
            raise RuntimeError("a detached link forwarder takes no control messages")
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._reply(REPLY_TIMEOUT_S)

    def set(self, p2c: LinkParams, c2p: LinkParams) -> float:
        """Apply a phase; returns seconds until the forwarder confirmed. Raises RuntimeError."""
        t0 = clock.now()
        reply = self._ask({"set": {"p2c": p2c.to_json(), "c2p": c2p.to_json()}})
        if not reply.get("ok"):
            raise RuntimeError(f"link forwarder refused the phase: {reply.get('error')}")
        return clock.now() - t0

    def stats(self) -> dict[str, Any]:
        """Counters per direction, live; after :meth:`stop`, the last ones written."""
        if self.proc.poll() is None and not self.detached:
            return self._ask({"stats": True})
        try:
            out: dict[str, Any] = json.loads(self.stats_file.read_text())
            return out
        except (OSError, ValueError):
            return {}

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the forwarder (SIGTERM, then SIGKILL) and wait for it. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def forwarder_pids(ns: str) -> list[int]:
    """Pids of link forwarders running in network namespace ``ns``."""
    from simstream.testbed.detect import run_cmd

    out = []
    for word in run_cmd(["ip", "netns", "pids", ns]).stdout.split():
        try:
            with open(f"/proc/{int(word)}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (ValueError, OSError):
            continue
        if b"simstream.testbed.linkfwd" in argv:
            out.append(int(word))
    return out
