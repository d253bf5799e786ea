"""``simstream emit``: the fake LCLStreamer on the command line.

Exit status: 0 done; 1 the peer could not be reached within
``transport.connect_timeout_s`` (after retrying with backoff); 2 bad input
(invalid profile, bad flag, address in use); 130 interrupted by SIGINT, 143 by
SIGTERM (an orderly stop either way: the log is still complete and flushed). With ``--processes P`` > 1 the ranks run in P
child emitters (``simstream.emitter.processes``) and the status is the first
failing child's, or 1 when their merged log misses a line.
"""

from __future__ import annotations

import functools
import heapq
import os
import signal
import sys
import threading
from typing import Any

import click

from simstream.emitter.processes import PARENT_ENV, run_processes
from simstream.errors import UsageError
from simstream.outdir import check_log_file
from simstream.profile import Profile, container_fault_warnings, find_profile, load_profile

__all__ = ["emit", "build_profile"]

#: a dry run prints at most this many lines (a long profile's schedule is long)
DRY_RUN_MAX_LINES = 1_000_000

#: how often a ``--processes`` child checks that its parent (PARENT_ENV) is alive
PARENT_POLL_S = 0.5


def build_profile(profile_arg: str | None, lclstreamer_config: str | None,
                  overrides: dict[str, Any]) -> Profile:
    """The profile the flags ask for. Raises ProfileError / UsageError (exit 2)."""
    if lclstreamer_config is not None:
        from simstream.lclstreamer import profile_from_lclstreamer_config, warnings_for

        base = profile_from_lclstreamer_config(lclstreamer_config)
        for line in warnings_for(lclstreamer_config):
            click.echo(f"warning: {line}", err=True)
        if profile_arg is not None:
            raise UsageError("give either --profile or --lclstreamer-config, not both")
    elif profile_arg is None:
        raise UsageError("--profile is required (a path or a bundled name; "
                         "see 'simstream profiles list'), or --lclstreamer-config")
    else:
        base = load_profile(find_profile(profile_arg))
    return base.with_overrides(overrides)


def _endless(p: Profile) -> bool:
    from simstream.schedule import messages_per_rank

    n, _ = messages_per_rank(p)
    tl = p.timeline
    timeline_ends = not tl.repeat and all(ph.duration_s is not None for ph in tl.phases)
    return n is None and p.stop.duration_s is None and not timeline_ends


def _dry_run(p: Profile, log_path: str | None, *, append: bool = False) -> None:
    from simstream.schedule import format_planned, iter_schedule

    if _endless(p):
        raise UsageError("the profile never stops (no stop.messages, stop.duration_s or "
                         "source.total_events): give --count or --duration for a dry run")
    from simstream.emitter.engine import rank_urls_of

    first = p.transport.rank_offset
    sent: dict[int, int] = {}
    merged = heapq.merge(*(iter_schedule(p, r) for r in range(first, first + p.transport.ranks)),
                         key=lambda x: (x.t_sched, x.rank))
    as_json = log_path is not None
    out = (open(log_path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
           if log_path else sys.stdout)
    n = 0
    try:
        for planned in merged:
            if n >= DRY_RUN_MAX_LINES:
                click.echo(f"(dry run stopped after {DRY_RUN_MAX_LINES} lines)", err=True)
                break
            urls = rank_urls_of(p, planned.rank)
            k = sent.get(planned.rank, 0)
            sent[planned.rank] = k + 1
            url = urls[k % len(urls)]
            out.write(format_planned(planned, as_json=as_json, url=url) + "\n")
            n += 1
    finally:
        if as_json:
            out.close()
    if as_json:
        click.echo(f"dry run: {n} planned attempts written to {log_path}")
    else:
        click.echo(f"dry run: {n} planned attempts; no socket opened")


def _on_transport_event(name: str, fields: dict[str, Any] | None = None) -> None:
    f = fields or {}
    if name == "connect_retry":
        click.echo(f"emit: cannot reach {f.get('url')}: {f.get('error')}; retry "
                   f"{f.get('attempt')} in {float(f.get('retry_in_s') or 0):.2f} s", err=True)
    elif name == "connected":
        click.echo(f"emit: connected to {f.get('url')} ({f.get('peer')})", err=True)
    elif name == "listening":
        click.echo(f"emit: listening on {f.get('url')} (port {f.get('port')})", err=True)
    elif name == "disconnected" and f.get("reason") != "closed by the sender":
        click.echo(f"emit: {f.get('url')} disconnected: {f.get('reason')}", err=True)
    elif name == "handshake_failed":
        click.echo(f"emit: handshake with {f.get('peer')} failed: {f.get('error')}", err=True)


async def _watch_parent(pid: int, run_scope: Any) -> None:
    """Stop cleanly (as on SIGINT) once the parent emitter process ``pid`` is gone:
    a child of ``--processes`` must not outlive a parent killed without a chance to
    forward its signal (it runs in its own process group)."""
    import trio

    while True:  # polled: no event tells a process its parent died
        await trio.sleep(PARENT_POLL_S)
        if os.getppid() != pid:
            break
    click.echo("emit: the parent emitter process is gone; stopping", err=True)
    run_scope.cancel()


def _find(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``types`` in exc or (nested) exception groups."""
    if isinstance(exc, types):
        return exc
    for sub in getattr(exc, "exceptions", ()) or ():
        hit = _find(sub, types)
        if hit is not None:
            return hit
    return None


async def _emit_main(p: Profile, log_path: str | None, *, tty: bool | None,
                     control: tuple[str, int] | None = None,
                     append_log: bool = False, epoch: int | None = None) -> tuple[Any, int]:
    """Run the engine with the log, the progress display, signal handling and, with
    ``control`` (host, port), the live control API."""
    import trio

    from simstream.emitter.engine import RankStats, run_emitter
    from simstream.emitter.log import EmitLog
    from simstream.emitter.progress import Progress

    log = EmitLog(log_path, append=append_log) if log_path else None
    stats: list[RankStats] = []  # filled in place by the engine
    progress = Progress(stats, sndhwm=p.transport.sndhwm, tty=tty)

    def on_record(rec: dict[str, Any]) -> None:
        if log is not None:
            log.write(rec)
        progress.on_record(rec)

    result: Any = None
    run_scope = trio.CancelScope()
    caught: list[int] = []
    live = server = None
    if control is not None:
        from simstream.emitter.control import ControlServer, LiveConditions

        first = p.transport.rank_offset
        live = LiveConditions(list(range(first, first + p.transport.ranks)))
        server = ControlServer(live, *control)
        # stderr, flushed: a test harness reads this line to find a port chosen by the OS
        click.echo(f"emit: control API on {server.start()}", err=True)
        sys.stderr.flush()
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    async for sig in signals:
                        # a clean stop: the engine records what was queued or in flight
                        caught.append(int(sig))
                        run_scope.cancel()
                        return

                nursery.start_soon(watch_signals)
                nursery.start_soon(progress.run)
                parent = os.environ.get(PARENT_ENV)
                if parent and parent.isdigit():
                    nursery.start_soon(_watch_parent, int(parent), run_scope)
                with run_scope:
                    result = await run_emitter(p, on_record=on_record,
                                               on_event=_on_transport_event, stats_out=stats,
                                               live=live, epoch=epoch)
                nursery.cancel_scope.cancel()
    finally:
        if server is not None:
            server.close()
        if log is not None:
            log.close()  # flushed even on Ctrl-C or an error
    # the exit status for the stop: 128 + the signal (130 SIGINT, 143 SIGTERM); a
    # parent gone counts as SIGTERM's
    interrupted = (128 + (caught[0] if caught else signal.SIGTERM)
                   if run_scope.cancelled_caught else 0)
    if result is None:
        from simstream.emitter.engine import EmitResult

        t = progress.now()
        result = EmitResult(stats, progress.t_start, t, interrupted=True)
    return result, interrupted


@click.command("emit")
@click.option("--profile", "profile_arg", metavar="FILE|NAME",
              help="profile YAML, or a bundled profile name (simstream profiles list)")
@click.option("--url", help="tcp://HOST:PORT (overrides transport.url)")
@click.option("--role", type=click.Choice(["client", "server"]),
              help="client = connect (LCLStreamer's usual role), server = bind")
@click.option("--transport", "kind", type=click.Choice(["zmq", "nng", "tcp"]))
@click.option("--ranks", type=click.IntRange(1, 1024), help="independent connections")
@click.option("--processes", type=click.IntRange(1),
              help="emitter processes the ranks are split over (transport.processes)")
@click.option("--rank-offset", type=click.IntRange(0),
              help="MPI rank id of the first rank: ranks are K..K+ranks-1 "
                   "(transport.rank_offset; default 0)")
@click.option("--seed", type=click.IntRange(0), help="overrides the profile's seed")
@click.option("--count", type=click.IntRange(1), help="messages per rank (stop.messages)")
@click.option("--duration", type=click.FloatRange(0, min_open=True),
              help="seconds (stop.duration_s)")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="write the emit log (JSON lines, docs/formats.md) here")
@click.option("--epoch", type=click.IntRange(0, 2**53 - 1),
              help="this run's start id, in every message (/simstream/epoch) and log record "
                   "(default: the start time in microseconds, new for every run; pin it to "
                   "make two runs' payloads byte-identical)")
@click.option("--append-log", is_flag=True,
              help="append to --log instead of truncating it: an emitter restarted with "
                   "the same command (a container started again) keeps its earlier "
                   "life's records; each life's records carry its own epoch")
@click.option("--dry-run", is_flag=True, help="print the schedule; open no socket")
@click.option("--lclstreamer-config", type=click.Path(dir_okay=False),
              help="a real LCLStreamer YAML config as the base profile")
@click.option("--loopback", is_flag=True,
              help="start a receiver (simstream's own, no pyzmq needed) on a free "
                   "127.0.0.1 port and emit to it")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="live table (default: when stderr is a terminal)")
@click.option("--close", "close", type=click.Choice(["graceful", "abrupt"]),
              help="end of stream (transport.close): graceful = queued messages go first; "
                   "abrupt = close at once, as LCLStreamer (LINGER 0), losing the queue")
@click.option("--url-spread", "url_spread", type=click.Choice(["rank", "message"]),
              help="several urls (transport.url_spread): one per rank, or every rank "
                   "sends its messages over all of them in turn (LCLStreamer)")
@click.option("--dead-link-ms", "dead_link_ms", type=click.FloatRange(0, min_open=True),
              help="drop and re-establish a connection whose peer has answered nothing "
                   "(retransmissions, probes) this long (transport.dead_link_ms): a cut "
                   "link becomes a real disconnect and reconnect; backpressure never does")
@click.option("--sndbuf-bytes", "sndbuf_bytes", type=click.IntRange(1),
              help="kernel send buffer per connection (transport.sndbuf_bytes, SO_SNDBUF; "
                   "default: the kernel's autotuning, as LCLStreamer's libzmq): a large one "
                   "for an emitter that must outrun the consumer")
@click.option("--control", "control_addr", metavar="HOST:PORT",
              help="serve the live control API (HTTP JSON: GET /status, POST /network, "
                   "/faults, /rate, /pause, /resume; docs/testing.md) on this loopback "
                   "address; port 0 picks a free one, printed on stderr")
@click.option("--control-any-host", is_flag=True,
              help="let --control listen on a non-loopback address (the API has no "
                   "authentication: anyone who reaches it steers the emitter)")
def emit(profile_arg: str | None, url: str | None, role: str | None, kind: str | None,
         ranks: int | None, processes: int | None, rank_offset: int | None, seed: int | None,
         count: int | None, duration: float | None, log_path: str | None, epoch: int | None,
         append_log: bool, dry_run: bool, lclstreamer_config: str | None, loopback: bool, show_progress: bool | None,
         close: str | None, url_spread: str | None, dead_link_ms: float | None,
         sndbuf_bytes: int | None,
         control_addr: str | None, control_any_host: bool) -> None:
    """Send batches as LCLStreamer would, shaped by a profile (rates, phases, faults)."""
    control = None
    if control_addr is not None:
        from simstream.emitter.control import parse_control_address

        control = parse_control_address(control_addr, any_host=control_any_host)
        if dry_run:
            raise UsageError("--control steers a running emitter; a --dry-run sends nothing")
    elif control_any_host:
        raise UsageError("--control-any-host goes with --control HOST:PORT")
    overrides = {"transport.role": role, "transport.kind": kind, "transport.ranks": ranks,
                 "transport.processes": processes, "transport.rank_offset": rank_offset,
                 "seed": seed, "stop.messages": count, "stop.duration_s": duration,
                 "transport.close": close, "transport.url_spread": url_spread,
                 "transport.dead_link_ms": dead_link_ms, "transport.sndbuf_bytes": sndbuf_bytes}
    p = build_profile(profile_arg, lclstreamer_config, overrides)
    if url is not None:
        p = _with_url(p, url)
    for line in preflight_warnings(p):
        click.echo(f"warning: {line}", err=True)
    for line in container_fault_warnings(p, "simstream emit"):
        click.echo(f"warning: {line}", err=True)
    tp = p.transport
    if tp.role == "server" and tp.url_spread == "rank" and tp.ranks > len(tp.all_urls):
        raise UsageError(f"role server with {tp.ranks} ranks needs {tp.ranks} addresses in "
                         f"transport.urls (each rank binds its own); got {len(tp.all_urls)}")
    if log_path is not None:
        check_log_file(log_path)
    if append_log and (log_path is None or p.transport.processes > 1):
        raise UsageError("--append-log goes with --log and one emitter process")
    if dry_run:
        try:
            _dry_run(p, log_path, append=append_log)
            sys.stdout.flush()
        except BrokenPipeError:
            # the reader left (`emit --dry-run | head`): that is the reader's choice,
            # not an error; point stdout at devnull so the interpreter's exit flush is quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if _endless(p) and not sys.stderr.isatty():
        click.echo("emit: the profile never stops; Ctrl-C (SIGINT) ends it", err=True)

    if control is not None and p.transport.processes > 1:
        raise UsageError("--control steers one emitter process; it does not go with "
                         f"{p.transport.processes} processes (--processes 1)")
    receiver = None
    if loopback:
        if url is not None or role == "server":
            raise UsageError("--loopback chooses its own address and connects to it: "
                             "drop --url / --role server")
        receiver = _start_loopback(p)
        p = _with_url(p.with_overrides({"transport.role": "client"}), receiver["url"])
    tty = False if loopback else show_progress
    if p.transport.processes > 1:
        code = run_processes(p, log_path, echo=lambda line, err: click.echo(line, err=err),
                             epoch=epoch)
    else:
        code = _run(p, log_path, tty=tty, control=control, append_log=append_log, epoch=epoch)
    if receiver is not None:
        receiver["stop"].set()
        receiver["thread"].join(timeout=30.0)
        summary = receiver.get("summary")
        if summary is not None:
            for line in summary.lines():
                click.echo(line)
    if code:
        sys.exit(code)


def preflight_warnings(p: Profile) -> list[str]:
    """What the profile's ``target_consumer`` is known not to take (docs/lclstreamer.md)."""
    if p.target_consumer != "peaknet-pipeline-ray":
        return []
    from simstream.schedule import messages_per_rank

    who = "target_consumer peaknet-pipeline-ray (HEAD fb315e2)"
    out = []
    src = p.source
    if src.format != "npz":
        out.append(f"{who} parses only npz; source.format {src.format} messages will fail "
                   f"to parse there")
    n, last = messages_per_rank(p)
    if n is not None and last < src.batch_size:
        out.append(f"{who} raises on a batch smaller than its batch size: the last message "
                   f"holds {last} of {src.batch_size} events "
                   f"(source.total_events {src.total_events})")
    if src.format == "npz" and len(src.shape) != 3:
        out.append(f"{who} expects (B, C, H, W) detector data; source.shape {src.shape} "
                   f"makes {len(src.shape) + 1} dimensions")
    if p.transport.role == "server":
        out.append(f"{who} binds (0.0.0.0, all interfaces): role server cannot meet it; "
                   f"use role client")
    return out


def _with_url(p: Profile, url: str) -> Profile:
    """The profile sending to ``url`` only: it replaces transport.url and any urls list.
    Raises ProfileError naming transport.url if the address is malformed."""
    from simstream.profile import parse_profile

    data = p.model_dump(mode="python")
    data["transport"]["url"] = url
    data["transport"]["urls"] = None
    return parse_profile(data, source="(with command-line overrides)")


def _start_loopback(p: Profile) -> dict[str, Any]:
    from simstream.emitter.sink import listen

    box: dict[str, Any] = {"ready": threading.Event(), "stop": threading.Event()}

    def target() -> None:
        try:
            box["summary"] = listen(
                "tcp://127.0.0.1:0", kind=p.transport.kind, idle_timeout_s=1.0,
                ready=box["ready"],
                stop=box["stop"], echo=lambda s: click.echo(s),
                on_bound=lambda u: box.__setitem__("url", u))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            box["error"] = e
            box["ready"].set()

    th = threading.Thread(target=target, name="loopback-receiver", daemon=True)
    box["thread"] = th
    th.start()
    if not box["ready"].wait(10.0):
        raise UsageError("the loopback receiver did not start within 10 s")
    if "error" in box:
        raise box["error"]
    click.echo(f"loopback receiver on {box['url']}", err=True)
    return box


def _run(p: Profile, log_path: str | None, *, tty: bool | None,
         control: tuple[str, int] | None = None, append_log: bool = False,
         epoch: int | None = None) -> int:
    import trio

    from simstream.emitter.progress import summary_lines
    from simstream.transport import AddressInUse, ConnectTimeout

    # a worker thread building a big message holds the GIL for up to the switch
    # interval (5 ms by default) before the event loop gets it back: shorten it so
    # planned send times are kept to well under a millisecond
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, 0.0005))
    try:
        result, interrupted = trio.run(functools.partial(_emit_main, p, log_path, tty=tty,
                                                         control=control,
                                                         append_log=append_log,
                                                         epoch=epoch))
    except BaseException as e:  # noqa: BLE001 - unwrapped below; the rest re-raised
        hit = _find(e, (AddressInUse, UsageError))
        if hit is not None:
            raise UsageError(str(hit)) from None
        hit = _find(e, (ConnectTimeout,))
        if hit is not None:
            click.echo(f"error: {hit}", err=True)
            return 1
        if _find(e, (KeyboardInterrupt,)) is not None:
            click.echo("emit: interrupted", err=True)
            return 130
        raise
    finally:
        sys.setswitchinterval(switch)
    for line in summary_lines(result):
        click.echo(line, err=False)
    if log_path:
        click.echo(f"emit log: {log_path}")
    return int(interrupted)
