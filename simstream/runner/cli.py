"""``simstream run`` and ``simstream investigate``."""

from __future__ import annotations

import contextlib
import re
import signal
import sys
from pathlib import Path
from typing import Any

import click

from simstream.errors import UsageError, echo_to_pipe, reader_may_leave
from simstream.profile import Profile, find_profile, load_profile
from simstream.runner.core import RunResult, default_out_dir, run_profile
from simstream.runner.procs import Interrupted, orderly_signals


def _print_shaping(shaping: dict[str, Any]) -> None:
    """Which shaping the run had (user space or kernel), and what was not applied."""
    if not shaping:
        return
    if shaping.get("mode") == "kernel":
        click.echo(f"shaping: kernel ({shaping.get('layout')} on {shaping.get('interface')}, "
                   f"testbed {shaping.get('testbed')}); the emitter shaped nothing itself")
    else:
        click.echo("shaping: user space (in the emitter)")
    for line in shaping.get("applied") or []:
        click.echo(f"  applied: {line}")
    not_applied = shaping.get("not_applied") or []
    for line in not_applied:
        click.echo(f"  NOT applied: {line}")
    if not not_applied:
        click.echo("  not applied: nothing")
    tte = shaping.get("time_to_effect_s") or {}
    if tte.get("count"):
        click.echo(f"  phase changes: {tte['count']}, time to effect median "
                   f"{tte['median'] * 1e3:.1f} ms, max {tte['max'] * 1e3:.1f} ms")


def _print_verify(verify: dict[str, Any]) -> None:
    from simstream.testbed.verify import Check, Report, print_report

    if verify.get("capture"):
        click.echo(verify["capture"])
    print_report(Report([Check(**c) for c in verify.get("checks") or []],
                        verify.get("facts") or {}))


def _tail_words(tail: dict[str, Any] | None) -> str:
    """`` lost_at_tail N (M logged at close)`` for the consumer line; empty without
    the block (no emit log or no sequence numbers)."""
    if not tail:
        return ""
    return f" lost_at_tail {tail['count']} ({tail['logged_at_close']} logged at close)"


def _watch(every_s: float, label: str = "") -> Any:
    """``run_profile``'s ``watch``: the run's progress on stderr, a live line on a
    terminal, else a plain line every ``every_s`` seconds (0: none)."""
    from simstream.runner.progress import RunProgress

    def watch(out: Path, profile: Profile, mode: str, duration_s: float | None) -> Any:
        if every_s == 0:
            return contextlib.nullcontext()
        planned = duration_s or profile.stop.duration_s
        text = "" if planned else (f"until {profile.stop.messages} messages per rank"
                                   if profile.stop.messages else "")
        return RunProgress(out, planned_s=planned, planned_text=text, label=label,
                           emitter=mode != "random", interval_s=every_s)

    return watch


_PROGRESS_EVERY = click.option(
    "--progress-every", type=click.FloatRange(min=0), default=5.0, show_default=True,
    metavar="SECONDS",
    help="where stderr is not a terminal: a progress line (messages sent, processed, "
         "quarantined, Q1, rate, elapsed of planned) this often (0: none); a terminal "
         "gets one line refreshed in place")


def _print_verdict(result: RunResult) -> None:
    s = result.summary
    _print_shaping(result.shaping)
    if result.verify is not None:
        _print_verify(result.verify)
    if s:
        click.echo(
            f"consumer: received {s.get('received')} processed {s.get('processed')} "
            f"quarantined {s.get('quarantined')} lost {s.get('lost')} "
            f"duplicated {s.get('duplicated')} reordered {s.get('reordered')}"
            + _tail_words(s.get("lost_at_tail"))
        )
    if result.report:
        from simstream.diagnose.cli import _print_report

        _print_report(result.report)


_RAY_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.-]+:\d{1,5})$")


def _ray_args(address: str | None, backend: str | None = None) -> list[str]:
    """The consumer's flags for a queue backend and a Ray address; UsageError when
    the address cannot be one."""
    out = [] if backend is None else ["--queue-backend", backend]
    if address is None:
        return out
    if not _RAY_ADDRESS.match(address):
        raise UsageError(f"--ray-address {address!r} is not 'auto' or HOST:PORT")
    return [*out, "--ray-address", address]


_QUEUE_BACKEND = click.option(
    "--queue-backend", type=click.Choice(["local", "process", "ray"]), default=None,
    help="override the profile's consumer.queue.backend (ray: the consumer runs as Ray "
         "receiver, Q1 and inference actors; with --ray-address on your cluster)")


@click.command("run")
@click.option("--profile", "profile_path", required=True, help="profile file or bundled name")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="run directory (default runs/<profile>-<timestamp>)")
@click.option("--duration", type=float, default=None, help="override stop.duration_s")
@click.option("--force", is_flag=True,
              help="--out may hold an earlier run: its files are removed first")
@click.option("--kernel-shaping", is_flag=True,
              help="run consumer and emitter in two network namespaces and let the kernel "
                   "(tc tbf/htb/netem) shape the link instead of the emitter; needs root or "
                   "CAP_NET_ADMIN")
@click.option("--capture", is_flag=True,
              help="record the stream's port into DIR/capture.pcap and verify it against the "
                   "profile (DIR/verify.json); exit 1 when a check fails; needs root or "
                   "CAP_NET_RAW")
@click.option("--capture-snaplen", type=int, default=0, show_default=True, metavar="N",
              help="keep only the first N bytes (>= 96) of each captured packet: rates are "
                   "verified, message framing is not; for fast links (0 = whole packets)")
@click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
              help="with queue backend ray: attach the consumer to a running Ray cluster "
                   "(default: a local Ray instance that starts and stops with the run)")
@_QUEUE_BACKEND
@_PROGRESS_EVERY
@click.option("--layout", type=click.Choice(["production", "fast"]), default=None,
              help="override the profile's consumer.layout (fast: one socket and receiver "
                   "thread per transport.urls address, the emitter's ranks spread over them)")
def run(profile_path: str, out_dir: Path | None, duration: float | None, force: bool,
        kernel_shaping: bool, capture: bool, capture_snaplen: int, ray_address: str | None,
        queue_backend: str | None, progress_every: float = 5.0,
        layout: str | None = None) -> None:
    """Consumer on a free loopback port (or across a kernel-shaped testbed), the
    emitter against it, then the verdict."""
    if duration is not None and duration <= 0:
        raise UsageError(f"--duration {duration} is not > 0")
    if capture_snaplen and not capture:
        raise UsageError("--capture-snaplen needs --capture")
    if capture_snaplen and capture_snaplen < 96:
        raise UsageError(f"--capture-snaplen {capture_snaplen} is below 96 bytes: "
                         f"TCP headers would be cut")
    out = out_dir or "runs/ (a new run directory)"
    try:
        with orderly_signals():
            result = run_profile(profile_path, out_dir, duration_s=duration,
                                 kernel_shaping=kernel_shaping, capture=capture,
                                 capture_snaplen=capture_snaplen, echo=echo_to_pipe,
                                 consumer_args=[*_ray_args(ray_address, queue_backend),
                                                *(["--layout", layout] if layout else [])],
                                 force=force, watch=_watch(progress_every))
    except RuntimeError as e:
        click.echo(f"error: {e}", err=True)
        click.echo(f"the run's records (and report, if one could be made) are in {out}", err=True)
        sys.exit(1)
    except Interrupted as e:  # before the run directory was ready
        click.echo(f"{e}: stopped; what was recorded is in {out}", err=True)
        sys.exit(e.exit_code)
    with reader_may_leave():
        _print_verdict(result)
    if result.interrupted is not None:
        what = "records and report" if result.report else "records (too few for a report)"
        click.echo(f"interrupted by {signal.Signals(result.interrupted).name}: the run was "
                   f"cut short; its {what} are in {result.out_dir}", err=True)
        sys.exit(128 + result.interrupted)
    if result.verify_failed:
        click.echo("capture verification FAILED: see verify.json and report.md", err=True)
        sys.exit(1)


@click.command("investigate")
@click.option("--profile", "profile_path", required=True, help="profile file or bundled name")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="directory for both runs and the comparison")
@click.option("--duration", type=float, default=None, help="seconds per run")
@click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
              help="with queue backend ray: attach the consumer to a running Ray cluster "
                   "(default: a local Ray instance that starts and stops with the run)")
@_QUEUE_BACKEND
@_PROGRESS_EVERY
def investigate(profile_path: str, out_dir: Path | None, duration: float | None,
                ray_address: str | None, queue_backend: str | None,
                progress_every: float = 5.0) -> None:
    """The investigation's comparative plan: a random-mode run and a socket-mode
    run with identical batch size, model and buffers, then a side-by-side report."""
    profile = load_profile(find_profile(profile_path))
    root = out_dir or default_out_dir(profile, suffix="-investigate")
    dur = duration or profile.stop.duration_s or 30.0
    try:
        extra = _ray_args(ray_address, queue_backend)
        echo_to_pipe(f"investigation directory: {root}")
        with orderly_signals():
            rnd = run_profile(profile_path, root / "random", mode="random", duration_s=dur,
                              consumer_args=extra, echo=echo_to_pipe,
                              watch=_watch(progress_every, "random mode"))
            if rnd.interrupted is None:
                sock = run_profile(profile_path, root / "socket", duration_s=dur,
                                   consumer_args=extra, echo=echo_to_pipe,
                                   watch=_watch(progress_every, "socket mode"))
    except RuntimeError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except Interrupted as e:
        click.echo(f"{e}: stopped; what was recorded is in {root}", err=True)
        sys.exit(e.exit_code)
    stopped = rnd.interrupted if rnd.interrupted is not None else sock.interrupted
    if stopped is not None:
        click.echo(f"interrupted by {signal.Signals(stopped).name}: the investigation was cut "
                   f"short; what was recorded is in {root}", err=True)
        sys.exit(128 + stopped)
    from simstream.diagnose import compare_report

    cmp = compare_report(rnd.out_dir, sock.out_dir, root)
    with reader_may_leave():
        click.echo(f"random mode: {rnd.out_dir}  verdict {rnd.report.get('verdict')}")
        click.echo(f"socket mode: {sock.out_dir}  verdict {sock.report.get('verdict')}")
        if isinstance(cmp, dict):
            for key in ("answer", "summary"):
                if cmp.get(key):
                    click.echo(str(cmp[key]))
        click.echo(f"comparison: {root / 'compare.md'}  {root / 'compare.html'}")
