"""tc command lines from a profile's ``network`` section. Pure: no processes here.

Every function returns argv lists (``["tc", "qdisc", "add", ...]``) and the
human-readable lines that say what they do, so the same plan is unit-tested,
printed by ``testbed status`` and executed by ``netns.py``.

Units: milliseconds (``*_ms``), megabits per second (10^6 bit/s, ``*_mbps``),
percent (``*_pct``, 0..100), bytes (``*_bytes``).

Layouts, by what the profile needs and what the kernel offers:

- ``tbf``: a rate cap alone (token bucket filter on the root).
- ``netem``: delay, jitter, loss, duplicate, reorder, corrupt alone.
- ``htb+netem``: a rate cap and netem: an htb class carries the cap, netem is
  its child (htb shapes, netem delays what htb releases).
- ``tbf+netem``: the same with tbf as the parent, when htb is missing.
- ``netem-rate``: netem's own ``rate`` as the cap, when neither tbf nor htb is
  there.
- ``none``: nothing to shape.

A timeline keeps one layout for all its phases (chosen from every phase's
needs), so a phase boundary is one ``tc qdisc change`` (or ``tc class
change``), never a tear-down.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace

from simstream.profile import NetworkConditions, NetworkOverride

__all__ = [
    "DISTRIBUTIONS",
    "UNCAPPED_MBPS",
    "Netem",
    "Plan",
    "Shaping",
    "apply_commands",
    "change_commands",
    "choose_layout",
    "default_burst_bytes",
    "describe",
    "fmt_rate",
    "fmt_time",
    "htb_commands",
    "netem_args",
    "plan",
    "shaping_from_network",
    "tbf_args",
    "teardown_commands",
]

# netem's delay distributions; "uniform" is netem's default (no table), the
# others are tables shipped with iproute2 (normal.dist, pareto.dist, ...).
DISTRIBUTIONS = ("uniform", "normal", "pareto", "paretonormal")

# A rate layout must carry some rate in a phase that has no cap: one far above
# anything a veth or NIC here carries, so the qdisc is there but never limits.
UNCAPPED_MBPS = 100_000.0

ROOT_HANDLE = "1:"
HTB_CLASS = "1:1"
NETEM_HANDLE = "10:"

LAYOUTS = ("none", "tbf", "htb", "netem", "htb+netem", "tbf+netem", "netem-rate")


@dataclass(frozen=True)
class Netem:
    """netem's options. Zero / None means "not asked for"."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    delay_correlation_pct: float = 0.0
    distribution: str = "uniform"
    loss_pct: float = 0.0
    loss_correlation_pct: float = 0.0
    duplicate_pct: float = 0.0
    duplicate_correlation_pct: float = 0.0
    reorder_pct: float = 0.0
    reorder_correlation_pct: float = 0.0
    reorder_gap: int | None = None
    corrupt_pct: float = 0.0
    corrupt_correlation_pct: float = 0.0
    rate_mbps: float | None = None
    limit_packets: int | None = None

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution {self.distribution!r} is not one of {', '.join(DISTRIBUTIONS)}"
            )
        for name in ("delay_ms", "jitter_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)} is not >= 0")
        for name in (
            "delay_correlation_pct", "loss_pct", "loss_correlation_pct", "duplicate_pct",
            "duplicate_correlation_pct", "reorder_pct", "reorder_correlation_pct",
            "corrupt_pct", "corrupt_correlation_pct",
        ):
            v = getattr(self, name)
            if not 0 <= v <= 100:
                raise ValueError(f"{name} {v} is not in 0..100")
        if self.rate_mbps is not None and self.rate_mbps <= 0:
            raise ValueError(f"rate_mbps {self.rate_mbps} is not > 0")
        if self.reorder_gap is not None and self.reorder_gap < 1:
            raise ValueError(f"reorder_gap {self.reorder_gap} is not >= 1")
        if self.reorder_pct and not self.delay_ms:
            # netem reorders by sending some packets at once and delaying the
            # rest: without a delay there is nothing to reorder against.
            raise ValueError("reorder_pct needs delay_ms > 0 (netem reorders against the delay)")
        if self.limit_packets is not None and self.limit_packets < 1:
            raise ValueError(f"limit_packets {self.limit_packets} is not >= 1")

    @property
    def is_noop(self) -> bool:
        # the distribution shapes the jitter only; without jitter it asks nothing
        return replace(self, distribution="uniform") == Netem(limit_packets=self.limit_packets)

    @property
    def needs_netem(self) -> bool:
        """True when anything besides a rate is asked for (a rate alone fits tbf)."""
        return not replace(self, rate_mbps=None).is_noop


@dataclass(frozen=True)
class Shaping:
    """What one phase asks of the link: a rate cap and netem's impairments."""

    rate_mbps: float | None = None
    netem: Netem = field(default_factory=Netem)

    def __post_init__(self) -> None:
        if self.rate_mbps is not None and self.rate_mbps <= 0:
            raise ValueError(f"rate_mbps {self.rate_mbps} is not > 0")


def shaping_from_network(
    net: NetworkConditions,
    override: NetworkOverride | None = None,
    *,
    ranks: int = 1,
) -> Shaping:
    """The kernel shaping for a phase: base conditions with the phase's overrides.

    ``bandwidth_scope: per_rank`` with several ranks becomes ``ranks x cap`` on
    the interface: the kernel shapes the link, not each connection.
    """
    latency = net.latency_ms
    jitter = net.jitter_ms
    dist: str = net.jitter_distribution
    bw = net.bandwidth_mbps
    loss = net.loss_pct
    if override is not None:
        latency = override.latency_ms if override.latency_ms is not None else latency
        jitter = override.jitter_ms if override.jitter_ms is not None else jitter
        dist = override.jitter_distribution or dist
        bw = override.bandwidth_mbps if override.bandwidth_mbps is not None else bw
        loss = override.loss_pct if override.loss_pct is not None else loss
    if bw is not None and net.bandwidth_scope == "per_rank" and ranks > 1:
        bw = bw * ranks
    return Shaping(
        rate_mbps=bw,
        netem=Netem(delay_ms=latency, jitter_ms=jitter, distribution=dist, loss_pct=loss),
    )


# --------------------------------------------------------------------------
# formatting


def _num(x: float) -> str:
    """Shortest exact-enough decimal for tc (no exponent)."""
    s = f"{x:.6f}".rstrip("0").rstrip(".")
    return s or "0"


def fmt_time(ms: float) -> str:
    """Milliseconds as tc writes them: ``20ms``; fractions in microseconds (``1500us``)."""
    if ms < 0:
        raise ValueError(f"time {ms} ms is not >= 0")
    if float(ms).is_integer():
        return f"{int(ms)}ms"
    return f"{round(ms * 1000)}us"


def fmt_rate(mbps: float) -> str:
    """Megabits per second as tc writes them: ``400mbit``; fractions in kbit (10^3 bit/s)."""
    if mbps <= 0:
        raise ValueError(f"rate {mbps} Mbit/s is not > 0")
    if float(mbps).is_integer():
        return f"{int(mbps)}mbit"
    return f"{round(mbps * 1000)}kbit"


def _pct(p: float) -> str:
    return f"{_num(p)}%"


# --------------------------------------------------------------------------
# qdisc arguments


def netem_args(n: Netem) -> list[str]:
    """``netem ...`` options, in the order tc-netem(8) documents them."""
    args = ["netem"]
    if n.limit_packets is not None:
        args += ["limit", str(n.limit_packets)]
    if n.delay_ms or n.jitter_ms:
        args += ["delay", fmt_time(n.delay_ms)]
        if n.jitter_ms:
            args.append(fmt_time(n.jitter_ms))
            if n.delay_correlation_pct:
                args.append(_pct(n.delay_correlation_pct))
            if n.distribution != "uniform":
                # a distribution table shapes the jitter; netem rejects it
                # without jitter, and uniform is its built-in default.
                args += ["distribution", n.distribution]
    if n.loss_pct:
        args += ["loss", "random", _pct(n.loss_pct)]
        if n.loss_correlation_pct:
            args.append(_pct(n.loss_correlation_pct))
    if n.duplicate_pct:
        args += ["duplicate", _pct(n.duplicate_pct)]
        if n.duplicate_correlation_pct:
            args.append(_pct(n.duplicate_correlation_pct))
    if n.reorder_pct:
        args += ["reorder", _pct(n.reorder_pct)]
        if n.reorder_correlation_pct:
            args.append(_pct(n.reorder_correlation_pct))
        if n.reorder_gap is not None:
            args += ["gap", str(n.reorder_gap)]
    if n.corrupt_pct:
        args += ["corrupt", _pct(n.corrupt_pct)]
        if n.corrupt_correlation_pct:
            args.append(_pct(n.corrupt_correlation_pct))
    if n.rate_mbps is not None:
        args += ["rate", fmt_rate(n.rate_mbps)]
    return args


# The bucket must hold the largest packet that can reach the qdisc: a 64 KiB
# GSO packet, which tbf and htb count with the headers of every segment it
# becomes (about 68.5 KiB). tbf never dequeues a packet larger than its bucket:
# a phase change that shrinks the bucket below a packet already queued stalls
# the link for good (seen on 6.x kernels going from 200 to 50 Mbit/s with a
# 100 kB -> 32 kB bucket). 72 KiB keeps every bucket above that.
MIN_BURST_BYTES = 72 * 1024


def default_burst_bytes(rate_mbps: float) -> int:
    """Token bucket depth: 4 ms of traffic (one tick at HZ=250), at least MIN_BURST_BYTES.

    Too small and the bucket cannot refill between timer ticks (the achieved
    rate falls below the cap) or cannot hold a GSO packet (see above); too large
    and the start of a transfer runs at line rate.
    """
    per_tick = int(rate_mbps * 1e6 / 8 * 0.004)
    return max(MIN_BURST_BYTES, per_tick)


def tbf_args(rate_mbps: float, *, burst_bytes: int | None = None, latency_ms: float = 50.0) -> list[str]:
    """``tbf rate R burst B latency L``: L bounds how long a packet may queue."""
    burst = burst_bytes if burst_bytes is not None else default_burst_bytes(rate_mbps)
    if burst < 1:
        raise ValueError(f"burst_bytes {burst} is not >= 1")
    return ["tbf", "rate", fmt_rate(rate_mbps), "burst", str(burst), "latency", fmt_time(latency_ms)]


def _htb_class_args(rate_mbps: float) -> list[str]:
    burst = default_burst_bytes(rate_mbps)
    # quantum: bytes a class may send per round; htb warns when it is derived
    # from rate/r2q and falls outside 1 KB..200 KB, so it is set explicitly.
    quantum = min(200_000, max(1514, int(rate_mbps * 1e6 / 8 / 1000)))
    r = fmt_rate(rate_mbps)
    return ["htb", "rate", r, "ceil", r, "burst", str(burst), "cburst", str(burst),
            "quantum", str(quantum)]


def htb_commands(dev: str, rate_mbps: float, verb: str = "add") -> list[list[str]]:
    """Root htb with one default class carrying the cap (``verb`` add or change)."""
    cls = ["tc", "class", verb, "dev", dev, "parent", ROOT_HANDLE, "classid", HTB_CLASS]
    cls += _htb_class_args(rate_mbps)
    if verb == "change":
        return [cls]
    root = ["tc", "qdisc", "add", "dev", dev, "root", "handle", ROOT_HANDLE, "htb", "default", "1"]
    return [root, cls]


# --------------------------------------------------------------------------
# plans


@dataclass(frozen=True)
class Plan:
    """What to run on one device, and what it means in words."""

    dev: str
    layout: str
    commands: list[list[str]]
    applied: list[str]
    not_applied: list[str]


NETEM_MISSING = "netem qdisc not available in this kernel: load sch_netem"


def choose_layout(shapings: Iterable[Shaping], kinds: Collection[str]) -> tuple[str, list[str]]:
    """One layout for every phase, from what they need and the qdisc kinds available.

    Returns (layout, not_applied lines: each names what is missing and what it costs).
    """
    shapings = list(shapings)
    need_rate = any(s.rate_mbps is not None for s in shapings)
    need_netem = any(s.netem.needs_netem for s in shapings)
    missing: list[str] = []
    has = set(kinds)
    netem_ok = "netem" in has
    if need_netem and not netem_ok:
        lost = sorted({w for s in shapings for w in _netem_words(s.netem)})
        missing.append(f"{NETEM_MISSING}; {' and '.join(lost)} not applied")
        need_netem = False
    if need_rate and need_netem:
        if "htb" in has:
            return "htb+netem", missing
        if "tbf" in has:
            return "tbf+netem", missing
        return "netem", missing + _rate_in_netem_note()
    if need_rate:
        if "tbf" in has:
            return "tbf", missing
        if "htb" in has:
            return "htb", missing
        if netem_ok:
            return "netem-rate", missing
        missing.append("neither tbf, htb nor netem is available in this kernel: rate cap not applied")
        return "none", missing
    if need_netem:
        return "netem", missing
    return "none", missing


def _rate_in_netem_note() -> list[str]:
    return ["tbf and htb not available: the rate cap is netem's own rate (it counts "
            "packet sizes, not a token bucket)"]


def _netem_words(n: Netem) -> list[str]:
    words = []
    if n.delay_ms:
        words.append("latency")
    if n.jitter_ms:
        words.append("jitter")
    for name, word in (("loss_pct", "loss"), ("duplicate_pct", "duplication"),
                       ("reorder_pct", "reordering"), ("corrupt_pct", "corruption")):
        if getattr(n, name):
            words.append(word)
    return words


def describe(s: Shaping, layout: str) -> list[str]:
    """Human-readable lines for what a layout applies of one phase's shaping."""
    out = []
    if layout in ("tbf", "htb", "htb+netem", "tbf+netem", "netem-rate"):
        if s.rate_mbps is None:
            out.append(f"rate: uncapped (the {layout.split('+')[0].split('-')[0]} qdisc stays, "
                       f"at {fmt_rate(UNCAPPED_MBPS)})")
        else:
            via = {"netem-rate": "netem rate"}.get(layout, layout.split("+")[0])
            out.append(f"rate cap {_num(s.rate_mbps)} Mbit/s ({via})")
    if layout in ("netem", "htb+netem", "tbf+netem"):
        n = s.netem
        if n.delay_ms or n.jitter_ms:
            line = f"latency {_num(n.delay_ms)} ms"
            if n.jitter_ms:
                line += f", jitter {_num(n.jitter_ms)} ms ({n.distribution})"
            out.append(line + " (netem)")
        for name, word in (("loss_pct", "loss"), ("duplicate_pct", "duplicate"),
                           ("reorder_pct", "reorder"), ("corrupt_pct", "corrupt")):
            v = getattr(n, name)
            if v:
                out.append(f"{word} {_num(v)}% (netem)")
        if layout == "netem" and s.rate_mbps is not None:
            out.append(f"rate cap {_num(s.rate_mbps)} Mbit/s (netem rate)")
    return out


def _netem_for(s: Shaping, layout: str) -> Netem:
    n = s.netem
    if layout in ("netem-rate", "netem") and s.rate_mbps is not None:
        n = replace(n, rate_mbps=s.rate_mbps)
    if layout == "netem-rate":
        n = replace(n, rate_mbps=s.rate_mbps or UNCAPPED_MBPS)
    return n


def apply_commands(dev: str, s: Shaping, layout: str) -> list[list[str]]:
    """Commands that install ``layout`` on ``dev`` with phase ``s`` (root replaced)."""
    rate = s.rate_mbps if s.rate_mbps is not None else UNCAPPED_MBPS
    q = ["tc", "qdisc"]
    if layout == "none":
        return []
    if layout == "tbf":
        return [q + ["replace", "dev", dev, "root", "handle", ROOT_HANDLE] + tbf_args(rate)]
    if layout in ("netem", "netem-rate"):
        return [q + ["replace", "dev", dev, "root", "handle", ROOT_HANDLE]
                + netem_args(_netem_for(s, layout))]
    if layout == "htb":
        return htb_commands(dev, rate)
    if layout == "htb+netem":
        return htb_commands(dev, rate) + [
            q + ["add", "dev", dev, "parent", HTB_CLASS, "handle", NETEM_HANDLE]
            + netem_args(s.netem)
        ]
    if layout == "tbf+netem":
        return [
            q + ["replace", "dev", dev, "root", "handle", ROOT_HANDLE] + tbf_args(rate),
            q + ["add", "dev", dev, "parent", HTB_CLASS, "handle", NETEM_HANDLE]
            + netem_args(s.netem),
        ]
    raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")


def change_commands(dev: str, s: Shaping, layout: str) -> list[list[str]]:
    """Commands that move an installed ``layout`` to phase ``s`` in place (``change``)."""
    rate = s.rate_mbps if s.rate_mbps is not None else UNCAPPED_MBPS
    q = ["tc", "qdisc", "change", "dev", dev]
    if layout == "none":
        return []
    if layout == "tbf":
        return [q + ["root", "handle", ROOT_HANDLE] + tbf_args(rate)]
    if layout in ("netem", "netem-rate"):
        return [q + ["root", "handle", ROOT_HANDLE] + netem_args(_netem_for(s, layout))]
    if layout == "htb":
        return htb_commands(dev, rate, verb="change")
    if layout == "htb+netem":
        return htb_commands(dev, rate, verb="change") + [
            q + ["parent", HTB_CLASS, "handle", NETEM_HANDLE] + netem_args(s.netem)
        ]
    if layout == "tbf+netem":
        return [
            q + ["root", "handle", ROOT_HANDLE] + tbf_args(rate),
            q + ["parent", HTB_CLASS, "handle", NETEM_HANDLE] + netem_args(s.netem),
        ]
    raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")


def teardown_commands(dev: str) -> list[list[str]]:
    """Remove whatever root qdisc is on ``dev`` (the kernel's default returns)."""
    return [["tc", "qdisc", "del", "dev", dev, "root"]]


def plan(dev: str, phases: Sequence[Shaping], kinds: Collection[str]) -> Plan:
    """The plan for a timeline: one layout for all phases, installed with the first.

    ``phases[0]`` is applied now; later phases use ``change_commands``.
    Raises ValueError when ``phases`` is empty.
    """
    if not phases:
        raise ValueError("no phases to plan")
    layout, missing = choose_layout(phases, kinds)
    first = phases[0]
    applied = describe(first, layout)
    if layout == "none" and not missing:
        applied = ["no network conditions in the profile: nothing to shape"]
    return Plan(dev=dev, layout=layout, commands=apply_commands(dev, first, layout),
                applied=applied, not_applied=missing)
