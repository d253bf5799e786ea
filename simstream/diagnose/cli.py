"""``simstream diagnose DIR``: re-diagnose a run directory from its measurements."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from simstream.errors import UsageError, reader_may_leave

__all__ = ["diagnose"]


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.panel import Panel

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit 1; the caller's reader_may_leave() ends quietly instead
            raise BrokenPipeError

    con = PipeConsole()
    # a terminal gets lines fitted to its width; a pipe or a file gets each line whole
    con.soft_wrap = not con.is_terminal
    colour = {"network": "magenta", "parse": "yellow", "queue": "cyan", "consumer": "green"}.get(
        report["verdict"], "white")
    ev = report["evidence"]
    src = ("consumer-side data only (no emit log"
           + ("" if ev.get("sequence_numbers") else ", no sequence numbers") + ")"
           if ev.get("consumer_side_only") else "consumer records + emit log")
    cause = f", cause {report['cause']}" if report.get("cause") else ""
    con.print(Panel.fit(
        f"[bold {colour}]{report['verdict']}[/]{cause} (confidence {report['confidence']:.2f})\n"
        f"[dim]from {src}[/]",
        title="verdict"))
    con.print(report["summary"], highlight=False)
    con.print("[bold]key evidence[/]")
    for line in report["key_evidence"]:
        con.print(f"  • {line}", highlight=False)
    if report["recommendations"]:
        con.print("[bold]recommendations[/]")
        for line in report["recommendations"]:
            con.print(f"  • {line}", highlight=False)
    con.print("[bold]files[/]")
    for name in ("report.json", "report.md", "report.html", "trace.json"):
        if name in report.get("files", {}):
            con.print(f"  {report['files'][name]}", highlight=False, soft_wrap=True)
    n_plots = sum(1 for k in report.get("files", {}) if k.startswith("plots/"))
    if n_plots:
        con.print(f"  {Path(report['files']['report.json']).parent / 'plots'}/ ({n_plots} plots)",
                  highlight=False, soft_wrap=True)


def _selftest(quiet: bool) -> int:
    from simstream.diagnose.consistency import check
    from simstream.diagnose.report import diagnose_run
    from simstream.diagnose.simulate import SCENARIOS, write_run_dir

    bad = 0
    with tempfile.TemporaryDirectory(prefix="simstream-selftest-") as tmp:
        for name, sc in SCENARIOS.items():
            d = write_run_dir(sc, Path(tmp) / name)
            rep = diagnose_run(d, plots=False, trace=False)
            problems = check(rep)
            ok = rep["verdict"] == sc.expect and not problems
            bad += not ok
            cause = f" cause {rep['cause']}" if rep.get("cause") else ""
            click.echo(f"{'ok ' if ok else 'BAD'} {name:16s} built-in bottleneck {sc.expect:9s} "
                       f"verdict {rep['verdict']:9s} confidence {rep['confidence']:.2f}{cause}")
            for p in problems:
                click.echo(f"    inconsistent: {p}")
    if not quiet:
        click.echo("selftest " + ("passed" if not bad else f"failed: {bad} wrong or inconsistent report(s)"))
    return 1 if bad else 0


def _quiet_line(report: dict[str, Any]) -> str:
    cause = f", cause {report['cause']}" if report.get("cause") else ""
    return (f"verdict: {report['verdict']} (confidence {report['confidence']:.2f}){cause}"
            + (" [consumer-side data only]" if report["evidence"].get("consumer_side_only") else ""))


@click.command("diagnose")
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--quiet", is_flag=True, help="print only the verdict line (per directory)")
@click.option("--json", "as_json", is_flag=True,
              help="print report.json to stdout (a JSON list of them for several directories)")
@click.option("--no-plots", is_flag=True, help="skip the PNG plots (faster); the reports keep the rest")
@click.option("--selftest", is_flag=True,
              help="simulate one run per bottleneck and check the verdicts (no DIR needed)")
def diagnose(run_dirs: tuple[Path, ...], quiet: bool, as_json: bool, no_plots: bool, selftest: bool) -> None:
    """Name the bottleneck of each run directory DIR... (network, parse, queue or
    consumer) from its measurements, and write report.json, report.md,
    report.html, trace.json and plots/ into it. The profile is never read to
    decide. Exit status 2 when a DIR is not a run directory (checked for all
    before any is diagnosed)."""
    if selftest:
        sys.exit(_selftest(quiet))
    if not run_dirs:
        raise UsageError("diagnose needs a run directory (or --selftest)")
    from simstream.diagnose.load import NotARunDir, load_run
    from simstream.diagnose.report import diagnose_run

    if len(run_dirs) > 1:
        bad = []
        for d in run_dirs:
            try:
                load_run(d)
            except NotARunDir as e:
                bad.append(str(e))
        if bad:
            raise NotARunDir(f"{len(bad)} of {len(run_dirs)} directories are not run directories: "
                             + "; ".join(bad))
    reports = [diagnose_run(d, plots=not no_plots) for d in run_dirs]
    with reader_may_leave():
        _print_all(run_dirs, reports, quiet=quiet, as_json=as_json)


def _print_all(run_dirs: tuple[Path, ...], reports: list[dict[str, Any]], *, quiet: bool,
               as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
        return
    for d, report in zip(run_dirs, reports, strict=True):
        if quiet:
            click.echo(_quiet_line(report) if len(reports) == 1 else f"{d}: {_quiet_line(report)}")
        else:
            if len(reports) > 1:
                click.echo(f"== {d}")
            _print_report(report)
