"""What this machine offers for kernel shaping: privileges, network namespaces,
qdisc kinds.

Qdisc kinds are found by trying them: a scratch namespace (named with the
testbed prefix, so ``testbed down --all`` removes it if this process dies
midway) gets a dummy device (a veth pair where the dummy driver is missing),
each kind is added as its root qdisc and removed again, then the namespace
goes. Nothing outside that namespace is touched.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "PREFIX",
    "KernelOffer",
    "QdiscProbe",
    "has_cap_net_admin",
    "probe",
    "run_cmd",
]

# Every namespace and interface this package creates starts with this prefix;
# `testbed down --all` removes only names that start with it.
PREFIX = "ssb-"

KINDS = ("netem", "tbf", "htb", "pfifo")
_PROBE_ARGS = {
    "netem": ["delay", "1ms"],
    "tbf": ["rate", "1mbit", "burst", "32k", "latency", "50ms"],
    "htb": ["default", "1"],
    "pfifo": [],
    "bfifo": [],
}
CAP_NET_ADMIN_BIT = 12
CMD_TIMEOUT_S = 10.0


def run_cmd(argv: Sequence[str], *, timeout_s: float = CMD_TIMEOUT_S,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run one short command, output captured. Raises RuntimeError on failure if ``check``."""
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                            check=False)
    except FileNotFoundError:
        cp = subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        cp = subprocess.CompletedProcess(list(argv), 124, "", f"timed out after {timeout_s} s")
    if check and cp.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp


def has_cap_net_admin() -> bool:
    """True when this process's effective capabilities include CAP_NET_ADMIN."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN_BIT & 1)
    except OSError:
        pass
    return False


@dataclass(frozen=True)
class QdiscProbe:
    kind: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class KernelOffer:
    """Result of ``probe()``."""

    root: bool
    cap_net_admin: bool
    tools: dict[str, str | None]
    netns_ok: bool
    netns_detail: str
    qdiscs: dict[str, QdiscProbe] = field(default_factory=dict)
    dist_tables: tuple[str, ...] = ()

    @property
    def privileged(self) -> bool:
        return self.root or self.cap_net_admin

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(k for k, p in self.qdiscs.items() if p.ok)

    def missing_tools(self) -> list[str]:
        return [name for name, path in self.tools.items() if path is None]


def _dist_tables() -> tuple[str, ...]:
    found: set[str] = set()
    for d in ("/usr/lib/tc", "/usr/lib64/tc", "/usr/lib/x86_64-linux-gnu/tc",
              "/usr/lib/aarch64-linux-gnu/tc", "/lib/tc", "/usr/share/tc"):
        if os.path.isdir(d):
            found.update(f[:-5] for f in os.listdir(d) if f.endswith(".dist"))
    return tuple(sorted(found))


def _probe_qdiscs(kinds: Sequence[str]) -> tuple[bool, str, dict[str, QdiscProbe]]:
    ns = f"{PREFIX}probe-{os.getpid()}"
    add = run_cmd(["ip", "netns", "add", ns])
    if add.returncode != 0:
        return False, add.stderr.strip() or "ip netns add failed", {}
    out: dict[str, QdiscProbe] = {}
    try:
        dev = "ssbprobe0"
        mk = run_cmd(["ip", "-n", ns, "link", "add", dev, "type", "dummy"])
        if mk.returncode != 0:
            mk = run_cmd(["ip", "-n", ns, "link", "add", dev, "type", "veth",
                          "peer", "name", "ssbprobe1"])
        if mk.returncode != 0:
            why = mk.stderr.strip()
            return True, "", {k: QdiscProbe(k, False, f"no test device: {why}") for k in kinds}
        run_cmd(["ip", "-n", ns, "link", "set", dev, "up"])
        for kind in kinds:
            cp = run_cmd(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
                          "handle", "1:", kind, *_PROBE_ARGS.get(kind, [])])
            if cp.returncode == 0:
                out[kind] = QdiscProbe(kind, True)
                run_cmd(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"])
            else:
                out[kind] = QdiscProbe(kind, False, cp.stderr.strip().splitlines()[0]
                                       if cp.stderr.strip() else f"exit {cp.returncode}")
    finally:
        run_cmd(["ip", "netns", "del", ns])
    return True, "", out


@functools.lru_cache(maxsize=4)
def probe(kinds: tuple[str, ...] = KINDS) -> KernelOffer:
    """Privileges, namespaces and qdisc kinds, found by trying them (cached per process)."""
    root = os.geteuid() == 0
    cap = has_cap_net_admin()
    tools = {name: shutil.which(name) for name in ("ip", "tc")}
    qdiscs: dict[str, QdiscProbe] = {}
    if not (root or cap):
        ns_ok, ns_detail = False, "needs root or CAP_NET_ADMIN"
    elif tools["ip"] is None or tools["tc"] is None:
        ns_ok, ns_detail = False, "iproute2 (ip, tc) not installed"
    else:
        ns_ok, ns_detail, qdiscs = _probe_qdiscs(kinds)
    return KernelOffer(root=root, cap_net_admin=cap, tools=tools, netns_ok=ns_ok,
                       netns_detail=ns_detail, qdiscs=qdiscs, dist_tables=_dist_tables())
