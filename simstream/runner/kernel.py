"""Kernel shaping and packet capture for ``simstream run``.

``--kernel-shaping`` runs the consumer and the emitter in the two namespaces of
a ``simstream.testbed`` testbed: the kernel (tbf/htb/netem on the producer's
veth) shapes the link, and the emitter gets a copy of the profile whose
``network`` section is neutral, so nothing is shaped twice. Phase changes are
timed from the emitter's first ``t_sched`` (as ``testbed up --sync-log``
does) and each one's time-to-effect is recorded.

``--capture`` records the stream's port into a pcap during the run and checks
it against the profile afterwards (``simstream.testbed.verify``).

Everything here is glue between the runner and the testbed package; the
shaping itself (tc command lines, namespaces, teardown) lives there.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simstream import clock
from simstream.errors import UsageError
from simstream.profile import NetworkConditions, Profile
from simstream.testbed import tc

__all__ = [
    "CAPTURE_FILE",
    "SENDER_CAPTURE_FILE",
    "EMITTER_PROFILE_FILE",
    "SHAPING_FILE",
    "VERIFY_FILE",
    "PhaseChangeRecord",
    "can_capture",
    "check_kernel_shaping",
    "emitter_profile",
    "follow_timeline",
    "kernel_testbed",
    "listening_in",
    "listening_ports",
    "testbed_name",
    "user_space_shaping",
]

SHAPING_FILE = "shaping.json"
VERIFY_FILE = "verify.json"
CAPTURE_FILE = "capture.pcap"
#: the producer's side of the user-space link, beside the consumer's capture
SENDER_CAPTURE_FILE = "capture-producer.pcap"
#: bytes kept of each packet there: Ethernet, IP and TCP headers with options
SENDER_SNAPLEN = 128
EMITTER_PROFILE_FILE = "emitter-profile.yaml"
CAP_NET_RAW_BIT = 13

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------
# names and profiles (pure)


def testbed_name(profile_name: str, pid: int) -> str:
    """A testbed name for one run: the profile's name (a-z, 0-9, _ only) and the
    runner's pid, at most 24 characters, so two concurrent runs never collide."""
    slug = re.sub(r"[^a-z0-9]+", "_", profile_name.lower()).strip("_") or "run"
    tail = f"_{pid}"
    return slug[: 24 - len(tail)].rstrip("_") + tail


def emitter_profile(profile: Profile) -> Profile:
    """The profile the emitter gets under kernel shaping: the same source, transport,
    timeline (phase names, durations, rate_hz), faults and stop, but no network
    conditions in user space, neither base nor per phase."""
    data = profile.model_dump(mode="python")
    data["network"] = NetworkConditions().model_dump(mode="python")
    for ph in data["timeline"]["phases"]:
        ph["network"] = None
    return Profile.model_validate(data)


def user_space_shaping(profile: Profile) -> list[str]:
    """What the emitter shapes itself (user-space shaping), one line per phase that
    has network conditions; empty when the profile asks for none."""
    out = []
    scope = profile.network.bandwidth_scope.replace("_", " ")
    for ph in profile.timeline.phases:
        s = tc.shaping_from_network(profile.network, ph.network)  # per rank, as the emitter caps
        words = []
        if s.rate_mbps is not None:
            words.append(f"rate cap {s.rate_mbps:g} Mbit/s ({scope})")
        if s.netem.delay_ms:
            words.append(f"latency {s.netem.delay_ms:g} ms")
        if s.netem.jitter_ms:
            words.append(f"jitter {s.netem.jitter_ms:g} ms ({s.netem.distribution})")
        if words:
            out.append(f"phase {ph.name}: " + ", ".join(words) + " (user space, in the emitter)")
    return out


# --------------------------------------------------------------------------
# readiness inside a namespace


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Ports in LISTEN state in the text of /proc/net/tcp or /proc/net/tcp6 (one or
    both, concatenated; header lines are skipped)."""
    ports = set()
    for line in proc_net_tcp.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[3] == "0A" and ":" in parts[1]:
            try:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
            except ValueError:
                continue
    return ports


def listening_in(netns: str, port: int) -> bool:
    """True when a socket LISTENs on ``port`` inside network namespace ``netns``.

    /proc/net/tcp is per network namespace, so it is read from inside it;
    nothing connects to the consumer to find out.
    """
    from simstream.testbed.detect import run_cmd

    cp = run_cmd(["ip", "netns", "exec", netns, "cat", "/proc/net/tcp", "/proc/net/tcp6"])
    return port in listening_ports(cp.stdout)


# --------------------------------------------------------------------------
# privileges


def _cap_eff() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def can_capture() -> bool:
    """True when this process may open a packet socket (root or CAP_NET_RAW)."""
    return os.geteuid() == 0 or bool(_cap_eff() >> CAP_NET_RAW_BIT & 1)


def check_kernel_shaping() -> Any:
    """What the kernel offers (``testbed.detect.KernelOffer``), once privileges are
    known to be there. Raises UsageError (exit 2) with the testbed's one-line
    message, which suggests user-space shaping, when they are not."""
    from simstream.testbed import netns

    offer = netns.probe()
    if not offer.privileged:
        raise UsageError(netns.USER_SPACE_HINT)
    return offer


@contextmanager
def kernel_testbed(name: str, profile: Profile, offer: Any = None) -> Iterator[Any]:
    """``Testbed.up(name, profile)``: namespaces, veth and phase 0's qdisc, removed on
    every kind of exit (the testbed's own teardown). Raises UsageError without
    privileges, TestbedError when a command fails."""
    from simstream.testbed import netns

    offer = offer if offer is not None else check_kernel_shaping()
    try:
        with netns.Testbed.up(name, profile, offer=offer) as tb:
            yield tb
    except netns.NotPrivileged as e:
        raise UsageError(str(e)) from None


# --------------------------------------------------------------------------
# following the timeline


@dataclass
class PhaseChangeRecord:
    """One ``tc qdisc change`` at a phase boundary. Times: Unix seconds; offsets
    and durations: seconds."""

    phase: str
    at_s: float  # the boundary, from the emitter's first t_sched
    t_planned: float
    t_started: float  # when the change command was issued
    late_s: float  # t_started - t_planned
    command_s: float  # the tc command(s) alone
    took_effect_s: float | None  # until a read-back showed the kernel holds it
    applied: list[str] = field(default_factory=list)


@dataclass
class TimelineRun:
    anchor: float | None  # the emitter's first t_sched (None: none seen in time)
    anchor_note: str
    changes: list[PhaseChangeRecord]
    emitter_rc: int | None


def follow_timeline(tb: Any, profile: Profile, emit_log: Path, emitter: Any,
                    t_started: float, horizon_s: float, echo: Echo = _quiet) -> TimelineRun:
    """Apply each phase boundary's shaping to the qdisc while the emitter runs.

    Phase 0 is already applied by the testbed. The timeline starts at the
    emitter's first ``t_sched`` read from ``emit_log`` as it grows (records
    older than ``t_started`` are a previous run's); boundaries after
    ``horizon_s`` seconds, or after the emitter exited, are not applied.
    ``emitter``: a ``runner.procs.Child``. Returns when the last boundary
    passed or the emitter exited. Raises TestbedError when a change fails.
    """
    from simstream.testbed.cli import SYNC_TIMEOUT_S, _first_t_sched, _wait_until, phase_boundaries

    child = emitter.proc
    t_sched = _first_t_sched(emit_log, t_started, child)
    if t_sched is None:
        note = (f"no emit-log record within {SYNC_TIMEOUT_S:g} s (or the emitter exited): "
                f"the timeline started when the emitter did")
        anchor = t_started
    else:
        note = f"the emitter's first t_sched ({t_sched - t_started:.3f} s after it started)"
        anchor = t_sched
    echo(f"kernel timeline anchored to {note}")
    # both clocks are simstream.clock (Unix seconds, one host)
    t0 = time.monotonic() - (clock.now() - anchor)
    changes: list[PhaseChangeRecord] = []
    layout = tb.plan.layout if tb.plan is not None else "none"
    for start, idx in phase_boundaries(tb.phases, profile.timeline.repeat, horizon_s):
        if start == 0 or layout == "none":
            continue
        if not _wait_until(t0 + start, child):
            break
        ph = tb.phases[idx]
        t_issue = clock.now()
        took = tb.set_phase(ph.shaping)
        last = tb.last_change
        rec = PhaseChangeRecord(
            phase=ph.name, at_s=start, t_planned=anchor + start, t_started=t_issue,
            late_s=t_issue - (anchor + start),
            command_s=last.command_s if last is not None else took,
            took_effect_s=last.confirmed_s if last is not None else None,
            applied=list(last.applied) if last is not None else [],
        )
        changes.append(rec)
        effect = (f"took effect in {rec.took_effect_s * 1e3:.1f} ms"
                  if rec.took_effect_s is not None else
                  f"command took {rec.command_s * 1e3:.1f} ms (not confirmed by a read-back)")
        echo(f"phase {ph.name} at {start:.3f} s: {'; '.join(rec.applied) or 'no change'} "
             f"({effect}, {rec.late_s * 1e3:+.1f} ms from the boundary)")
    return TimelineRun(t_sched, note, changes, child.poll())


def _link_devices(tb: Any) -> dict[str, Any] | None:
    devices = getattr(tb, "link_devices", None)
    if tb.emulator != "user-link" or devices is None:
        return None
    out: dict[str, Any] = devices.to_json()
    fwd = getattr(tb, "forwarder", None)
    if fwd is not None and fwd.offload != devices.offload:
        out["offload"] = fwd.offload
        out["why"] += f"; offload refused by the kernel ({fwd.offload_error})"
    return out


def shaping_record(tb: Any, name: str, timeline: TimelineRun | None,
                   emitter_profile_path: Path) -> dict[str, Any]:
    """The content of shaping.json for a kernel-shaped run."""
    assert tb.plan is not None
    changes = timeline.changes if timeline is not None else []
    effects = [c.took_effect_s for c in changes if c.took_effect_s is not None]
    return {
        "mode": "kernel",
        "testbed": name,
        "layout": tb.plan.layout,
        "emulator": tb.emulator,
        "emulator_why": tb.emulator_why,
        "interface": tb.producer_iface,
        "namespaces": {"producer": tb.producer_ns, "consumer": tb.consumer_ns},
        "addresses": {"producer": tb.producer_addr, "consumer": tb.consumer_addr},
        "kernel_qdiscs": sorted(tb.offer.kinds) if tb.offer is not None else [],
        # the user-space link's TUN devices: what they got and why (MTU 1500 and no
        # offload when loss is asked for, so loss falls per TCP segment)
        "link_devices": _link_devices(tb),
        "applied": list(tb.applied),
        "not_applied": list(tb.not_applied),
        "emitter_profile": emitter_profile_path.name,
        "emitter_user_space_shaping": "none: the emitter's profile has no network conditions",
        "phases": [{"name": p.name, "duration_s": p.duration_s,
                    "kernel": tb.describe_shaping(p.shaping)} for p in tb.phases],
        "timeline_anchor": timeline.anchor if timeline is not None else None,
        "timeline_anchor_note": timeline.anchor_note if timeline is not None else "",
        "phase_changes": [c.__dict__ for c in changes],
        "time_to_effect_s": {
            "count": len(effects),
            "max": max(effects) if effects else None,
            "median": sorted(effects)[len(effects) // 2] if effects else None,
        },
    }


# --------------------------------------------------------------------------
# capture and verification


def start_capture(procs: list[Any], out: Path, iface: str, port: int, duration_s: float,
                  netns: str | None = None, ready_timeout_s: float = 60.0,
                  snaplen: int = 0, name: str = CAPTURE_FILE) -> Any:
    """Start ``simstream capture`` of ``tcp port`` on ``iface`` (inside ``netns`` if
    given) into DIR/capture.pcap, bounded by ``duration_s`` (and ``snaplen`` bytes
    a packet when > 0); return once its packet socket is open. The child is appended to ``procs`` (stopped on every exit).

    Raises RuntimeError when it exits or does not start within ``ready_timeout_s``.
    """
    from simstream.runner.procs import Child, wait_until
    from simstream.testbed.capture import capture_argv

    log = out / (Path(name).stem + ".log")
    argv = capture_argv(iface, port, (out / name).resolve(), duration_s, netns=netns,
                        snaplen=snaplen)
    child = Child(Path(name).stem, argv, log)
    procs.append(child)

    def ready() -> bool:
        try:
            return "capturing on" in log.read_text(errors="replace")
        except OSError:
            return False

    wait_until(ready, ready_timeout_s, f"the capture on {iface} port {port} to start",
               poll_s=0.05, alive=child)
    return child


def capture_summary(out: Path) -> str:
    """The capture's closing line ("captured N packets (D dropped by the kernel) to FILE")."""
    try:
        lines = (out / "capture.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((ln for ln in reversed(lines) if ln.startswith("captured ")), "")


def verify_run(out: Path, profile: Profile, port: int) -> tuple[dict[str, Any], Any]:
    """Check DIR/capture.pcap against the profile and DIR/emit.jsonl; write
    DIR/verify.json. Returns (its content, the ``verify.Report``).

    Raises UsageError for an unreadable capture or emit log.
    """
    import json

    from simstream.testbed.verify import emulator_of, load_emit_log, verify_capture

    emit = out / "emit.jsonl"
    log = load_emit_log(emit) if emit.exists() else None
    sender = out / SENDER_CAPTURE_FILE
    report = verify_capture(out / CAPTURE_FILE, profile, emit_log=log, port=port,
                            emulator=emulator_of(out, profile),
                            sender_pcap=sender if sender.exists() else None)
    n_fail = sum(c.status == "FAIL" for c in report.checks)
    data = {
        "pcap": CAPTURE_FILE,
        "port": port,
        "emit_log": emit.name if log is not None else None,
        "sender_pcap": sender.name if sender.exists() else None,
        "capture": capture_summary(out),
        "passed": not report.failed,
        "verdict": "FAIL" if report.failed else "PASS",
        "failed_checks": n_fail,
        "checks": [c.__dict__ for c in report.checks],
        "facts": report.facts,
    }
    (out / VERIFY_FILE).write_text(json.dumps(data, indent=1, default=str))
    return data, report
