"""``simstream testbed``: up, exec, status, down.

``up`` in the foreground follows the profile's timeline (one ``tc qdisc
change`` per phase boundary, each with its measured time-to-effect) until
``--duration`` runs out, the command after ``--`` exits, Ctrl-C or SIGTERM; then
it removes everything it made. ``up --detach`` leaves the testbed up for
``exec`` and ``down``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from simstream import clock
from simstream.errors import UsageError
from simstream.profile import Profile, find_profile, load_profile
from simstream.testbed import tc
from simstream.testbed.detect import probe, run_cmd
from simstream.testbed.netns import (
    CONSUMER_ADDR,
    PRODUCER_ADDR,
    PRODUCER_IFACE,
    SIDES,
    NotPrivileged,
    PhaseShaping,
    Testbed,
    TestbedError,
    cleanup_all,
    leftovers,
    namespace_names,
    validate_name,
)
from simstream.testbed.userlink import forwarder_pids

# An open-ended foreground run still ends: a day at most.
MAX_FOREGROUND_S = 86_400.0
# How often the foreground loop wakes to check the clock and the child.
TICK_S = 0.05
# How long `up --sync-log` waits for the emitter's first record.
SYNC_TIMEOUT_S = 60.0


def phase_boundaries(phases: list[PhaseShaping], repeat: bool,
                     horizon_s: float) -> Iterator[tuple[float, int]]:
    """(seconds from start, phase index) of each phase start before ``horizon_s``.

    The first is (0.0, 0). A phase without duration_s lasts to the horizon.
    Bounded: at most one boundary per phase per cycle, cycles until the horizon.
    """
    t = 0.0
    cycle_s = sum(p.duration_s or 0.0 for p in phases)
    if any(p.duration_s is None for p in phases) or cycle_s <= 0:
        repeat = False
    max_cycles = int(horizon_s / cycle_s) + 1 if repeat else 1
    for _ in range(max_cycles):
        for i, p in enumerate(phases):
            if t >= horizon_s:
                return
            yield t, i
            if p.duration_s is None:
                return
            t += p.duration_s
        if not repeat:
            return


def _load(profile_path: str | None) -> Profile | None:
    return load_profile(find_profile(profile_path)) if profile_path else None


@click.group("testbed")
def testbed() -> None:
    """Producer and consumer network namespaces joined by a shaped veth pair."""


@testbed.command("up")
@click.option("--name", default="default", show_default=True, help="testbed name")
@click.option("--profile", "profile_path", default=None, help="profile file or bundled name")
@click.option("--duration", type=float, default=None,
              help="seconds to stay up in the foreground (default: the profile's "
                   "stop.duration_s, or until the command after -- exits)")
@click.option("--detach", is_flag=True, help="apply the first phase and leave it up")
@click.option("--i-know-iface", "iface", default=None, metavar="IF",
              help="shape this existing interface instead of making namespaces "
                   "(e.g. a container's eth0); nothing else is touched")
@click.option("--sync-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the emitter's emit log: phase 0 starts at its first message's t_sched, "
                   "so kernel phases change when the emitter's do")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def up(name: str, profile_path: str | None, duration: float | None, detach: bool,
       iface: str | None, sync_log: Path | None, cmd: tuple[str, ...]) -> None:
    """Bring a testbed up and apply the profile's network section on the producer's egress.

    After `--`, CMD runs under the shaping (inside the producer namespace, or
    as is with --i-know-iface) and the testbed goes down when it exits.
    """
    try:
        validate_name(name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if duration is not None and duration <= 0:
        raise UsageError(f"--duration {duration} is not > 0")
    if detach and cmd:
        raise UsageError("--detach and a command after -- exclude each other")
    if detach and sync_log:
        raise UsageError("--sync-log follows a timeline in the foreground; not with --detach")
    profile = _load(profile_path)
    try:
        if detach:
            tb = Testbed(name, profile, i_know_iface=iface, detached=True).create()
            _print_up(tb)
            click.echo(f"left up; run commands with: simstream testbed exec --name {name} "
                       f"producer|consumer -- CMD; remove with: simstream testbed down "
                       + (f"--i-know-iface {iface}" if iface else name))
            return
        with Testbed.up(name, profile, i_know_iface=iface) as live:
            _print_up(live)
            # with a command, its exit ends the run (the emitter drains past
            # stop.duration_s); without one, the profile's duration does
            horizon = duration or (None if cmd or profile is None else profile.stop.duration_s)
            rc = _foreground(live, profile.timeline.repeat if profile else False,
                             horizon, list(cmd), sync_log)
        click.echo("testbed down: namespaces, veth and qdiscs removed"
                   if iface is None else f"testbed down: root qdisc removed from {iface}")
        if rc:
            sys.exit(rc)
    except NotPrivileged as e:
        raise UsageError(str(e)) from None
    except TestbedError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


def _print_up(tb: Testbed) -> None:
    if tb.producer_ns:
        click.echo(f"testbed {tb.name}: producer {tb.producer_addr} ({tb.producer_ns}, "
                   f"{tb.producer_iface}) <-> consumer {tb.consumer_addr} "
                   f"({tb.consumer_ns}, {tb.consumer_iface})")
    else:
        click.echo(f"testbed {tb.name}: shaping {tb.producer_iface} (named by the user)")
    assert tb.plan is not None
    click.echo(f"layout: {tb.plan.layout}")
    for line in tb.applied:
        click.echo(f"applied: {line}")
    for line in tb.not_applied:
        click.echo(f"NOT applied: {line}")
    click.echo("up", nl=True)


def _foreground(tb: Testbed, repeat: bool, horizon_s: float | None, cmd: list[str],
                sync_log: Path | None = None) -> int:
    """Follow the timeline until the horizon or the child's exit; returns the child's rc."""
    child = None
    t_started = clock.now()
    if cmd:
        argv = tb.argv_in("producer", cmd) if tb.producer_ns else cmd
        child = subprocess.Popen(argv)
    limit = min(horizon_s or MAX_FOREGROUND_S, MAX_FOREGROUND_S)
    t0 = time.monotonic()
    if sync_log is not None:
        t_sched = _first_t_sched(sync_log, t_started, child)
        if t_sched is None:
            click.echo(f"no emit-log record in {sync_log} within {SYNC_TIMEOUT_S:g} s: "
                       f"timeline starts at testbed start")
        else:
            # both clocks are simstream.clock (Unix seconds, one host)
            t0 = time.monotonic() - (clock.now() - t_sched)
            click.echo(f"timeline anchored to the emitter's first message "
                       f"({t_sched - t_started:.3f} s after testbed start)")
    rc = 0
    current = tb.phases[0].shaping if tb.phases else None

    def reshape() -> None:
        # a named interface that came back (a container's link cut and reconnected)
        # has lost its qdiscs: put the phase in force back on it
        if current is None:
            return
        was = tb.producer_iface
        try:
            lines = tb.reshape_if_recreated(current)
        except TestbedError as e:
            click.echo(f"{was} came back as {tb.producer_iface}; shaping NOT re-applied: {e}")
            return
        if lines is not None:
            click.echo(f"{was} came back as {tb.producer_iface} at "
                       f"{time.monotonic() - t0:.3f} s: re-applied "
                       f"{'; '.join(lines) or 'no shaping'}")

    try:
        for start, idx in phase_boundaries(tb.phases, repeat, limit):
            if not _wait_until(t0 + start, child, reshape):
                break
            if start > 0:
                ph = tb.phases[idx]
                current = ph.shaping
                dt = tb.set_phase(ph.shaping)
                desc = "; ".join(tc.describe(ph.shaping, tb.plan.layout if tb.plan else "none"))
                click.echo(f"phase {ph.name} at {start:.3f} s: {desc or 'no change'} "
                           f"(took effect in {dt * 1e3:.1f} ms)")
        _wait_until(t0 + limit, child, reshape)
    finally:
        if child is not None:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(timeout=5)
            rc = child.returncode or 0
    return rc


def _first_t_sched(path: Path, not_before: float,
                   child: subprocess.Popen[bytes] | None) -> float | None:
    """t_sched of the first emit-log record written after ``not_before`` (bounded wait).

    A record older than ``not_before`` is a previous run's: the emitter has not
    truncated the file yet, or appends to it (``emit --append-log``: a restarted
    emitter's log keeps its earlier life's records before the new ones).
    """
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            return None
        t = None
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        ts = float(json.loads(line)["t_sched"]) if line.endswith("\n") else None
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn line (a killed writer's last)
                    if ts is not None and ts >= not_before - 1.0:
                        t = ts
                        break
        except OSError:
            t = None
        if t is not None:
            return t
        time.sleep(TICK_S)
    return None


def _wait_until(deadline: float, child: subprocess.Popen[bytes] | None,
                on_tick: Callable[[], None] | None = None) -> bool:
    """Sleep in ticks until ``deadline`` (monotonic); False if the child exited first.
    ``on_tick`` runs every tick."""
    while True:
        if child is not None and child.poll() is not None:
            return False
        if on_tick is not None:
            on_tick()
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(TICK_S, left))


@testbed.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--name", default="default", show_default=True)
@click.argument("side", type=click.Choice(SIDES))
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, side: str, cmd: tuple[str, ...]) -> None:
    """Run CMD inside the producer's or consumer's namespace (after --)."""
    prod, cons = namespace_names(_valid_name(name))
    ns = prod if side == "producer" else cons
    if ns not in leftovers(name).namespaces:
        raise UsageError(f"no testbed {name!r} is up (simstream testbed up --name {name} --detach)")
    os.execvp("ip", ["ip", "netns", "exec", ns, *cmd])


@testbed.command("status")
def status() -> None:
    """Testbeds that are up (found by their namespace prefix) and their qdiscs."""
    found = leftovers()
    prods = [ns for ns in found.namespaces if ns.endswith("-prod")]
    others = [ns for ns in found.namespaces if not ns.endswith(("-prod", "-cons"))]
    if not (prods or others or found.links):
        click.echo("no testbed is up")
        return
    for ns in prods:
        name = ns.removeprefix("ssb-").removesuffix("-prod")
        click.echo(f"testbed {name}: producer {PRODUCER_ADDR} ({ns}) -> consumer "
                   f"{CONSUMER_ADDR} (ssb-{name}-cons)")
        cp = run_cmd(["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev",
                      PRODUCER_IFACE])
        for line in cp.stdout.splitlines():
            click.echo(f"  {line.strip()}")
        for pid in forwarder_pids(ns):
            click.echo(f"  user-space link emulator: forwarder pid {pid} (ssb-prod <-> ssb-cons)")
    for ns in others:
        click.echo(f"leftover namespace {ns} (simstream testbed down --all)")
    for ln in found.links:
        click.echo(f"leftover link {ln} (simstream testbed down --all)")


def _valid_name(name: str) -> str:
    try:
        return validate_name(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


@testbed.command("down")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="every testbed and leftover (ssb- prefix)")
@click.option("--i-know-iface", "iface", default=None, metavar="IF",
              help="remove the root qdisc that `up --i-know-iface IF --detach` put on IF")
def down(name: str | None, all_: bool, iface: str | None) -> None:
    """Remove a testbed (NAME), every leftover (--all), or shaping on a named interface."""
    if sum(x is not None and x is not False for x in (name, all_ or None, iface)) != 1:
        raise UsageError("give exactly one of NAME, --all or --i-know-iface IF")
    if name is not None:
        _valid_name(name)
    offer = probe()
    if not offer.privileged:
        raise UsageError("testbed down needs root or CAP_NET_ADMIN")
    if iface is not None:
        cp = run_cmd(tc.teardown_commands(iface)[0])
        click.echo(f"root qdisc removed from {iface}" if cp.returncode == 0
                   else f"{iface}: {cp.stderr.strip()}")
        return
    t0 = clock.now()
    found, errors = cleanup_all(None if all_ else name)
    if found.killed:
        click.echo(f"ended {len(found.killed)} processes inside the namespaces "
                   f"(pids {', '.join(map(str, found.killed[:20]))})")
    for ns in found.namespaces:
        click.echo(f"removed namespace {ns}")
    for ln in found.links:
        click.echo(f"removed link {ln}")
    if not found:
        click.echo("nothing to remove" if all_ else f"no testbed {name!r} is up")
    for e in errors:
        click.echo(f"error: {e}", err=True)
    if errors:
        sys.exit(1)
    click.echo(f"done in {clock.now() - t0:.2f} s")


if __name__ == "__main__":
    from simstream.cli import main

    main()


def _add_docker() -> None:
    from simstream.testbed.docker import docker

    testbed.add_command(docker)


_add_docker()
