"""``simstream run`` and ``simstream investigate``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from simstream.profile import find_profile, load_profile
from simstream.runner.core import RunResult, default_out_dir, run_profile


def _print_verdict(result: RunResult) -> None:
    s = result.summary
    click.echo(f"run directory: {result.out_dir}")
    if s:
        click.echo(
            f"consumer: received {s.get('received')} processed {s.get('processed')} "
            f"quarantined {s.get('quarantined')} lost {s.get('lost')} "
            f"duplicated {s.get('duplicated')} reordered {s.get('reordered')}"
        )
    if result.report:
        from simstream.diagnose.cli import _print_report

        _print_report(result.report)

@click.command("run")
@click.option("--profile", "profile_path", required=True, help="profile file or bundled name")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="run directory (default runs/<profile>-<timestamp>)")
@click.option("--duration", type=float, default=None, help="override stop.duration_s")
def run(profile_path: str, out_dir: Path | None, duration: float | None) -> None:
    """Consumer on a free loopback port, the emitter against it, then the verdict."""
    try:
        result = run_profile(profile_path, out_dir, duration_s=duration)
    except RuntimeError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    _print_verdict(result)


@click.command("investigate")
@click.option("--profile", "profile_path", required=True, help="profile file or bundled name")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="directory for both runs and the comparison")
@click.option("--duration", type=float, default=None, help="seconds per run")
def investigate(profile_path: str, out_dir: Path | None, duration: float | None) -> None:
    """The investigation's comparative plan: a random-mode run and a socket-mode
    run with identical batch size, model and buffers, then a side-by-side report."""
    profile = load_profile(find_profile(profile_path))
    root = out_dir or default_out_dir(profile, suffix="-investigate")
    dur = duration or profile.stop.duration_s or 30.0
    try:
        rnd = run_profile(profile_path, root / "random", mode="random", duration_s=dur)
        sock = run_profile(profile_path, root / "socket", duration_s=dur)
    except RuntimeError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    from simstream.diagnose import compare_report

    cmp = compare_report(rnd.out_dir, sock.out_dir, root)
    click.echo(f"random mode: {rnd.out_dir}  verdict {rnd.report.get('verdict')}")
    click.echo(f"socket mode: {sock.out_dir}  verdict {sock.report.get('verdict')}")
    if isinstance(cmp, dict):
        for key in ("answer", "summary"):
            if cmp.get(key):
                click.echo(str(cmp[key]))
    click.echo(f"comparison: {root / 'compare.md'}  {root / 'compare.html'}")
