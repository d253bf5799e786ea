"""A two-host testbed on one machine: producer and consumer network namespaces
joined by a veth pair, the profile's ``network`` section applied with tc on the
producer's egress.

Python API (what ``simstream run --kernel-shaping`` uses)::

    from simstream.testbed.netns import Testbed

    with Testbed.up("demo", profile) as tb:      # profile: simstream.profile.Profile or None
        tb.producer_addr, tb.consumer_addr       # "10.213.0.1", "10.213.0.2"
        tb.producer_iface, tb.consumer_iface     # "ssb-prod", "ssb-cons" (inside the namespaces)
        tb.applied, tb.not_applied               # human-readable lines
        argv = tb.argv_in("consumer", ["simstream", "consume", "--bind",
                                       f"tcp://{tb.consumer_addr}:12321", ...])
        subprocess.Popen(argv)                   # runs inside the consumer namespace
        dt = tb.set_phase(tb.phases[1].shaping)  # seconds until the kernel reports the change
    # namespaces, veth and qdiscs are gone here: normal exit, exception, Ctrl-C or SIGTERM

``set_phase`` takes a ``tc.Shaping`` or a ``profile.NetworkOverride`` (merged
with the profile's base conditions). It returns the measured time-to-effect in
seconds (the change command plus the read-back that shows the kernel holds the
new parameters); ``tb.last_change`` has the details.

Names: namespaces ``ssb-<name>-prod`` and ``ssb-<name>-cons``; the veth ends
are ``ssb-prod`` and ``ssb-cons`` and exist only inside them. Addresses come
from 10.213.0.0/30 and exist only inside these namespaces: the host's
interfaces, routes and default route are never touched. A SIGKILLed run leaves
its namespaces behind; ``cleanup_all()`` (``testbed down --all``) finds them by
the ``ssb-`` prefix.

Raises: ``NotPrivileged`` (no root / CAP_NET_ADMIN), ``UsageError`` (a link-emulator
trace that cannot be read), ``TestbedError`` (a
command failed; everything created so far is removed first).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from simstream import clock
from simstream.errors import UsageError
from simstream.profile import (
    NetworkConditions,
    NetworkOverride,
    Phase,
    Profile,
    container_fault_warnings,
)
from simstream.testbed import linkfwd, tc, userlink
from simstream.testbed.detect import PREFIX, KernelOffer, probe, run_cmd
from simstream.testbed.link import LinkParams

__all__ = [
    "CONSUMER_ADDR",
    "PRODUCER_ADDR",
    "NotPrivileged",
    "PhaseChange",
    "PhaseShaping",
    "Testbed",
    "TestbedError",
    "cleanup_all",
    "leftovers",
    "namespace_names",
    "validate_name",
]

PRODUCER_ADDR = "10.213.0.1"
CONSUMER_ADDR = "10.213.0.2"
PREFIXLEN = 30
PRODUCER_IFACE = "ssb-prod"
CONSUMER_IFACE = "ssb-cons"
SIDES = ("producer", "consumer")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,23}$")
# read-backs after a change, before giving up on confirming it
CONFIRM_POLLS = 50


# tried in turn when the kernel's qdisc kinds are not known in advance
UNPROBED_KINDS = ("netem", "tbf", "htb")


def _refused_kind(err: Exception, kinds: set[str]) -> str | None:
    """The qdisc kind a failed command asked for, when the kernel does not know it."""
    text = str(err)
    if "qdisc kind is unknown" not in text:
        return None
    words = text.split(" failed:")[0].split()
    return next((w for w in words if w in kinds), None)


class TestbedError(RuntimeError):
    """A testbed command failed; ``str()`` says which and why."""

    __test__ = False  # not a pytest class


class NotPrivileged(TestbedError):
    """Kernel shaping needs root or CAP_NET_ADMIN."""


USER_SPACE_HINT = (
    "kernel shaping needs root or CAP_NET_ADMIN; run as root, or use user-space shaping "
    "(simstream emit applies the profile's network section itself)"
)


def validate_name(name: str) -> str:
    """A testbed name: 1-24 of a-z 0-9 _ starting with a letter or digit. Raises ValueError."""
    if not _NAME_RE.match(name):
        raise ValueError(
            f"testbed name {name[:40]!r}{'...' if len(name) > 40 else ''} is invalid: use 1-24 characters a-z, 0-9 or _ "
            f"(it becomes part of namespace names)"
        )
    return name


def namespace_names(name: str) -> tuple[str, str]:
    """(producer namespace, consumer namespace) for a testbed name."""
    return f"{PREFIX}{name}-prod", f"{PREFIX}{name}-cons"


@dataclass(frozen=True)
class PhaseShaping:
    """One timeline phase and what the kernel is asked to do during it."""

    name: str
    duration_s: float | None
    shaping: tc.Shaping


@dataclass(frozen=True)
class PhaseChange:
    """How a phase change went: commands, and seconds from the call to each milestone."""

    commands: list[list[str]]
    command_s: float
    confirmed_s: float | None
    applied: list[str]


def timeline_shapings(profile: Profile | None) -> list[PhaseShaping]:
    """The kernel shaping of each phase, in timeline order (one phase without a profile)."""
    if profile is None:
        return [PhaseShaping("steady", None, tc.Shaping())]
    out = []
    for ph in profile.timeline.phases:
        out.append(PhaseShaping(ph.name, ph.duration_s, _phase_shaping(profile, ph.network)))
    return out


def _phase_shaping(profile: Profile, override: NetworkOverride | None) -> tc.Shaping:
    return tc.shaping_from_network(profile.network, override, ranks=profile.transport.ranks)


class _SigtermAsExit:
    """SIGTERM raises SystemExit in the main thread, so ``finally`` blocks run."""

    def __init__(self) -> None:
        self._old: Any = None
        self._installed = False

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGTERM)
            if self._old in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, self._handler)
                self._installed = True

    @staticmethod
    def _handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._old)


class Testbed:
    """Two namespaces and a shaped veth pair, or one shaped interface named by the user.

    Build with ``Testbed.up(...)`` (a context manager) or ``Testbed.create(...)``
    followed by ``down()``.
    """

    __test__ = False  # not a pytest class

    def __init__(self, name: str, profile: Profile | None = None, *,
                 i_know_iface: str | None = None, offer: KernelOffer | None = None,
                 detached: bool = False, link_mtu: int | None = None,
                 link_offload: bool | None = None) -> None:
        self.name = validate_name(name)
        self.detached = detached
        # the user-space link's TUN devices: MTU, and whether TCP segmentation and
        # checksum offload are asked for (the forwarder says whether it got them).
        # None: chosen from the profile (userlink.link_devices: MTU 1500 and no
        # offload when loss is asked for, so loss falls per TCP segment)
        self._link_mtu_asked = link_mtu
        self._link_offload_asked = link_offload
        self.link_mtu = link_mtu if link_mtu is not None else linkfwd.MTU
        self.link_offload = link_offload if link_offload is not None else True
        self.link_devices: userlink.LinkDevices | None = None
        # "tc" or "user-link" (chosen in create(), once the kernel's offer is known)
        self.emulator = "tc"
        self.emulator_why = ""
        self.forwarder: userlink.Forwarder | None = None
        self.link_stats: dict[str, Any] = {}
        self._traces: dict[str, Any] = {}
        self.profile = profile
        self.offer = offer
        self.explicit_iface = i_know_iface
        if i_know_iface is not None:
            self.producer_ns: str | None = None
            self.consumer_ns: str | None = None
            self.producer_iface = i_know_iface
            self.consumer_iface = ""
            self.producer_addr = ""
            self.consumer_addr = ""
        else:
            self.producer_ns, self.consumer_ns = namespace_names(name)
            self.producer_iface = PRODUCER_IFACE
            self.consumer_iface = CONSUMER_IFACE
            self.producer_addr = PRODUCER_ADDR
            self.consumer_addr = CONSUMER_ADDR
        self.phases = timeline_shapings(profile)
        self.plan: tc.Plan | None = None
        self.applied: list[str] = []
        self.not_applied: list[str] = []
        self.last_change: PhaseChange | None = None
        self._created: list[str] = []
        self._shaped = False
        self._ifindex: int | None = None  # the named interface's index when shaped
        self._known_ifaces: set[str] = set()  # the interfaces there when it was shaped

    # ------------------------------------------------------------------ life

    @classmethod
    @contextlib.contextmanager
    def up(cls, name: str = "default", profile: Profile | None = None, *,
           i_know_iface: str | None = None, offer: KernelOffer | None = None,
           **link: Any) -> Iterator[Testbed]:
        """Create, shape, yield; always tear down (exception, Ctrl-C, SIGTERM included).
        ``link``: ``link_mtu``, ``link_offload`` (see the constructor)."""
        with _SigtermAsExit():
            tb = cls(name, profile, i_know_iface=i_know_iface, offer=offer, **link)
            try:
                tb.create()
                yield tb
            finally:
                tb.down()

    def create(self) -> Testbed:
        """Make the namespaces and veth (unless an interface was named) and apply phase 0.

        Raises NotPrivileged or TestbedError; on error, what was made is removed.
        """
        offer = self.offer or probe()
        self.offer = offer
        if not offer.privileged:
            raise NotPrivileged(USER_SPACE_HINT)
        missing = offer.missing_tools()
        if missing:
            raise TestbedError(f"{', '.join(missing)} not found: install iproute2")
        self.emulator, self.emulator_why = userlink.choose_emulator(self.profile, offer)
        if self.emulator == "user-link":
            if self.explicit_iface is not None:
                raise TestbedError(
                    f"the user-space link emulator needs the testbed's namespaces; it cannot "
                    f"shape a named interface ({self.emulator_why}); set network.emulator: tc")
            try:
                self._link_phases()
            except ValueError as e:  # a trace file that cannot be read or parsed
                raise UsageError(str(e)) from None
        try:
            if self.explicit_iface is None:
                self._make_namespaces()
            else:
                self._check_iface(self.explicit_iface)
            self._shape()
            if self.explicit_iface is not None:
                self._ifindex = _ifindex(self.explicit_iface)
                self._known_ifaces = {name for _, name in socket.if_nameindex()}
        except BaseException:
            self.down()
            raise
        return self

    def _check_iface(self, iface: str) -> None:
        cp = run_cmd(["ip", "link", "show", "dev", iface])
        if cp.returncode != 0:
            raise TestbedError(f"interface {iface!r} not found: {cp.stderr.strip()}")

    def _make_namespaces(self) -> None:
        assert self.producer_ns and self.consumer_ns
        if not self.offer or not self.offer.netns_ok:
            raise TestbedError(f"network namespaces unavailable: "
                               f"{self.offer.netns_detail if self.offer else '?'}")
        existing = _namespaces()
        for ns in (self.producer_ns, self.consumer_ns):
            if ns in existing:
                raise TestbedError(
                    f"namespace {ns} exists: a testbed named {self.name!r} is up "
                    f"(simstream testbed down {self.name}, or down --all for leftovers)"
                )
        for ns in (self.producer_ns, self.consumer_ns):
            self._run(["ip", "netns", "add", ns])
            self._created.append(ns)
        if self.emulator == "user-link":
            self._make_link()
            return
        # Both ends are created directly inside the namespaces: the veth never
        # exists in the host's namespace, even for an instant.
        self._run(["ip", "link", "add", self.producer_iface, "netns", self.producer_ns,
                   "type", "veth", "peer", "name", self.consumer_iface,
                   "netns", self.consumer_ns])
        for ns, dev, addr in ((self.producer_ns, self.producer_iface, self.producer_addr),
                              (self.consumer_ns, self.consumer_iface, self.consumer_addr)):
            self._run(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIXLEN}", "dev", dev])
            self._run(["ip", "-n", ns, "link", "set", dev, "up"])
            self._run(["ip", "-n", ns, "link", "set", "lo", "up"])

    # ------------------------------------------------------------------ user-link

    def _link_phases(self) -> list[tuple[LinkParams, LinkParams]]:
        """Each phase's (producer -> consumer, consumer -> producer) link. Raises ValueError."""
        net = self.profile.network if self.profile is not None else NetworkConditions()
        return [userlink.link_params(p.shaping, net, trace_cache=self._traces)
                for p in self.phases]

    def _link_for(self, shaping: tc.Shaping) -> tuple[LinkParams, LinkParams]:
        net = self.profile.network if self.profile is not None else NetworkConditions()
        return userlink.link_params(shaping, net, trace_cache=self._traces)

    def _make_link(self) -> None:
        """TUN devices in both namespaces and the forwarder between them (no veth)."""
        assert self.producer_ns and self.consumer_ns
        phases = self._link_phases()
        p2c, c2p = phases[0]
        self.link_devices = userlink.link_devices(
            phases, mtu=self._link_mtu_asked, offload=self._link_offload_asked,
            large_mtu=linkfwd.MTU)
        self.link_mtu = self.link_devices.mtu
        self.link_offload = self.link_devices.offload
        stats_file = Path(tempfile.gettempdir()) / f"{self.producer_ns}-link-stats.json"
        try:
            self.forwarder = userlink.Forwarder(
                self.producer_ns, self.consumer_ns, self.producer_iface, self.consumer_iface,
                p2c, c2p, stats_file=stats_file, detached=self.detached,
                offload=self.link_offload)
        except RuntimeError as e:
            raise TestbedError(str(e)) from None
        for ns, dev, addr, peer in (
                (self.producer_ns, self.producer_iface, self.producer_addr, self.consumer_addr),
                (self.consumer_ns, self.consumer_iface, self.consumer_addr, self.producer_addr)):
            self._run(["ip", "-n", ns, "addr", "add", addr, "peer", f"{peer}/32", "dev", dev])
            self._run(["ip", "-n", ns, "link", "set", dev, "mtu", str(self.link_mtu), "up"])
            self._run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def describe_shaping(self, shaping: tc.Shaping) -> list[str]:
        """What this testbed applies of one phase's shaping, in words."""
        if self.emulator == "user-link":
            return userlink.describe(*self._link_for(shaping))
        return tc.describe(shaping, self.plan.layout if self.plan is not None else "none")

    def _shape(self) -> None:
        """Install the plan; a qdisc kind the kernel refuses is dropped and the plan redone.

        Where the kinds could not be probed (no namespaces to probe in, e.g. a
        container with NET_ADMIN but not SYS_ADMIN) every kind is tried this way.
        """
        assert self.offer is not None
        if self.emulator == "user-link":
            lines = userlink.describe(*self._link_phases()[0])
            self.plan = tc.Plan(self.producer_iface, "user-link", [], lines, [])
            self.applied = [f"{line} on {self.producer_iface} <-> {self.consumer_iface} "
                            f"(TUN devices, forwarder pid "
                            f"{self.forwarder.pid if self.forwarder else '?'})" for line in lines]
            self.applied.append(f"emulator: user-link ({self.emulator_why})")
            if self.forwarder is not None:
                self.applied.append(
                    f"TUN devices: MTU {self.link_mtu}, " + (
                        "TCP segmentation and checksum offload" if self.forwarder.offload
                        else "no offload" + (f" ({self.forwarder.offload_error})"
                                             if self.forwarder.offload_error else "")) +
                    (f" ({self.link_devices.why})" if self.link_devices is not None else ""))
                self.applied.append(f"forwarder niceness {self.forwarder.nice}")
            self.not_applied = self._container_faults()
            return
        shapings = [p.shaping for p in self.phases]
        kinds = set(self.offer.kinds) if self.offer.qdiscs else set(UNPROBED_KINDS)
        for _ in range(len(UNPROBED_KINDS) + 1):
            self.plan = tc.plan(self.producer_iface, shapings, kinds)
            self._shaped = bool(self.plan.commands)
            try:
                for cmd in self.plan.commands:
                    self._run(self._in_prod(cmd))
                break
            except TestbedError as e:
                refused = _refused_kind(e, kinds)
                if refused is None:
                    raise
                kinds.discard(refused)
                run_cmd(self._in_prod(tc.teardown_commands(self.producer_iface)[0]))
        assert self.plan is not None
        where = (f"on {self.producer_iface} (egress, namespace {self.producer_ns})"
                 if self.producer_ns else f"on {self.producer_iface} (egress, named by the user)")
        self.applied = [f"{line} {where}" for line in self.plan.applied]
        self.not_applied = list(self.plan.not_applied)
        net = self.profile.network if self.profile is not None else None
        for key in userlink.USER_LINK_ONLY:
            if net is not None and getattr(net, key) not in (None, False):
                self.not_applied.append(f"network.{key} is applied by the user-space link "
                                        f"emulator only (network.emulator: user-link)")
        self.not_applied += self._container_faults()

    def _container_faults(self) -> list[str]:
        """The profile's container faults, which shaping a link cannot apply."""
        if self.profile is None:
            return []
        return container_fault_warnings(self.profile, "the link shaping (simstream testbed up)")

    def down(self) -> list[str]:
        """Remove what this testbed made. Idempotent; returns the errors it met (never raises)."""
        errors: list[str] = []
        if self.forwarder is not None:
            if not self.detached:
                with contextlib.suppress(RuntimeError, OSError, ValueError):
                    self.link_stats = self.forwarder.stats()
            self.forwarder.stop()
            if not self.link_stats:
                self.link_stats = self.forwarder.stats()
            if not self.detached:
                with contextlib.suppress(OSError):
                    self.forwarder.stats_file.unlink()
            self.forwarder = None
        if self.explicit_iface is not None and self._shaped:
            cp = run_cmd(tc.teardown_commands(self.explicit_iface)[0])
            if cp.returncode != 0:
                errors.append(cp.stderr.strip())
            self._shaped = False
        # deleting a namespace deletes its veth end, the peer and the qdiscs on them
        for ns in reversed(self._created):
            kill_namespace_processes(ns)  # deleting it would leave them running
            cp = run_cmd(["ip", "netns", "del", ns])
            if cp.returncode != 0 and ns in _namespaces():
                errors.append(cp.stderr.strip())
        self._created.clear()
        return errors

    # ------------------------------------------------------------------ use

    def argv_in(self, side: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the producer's or consumer's namespace.

        Raises ValueError for an unknown side, or when the testbed shapes a
        user-named interface (there are no namespaces then).
        """
        if side not in SIDES:
            raise ValueError(f"side {side!r} is not one of {', '.join(SIDES)}")
        ns = self.producer_ns if side == "producer" else self.consumer_ns
        if ns is None:
            raise ValueError("this testbed shapes a named interface; it has no namespaces")
        return ["ip", "netns", "exec", ns, *argv]

    def set_phase(self, phase_network: tc.Shaping | NetworkOverride | Phase | None) -> float:
        """Move the qdiscs to a phase's conditions with ``tc qdisc change``.

        Returns seconds from the call until a read-back shows the kernel holds
        the new parameters (the command's own time when the layout cannot be
        read back). Raises TestbedError when the change fails.
        """
        if self.plan is None:
            raise TestbedError("testbed is not up")
        if isinstance(phase_network, Phase):
            phase_network = phase_network.network
        if isinstance(phase_network, tc.Shaping):
            shaping = phase_network
        elif self.profile is not None:
            shaping = _phase_shaping(self.profile, phase_network)
        else:
            raise TestbedError("a NetworkOverride needs the testbed to have a profile")
        if self.emulator == "user-link":
            return self._set_link_phase(shaping)
        cmds = tc.change_commands(self.producer_iface, shaping, self.plan.layout)
        t0 = clock.now()
        for cmd in cmds:
            self._run(self._in_prod(cmd))
        command_s = clock.now() - t0
        confirmed_s: float | None = command_s
        if self.plan.layout == "tbf":
            confirmed_s = self._confirm_tbf_rate(shaping, t0)
        self.last_change = PhaseChange(cmds, command_s, confirmed_s,
                                       tc.describe(shaping, self.plan.layout))
        return confirmed_s if confirmed_s is not None else command_s

    def reshape_if_recreated(self, shaping: tc.Shaping) -> list[str] | None:
        """A named interface that was removed and is back (a container's eth0 after
        ``docker network disconnect`` and ``connect``: a new device without the
        qdiscs, under the same name or as the next one, eth1) gets them again, with
        ``shaping`` (the phase in force); the testbed follows a new name from then
        on (``producer_iface``). Returns what was applied, or None when the
        interface is unchanged or not back yet. Raises TestbedError when tc refuses."""
        if self.explicit_iface is None or not self._shaped or self.plan is None:
            return None
        idx = _ifindex(self.explicit_iface)
        if idx is None:
            new = _new_ethernet(self._known_ifaces)
            if new is None:
                return None
            self.explicit_iface = self.producer_iface = new
            idx = _ifindex(new)
        if idx is None or idx == self._ifindex:
            return None
        for cmd in tc.apply_commands(self.explicit_iface, shaping, self.plan.layout):
            self._run(cmd)
        self._ifindex = idx
        self._known_ifaces = {name for _, name in socket.if_nameindex()}
        return tc.describe(shaping, self.plan.layout)

    def _set_link_phase(self, shaping: tc.Shaping) -> float:
        if self.forwarder is None:
            raise TestbedError("the link forwarder is not running (a detached testbed's "
                               "forwarder takes no phase changes)")
        try:
            p2c, c2p = self._link_for(shaping)
            took = self.forwarder.set(p2c, c2p)
        except (ValueError, RuntimeError) as e:
            raise TestbedError(str(e)) from None
        self.last_change = PhaseChange([], took, took, userlink.describe(p2c, c2p))
        return took

    def _confirm_tbf_rate(self, shaping: tc.Shaping, t0: float) -> float | None:
        import json

        want = int((shaping.rate_mbps or tc.UNCAPPED_MBPS) * 1e6 / 8)
        for _ in range(CONFIRM_POLLS):
            cp = run_cmd(self._in_prod(["tc", "-j", "qdisc", "show", "dev", self.producer_iface]))
            try:
                qdiscs = json.loads(cp.stdout or "[]")
            except ValueError:
                return None
            for q in qdiscs:
                if q.get("kind") == "tbf" and abs(int(q["options"]["rate"]) - want) <= want * 1e-3:
                    return clock.now() - t0
        return None

    def qdisc_show(self) -> str:
        """``tc -s qdisc show`` of the shaped interface (statistics included)."""
        cp = run_cmd(self._in_prod(["tc", "-s", "qdisc", "show", "dev", self.producer_iface]))
        return cp.stdout

    # ------------------------------------------------------------------ helpers

    def _in_prod(self, argv: list[str]) -> list[str]:
        if self.producer_ns is None:
            return argv
        return ["ip", "netns", "exec", self.producer_ns, *argv]

    @staticmethod
    def _run(argv: list[str]) -> None:
        cp = run_cmd(argv)
        if cp.returncode != 0:
            raise TestbedError(f"`{' '.join(argv)}` failed: {cp.stderr.strip() or cp.returncode}")


# --------------------------------------------------------------------------
# finding and removing testbeds by name


def _ifindex(iface: str) -> int | None:
    """The interface's index in this network namespace, None when there is none."""
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        return None


def _new_ethernet(known: set[str]) -> str | None:
    """The one Ethernet interface (veth included) of this network namespace that is
    not in ``known``; None when there is none or more than one."""
    new = []
    for _, name in socket.if_nameindex():
        if name in known:
            continue
        try:
            kind = Path(f"/sys/class/net/{name}/type").read_text().strip()
        except OSError:
            continue
        if kind == "1":  # ARPHRD_ETHER
            new.append(name)
    return new[0] if len(new) == 1 else None


def _namespaces() -> list[str]:
    cp = run_cmd(["ip", "netns", "list"])
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def _host_links() -> list[str]:
    cp = run_cmd(["ip", "-o", "link", "show"])
    out = []
    for line in cp.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            out.append(parts[1].strip().split("@")[0])
    return out


@dataclass
class Leftovers:
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)  # pids ended inside the namespaces

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.links)


def leftovers(name: str | None = None) -> Leftovers:
    """Namespaces (and host-side links, which a normal run never makes) with our prefix."""
    if name is not None:
        want = set(namespace_names(name))
        return Leftovers([ns for ns in _namespaces() if ns in want], [])
    return Leftovers(
        [ns for ns in _namespaces() if ns.startswith(PREFIX)],
        [ln for ln in _host_links() if ln.startswith(PREFIX)],
    )


def kill_namespace_processes(ns: str, grace_s: float = 2.0) -> list[int]:
    """End every process inside network namespace ``ns`` (``ip netns pids``): SIGTERM,
    then SIGKILL after ``grace_s``. Deleting a namespace does not end its processes
    (a consumer left by a killed runner keeps running inside it). Returns the pids."""
    import signal
    import time

    def pids() -> list[int]:
        cp = run_cmd(["ip", "netns", "pids", ns])
        return [int(x) for x in cp.stdout.split() if x.isdigit()] if cp.returncode == 0 else []

    first = pids()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = pids()
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and pids():
            time.sleep(0.05)
    return first


def cleanup_all(name: str | None = None) -> tuple[Leftovers, list[str]]:
    """Remove one testbed's namespaces, or every ``ssb-`` namespace and link, after
    ending the processes inside them.

    Returns (what was found, errors). Only names with the prefix are touched.
    """
    found = leftovers(name)
    errors = []
    for ns in found.namespaces:
        found.killed.extend(kill_namespace_processes(ns))
        cp = run_cmd(["ip", "netns", "del", ns])
        # gone meanwhile (its own testbed's cleanup removed it): what down asks for holds
        if cp.returncode != 0 and ns in _namespaces():
            errors.append(f"{ns}: {cp.stderr.strip()}")
    for ln in found.links:
        cp = run_cmd(["ip", "link", "del", ln])
        if cp.returncode != 0 and ln in _host_links():
            errors.append(f"{ln}: {cp.stderr.strip()}")
    return found, errors

