"""``simstream consume``: the measured consumer on the command line.

Settings come from the profile's ``consumer:`` section (every key has a default),
overridden by flags. Progress goes to stderr: a live rich panel on a terminal,
plain lines otherwise (one every ``log_every_batches`` batches); the final
summary goes to stdout. SIGINT or SIGTERM ends receiving; what was received is
still processed and recorded, summary.json written, and the exit status is 130
(SIGINT) or 143 (SIGTERM); a second SIGINT aborts.
"""

from __future__ import annotations

import datetime as _dt
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from simstream.errors import UsageError
from simstream.outdir import prepare_run_dir
from simstream.profile import _check_url, find_profile, load_profile

from .config import consumer_config
from .inference import busy_words

__all__ = ["consume"]


def _check_flag_url(flag: str, url: str | None) -> None:
    if url is None:
        return
    try:
        _check_url(url)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


def _fmt(v: Any, spec: str = ".1f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def summary_lines(s: dict[str, Any], out: Path) -> list[str]:
    """The final summary as a few lines of text."""
    tp = s.get("throughput") or {}
    q1 = s.get("q1") or {}
    occ = q1.get("mean_occupancy")
    return [
        f"run directory: {out}",
        f"received {s['received']}  processed {s['processed']}  quarantined {s['quarantined']}  "
        f"lost {s['lost']}  duplicated {s['duplicated']}  reordered {s['reordered']}",
        f"batches {s['batches']}  samples {s['samples']}  {_fmt(tp.get('batches_per_s'))} batches/s  "
        f"{_fmt(tp.get('samples_per_s'))} samples/s  {_fmt(tp.get('mb_per_s'))} MB/s",
        f"device {s.get('device')}  {busy_words(s, None)}  "
        f"Q1 mean occupancy {_fmt(None if occ is None else occ * 100, '.0f', '%')}  "
        f"backpressure events {s.get('backpressure_events')}  ended by {s.get('end_reason')}",
    ]


class _Progress:
    """Live panel on a terminal; plain lines come from the consumer's log otherwise."""

    def __init__(self, live: bool) -> None:
        self.live = None
        if live:
            from rich.console import Console
            from rich.live import Live

            self.console = Console(stderr=True)
            self.live = Live(console=self.console, refresh_per_second=4, transient=True)

    def __enter__(self) -> _Progress:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, snap: dict[str, Any]) -> None:
        if self.live is None or snap.get("final"):
            return
        from rich.table import Table

        t = Table.grid(padding=(0, 2))
        t.add_row(
            f"batches {snap['batches']}",
            f"samples/s {_fmt(snap.get('samples_per_s'))}",
            f"Q1 {snap['q1_depth']}/{snap['q1_maxsize']}",
            busy_words(snap, snap.get("device")),
            f"quarantined {snap['quarantined']}",
        )
        self.live.update(t)


def _new_default_dir() -> Path:
    """runs/consume-<timestamp>, with -2, -3... when one of that second exists."""
    base = Path("runs") / f"consume-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


@click.command("consume")
@click.option("--profile", "profile_path", default=None,
              help="profile file or bundled name (its consumer: section)")
@click.option("--bind", multiple=True,
              help="address to bind, tcp://HOST:PORT (default tcp://127.0.0.1:12321); repeat "
                   "for one receiver actor per address (queue backend ray)")
@click.option("--connect", default=None, help="address of a server-role emitter to connect to")
@click.option("--transport", type=click.Choice(["zmq", "nng", "tcp"]), default=None)
@click.option("--mode", type=click.Choice(["socket", "random"]), default=None)
@click.option("--layout", type=click.Choice(["production", "fast"]), default=None,
              help="receive layout (consumer.layout): production (default: one socket and "
                   "receiver thread, in-order feeder, as production) or fast (one socket "
                   "and receiver thread per --bind, parsers straight into Q1)")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N")
@click.option("--buffers", type=click.IntRange(1, 16), default=None, help="N-way buffering")
@click.option("--parse-in", "parse_in", type=click.Choice(["receiver", "actor"]), default=None)
@click.option("--parser-threads", type=click.IntRange(1, 64), default=None)
@click.option("--queue-backend", type=click.Choice(["local", "process", "ray"]), default=None)
@click.option("--ray-address", default=None,
              help="with --queue-backend ray: auto | HOST:PORT of a running Ray cluster "
                   "(default: a local Ray instance for the run)")
@click.option("--count", type=click.IntRange(min=1), default=None, help="stop after N messages")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="stop after S seconds")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="end of stream after S seconds of silence")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="run directory (default runs/consume-<timestamp>); must be new or empty")
@click.option("--force", is_flag=True,
              help="--out may hold an earlier run: its files are removed first")
@click.option("--in-run", "in_run", is_flag=True, hidden=True,
              help="--out was prepared by `simstream run` (it holds the run's profile)")
def consume(profile_path: str | None, bind: tuple[str, ...], connect: str | None,
            transport: str | None, mode: str | None, device: str | None, buffers: int | None,
            layout: str | None,
            parse_in: str | None, parser_threads: int | None, queue_backend: str | None,
            ray_address: str | None, count: int | None, duration: float | None, idle_timeout: float | None,
            out_dir: Path | None, force: bool = False, in_run: bool = False) -> None:
    """Receive -> parse -> Q1 -> N-way buffered inference, every stage measured."""
    if bind and connect is not None:
        raise UsageError("--bind and --connect are exclusive: give one")
    for b in bind:
        _check_flag_url("--bind", b)
    _check_flag_url("--connect", connect)
    profile = load_profile(find_profile(profile_path)) if profile_path else None
    cfg = consumer_config(profile, {
        "bind": (bind[0] if len(bind) == 1 else list(bind)) if bind else None, "connect": connect, "transport": transport, "mode": mode, "layout": layout, "device": device,
        "buffers": buffers, "parse_in": parse_in, "parser_threads": parser_threads,
        "queue.backend": queue_backend, "ray.address": ray_address, "count": count, "duration_s": duration,
        "idle_timeout_s": idle_timeout,
    })
    out = out_dir or _new_default_dir()
    if not in_run:
        prepare_run_dir(out, force=force)

    live = sys.stderr.isatty()
    logging.basicConfig(level=logging.WARNING if live else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    stop = threading.Event()
    ready = threading.Event()
    got: list[int] = []  # the signals that asked for a stop
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, frame: Any) -> None:
            # SIGINT or SIGTERM: an orderly stop (what is in hand is processed and
            # recorded); a second SIGINT aborts, a repeated SIGTERM changes nothing
            if stop.is_set() and signum == signal.SIGINT and signal.SIGINT in got:
                raise KeyboardInterrupt
            got.append(signum)
            if not stop.is_set():
                stop.set()
                click.echo(f"{signal.Signals(signum).name}: finishing what was received", err=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    from .consumer import run_consumer  # the codec (h5py): not for --help or a bad flag

    where = (f"{cfg.role} {cfg.transport} {', '.join(cfg.urls)}" if cfg.mode == "socket"
             else "random mode")
    click.echo(f"consumer: {where}, layout {cfg.layout}, parse in {cfg.parse_in}, Q1 {cfg.queue.backend} "
               f"({cfg.queue.maxsize} batches), {cfg.buffers} buffers, model {cfg.model.kind}, "
               f"out {out}", err=True)
    try:
        with _Progress(live) as progress:
            summary = run_consumer(cfg, out, ready=ready, stop=stop, on_progress=progress.update)
    except RuntimeError as e:  # a stage or an actor failed: what was recorded stays in out
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for line in summary_lines(summary, out):
        click.echo(line)
    if got:
        # the shell's convention: 128 + the signal's number (130 SIGINT, 143 SIGTERM)
        sys.exit(128 + got[0])
