"""One experiment end to end: consumer on a free loopback port, the emitter
against it, a clean shutdown once everything sent has been received, then the
diagnosis.

The consumer and the emitter run as separate programs (``simstream consume``
and ``simstream emit``), as they would on two nodes, and each writes its own
records into the run directory. The runner reads the profile to set them up;
the diagnosis afterwards does not (it reads only the measurements).

With kernel shaping the two programs run in the producer and consumer network
namespaces of a testbed and the kernel shapes the link between them
(``runner.kernel``); with a capture, the stream's packets are recorded and
checked against the profile before the diagnosis.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simstream import clock
from simstream.errors import UsageError
from simstream.outdir import prepare_run_dir
from simstream.profile import Profile, dump_profile, find_profile, load_profile, split_url
from simstream.runner import kernel
from simstream.runner.procs import (
    Child,
    Interrupted,
    LineCount,
    children,
    free_ports,
    is_listening,
    settled,
    simstream_argv,
    wait_until,
)

# After the emitter has finished, the consumer is stopped once it has received
# every message the emit log calls delivered; where some can never arrive (a
# connection broke after the kernel had taken them), once nothing has arrived
# for this long.
GIVE_UP_QUIET_S = 10.0
# Upper bound on draining after the emitter exits.
DRAIN_TIMEOUT_S = 120.0


@dataclass
class RunResult:
    out_dir: Path
    mode: str
    consumer_rc: int | None = None
    emitter_rc: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    # shaping.json: which shaping (user space or kernel), what was and was not applied
    shaping: dict[str, Any] = field(default_factory=dict)
    # verify.json when the run was captured (--capture), else None
    verify: dict[str, Any] | None = None
    port: int = 0  # the stream's TCP port
    # SIGINT or SIGTERM stopped the run (its number); the records and report are
    # still written
    interrupted: int | None = None

    @property
    def verify_failed(self) -> bool:
        return self.verify is not None and not self.verify.get("passed", False)


def default_out_dir(profile: Profile, root: Path = Path("runs"), suffix: str = "") -> Path:
    """A new run directory's path: ``root/<profile>-<timestamp><suffix>``, with ``-2``,
    ``-3``... when one of that second already exists (a run directory holds one run)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{profile.name}-{stamp}{suffix}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def run_duration_s(profile: Profile) -> float:
    """An upper bound on how long the emitter runs, for its time-out."""
    if profile.stop.duration_s is not None:
        return profile.stop.duration_s
    # message-bounded runs: bounded by the timeline's own length or a generous default
    return 600.0


def _consumer_argv(profile_path: Path, out: Path, urls: list[str], bind: bool, mode: str,
                   extra: list[str]) -> list[str]:
    argv = simstream_argv(
        "consume", "--profile", str(profile_path), "--out", str(out), "--in-run", "--mode", mode,
    )
    if mode == "socket":
        for url in urls:
            argv += ["--bind" if bind else "--connect", url]
        # the runner ends the consumer itself, once the emitter is done
        argv += ["--idle-timeout", "3600"]
    return argv + extra


def run_profile(
    profile_path: str | Path,
    out_dir: Path | None = None,
    *,
    mode: str = "socket",
    duration_s: float | None = None,
    consumer_args: list[str] | None = None,
    emitter_args: list[str] | None = None,
    diagnose: bool = True,
    kernel_shaping: bool = False,
    capture: bool = False,
    capture_snaplen: int = 0,
    echo: Callable[[str], None] | None = None,
    force: bool = False,
    watch: Callable[[Path, Profile, str, float | None], AbstractContextManager[Any]] | None = None,
) -> RunResult:
    """Run one experiment. ``mode="random"`` runs the consumer alone on batches it
    generates (no emitter) for the profile's duration.

    ``kernel_shaping``: consumer and emitter in a testbed's namespaces, the link
    shaped by the kernel (the emitter shapes nothing itself); DIR/shaping.json
    says what was and was not applied. ``capture``: DIR/capture.pcap of the
    stream's port (and, through the user-space link, DIR/capture-producer.pcap of
    its other side, headers only), checked afterwards into DIR/verify.json (``capture_snaplen``
    > 0 keeps only each packet's first bytes: rates are checked, message
    framing is not, and the file stays small). ``echo`` receives
    progress lines (the run directory first, then testbed, phase changes).
    ``watch(out, profile, mode, duration_s)``: a context manager held while the
    consumer and the emitter run (``simstream run``'s progress display).
    ``out_dir`` must be new or empty (``force``: an earlier run's files there are
    removed first).

    Raises UsageError (missing privileges, a flag that does not fit the mode),
    ProfileError, and RuntimeError when a child fails to start or exits with an
    error (TestbedError when a tc or ip command fails).
    """
    say = echo or _quiet
    path = find_profile(profile_path)
    profile = load_profile(path)
    # the consumer's section too is checked now, before anything starts: a typo
    # there is bad input (exit 2), not a consumer that dies at start-up
    from simstream.pipeline.config import consumer_config

    consumer_config(profile)
    _receiver_actors(profile, consumer_args)  # the same with the run's flags over it
    if mode == "random" and (kernel_shaping or capture):
        raise UsageError("--kernel-shaping and --capture need the emitter (socket mode)")
    offer = kernel.check_kernel_shaping() if kernel_shaping else None
    if capture and not kernel.can_capture():
        raise UsageError("--capture needs root or CAP_NET_RAW to open a packet socket; "
                         "run as root, or leave out --capture")
    out = prepare_run_dir(out_dir or default_out_dir(profile), force=force)
    (out / "profile.yaml").write_text(dump_profile(profile))
    say(f"run directory: {out}")
    result = RunResult(out_dir=out, mode=mode)

    failure: RuntimeError | None = None
    try:
        with (watch(out, profile, mode, duration_s) if watch is not None
              else contextlib.nullcontext()) as watching:
            _run_children(path, profile, out, result, mode=mode, duration_s=duration_s,
                          consumer_args=consumer_args, emitter_args=emitter_args, offer=offer,
                          capture=capture, capture_snaplen=capture_snaplen, say=say,
                          emitter_done=getattr(watching, "emitter_done", None))
    except Interrupted as e:
        result.interrupted = e.signum
        say(f"{signal.Signals(e.signum).name}: the run was stopped; its children finished "
            f"and wrote their records")
    except RuntimeError as e:
        failure = e  # a child failed: what it recorded is still diagnosed below

    summary_path = out / "summary.json"
    if summary_path.exists():
        result.summary = json.loads(summary_path.read_text())
        if mode == "socket":
            _add_tail_loss(out, result.summary)
    if capture and failure is None and result.interrupted is None:
        # before the diagnosis, so the report carries the verification table
        result.verify, _ = kernel.verify_run(out, profile, result.port)
    if diagnose:
        from simstream.diagnose import NotARunDir, diagnose_run

        try:
            result.report = diagnose_run(out)
        except NotARunDir as e:
            if failure is None and result.interrupted is None:
                raise
            say(f"no report: {e}")
    if failure is not None:
        raise failure
    return result


def _run_children(path: Path, profile: Profile, out: Path, result: RunResult, *, mode: str,
                  duration_s: float | None, consumer_args: list[str] | None,
                  emitter_args: list[str] | None, offer: Any, capture: bool,
                  capture_snaplen: int, say: Callable[[str], None],
                  emitter_done: Callable[[], None] | None = None) -> None:
    if mode == "random":
        dur = duration_s or run_duration_s(profile)
        with children() as procs:
            consumer = Child(
                "consumer",
                _consumer_argv(path, out, [], True, "random",
                               ["--duration", str(dur), *(consumer_args or [])]),
                out / "consumer.log",
            )
            procs.append(consumer)
            result.consumer_rc = consumer.wait(dur + DRAIN_TIMEOUT_S)
            if result.consumer_rc is None:
                result.consumer_rc = consumer.interrupt(as_planned=True)
            _check_consumer(result, consumer)
    else:
        _socket_run(path, profile, out, result, duration_s=duration_s,
                    consumer_args=consumer_args or [], emitter_args=emitter_args or [],
                    kernel_offer=offer, capture=capture, snaplen=capture_snaplen, say=say,
                    emitter_done=emitter_done)


def _quiet(_: str) -> None:
    pass


def _check_consumer(result: RunResult, consumer: Child) -> None:
    if result.consumer_rc not in (0, None):
        raise RuntimeError(
            f"the consumer exited with status {result.consumer_rc}:\n{consumer.tail()}"
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))


def _socket_run(path: Path, profile: Profile, out: Path, result: RunResult, *,
                duration_s: float | None, consumer_args: list[str], emitter_args: list[str],
                kernel_offer: Any, capture: bool, snaplen: int,
                say: Callable[[str], None], emitter_done: Callable[[], None] | None = None) -> None:
    """Consumer, optional capture, emitter; on loopback or across a kernel-shaped testbed.

    Stop order on every exit: the children (emitter, capture, consumer) first,
    then the testbed, so no process keeps a deleted namespace alive.
    """
    kind = profile.transport.kind
    consumer_binds = profile.transport.role == "client"
    limit = (duration_s or run_duration_s(profile)) + 120
    # a consumer of receiver actors (or of layout fast) binds every address of the
    # profile (one receiver each) and the emitter spreads its ranks over them; any
    # other consumer binds one
    fan_in = (consumer_binds and len(profile.transport.all_urls) > 1
              and _receiver_actors(profile, consumer_args))
    with contextlib.ExitStack() as stack:
        tb: Any = None
        if kernel_offer is not None:
            name = kernel.testbed_name(profile.name, os.getpid())
            tb = stack.enter_context(kernel.kernel_testbed(name, profile, kernel_offer))
            _say_testbed(tb, say)
            # the testbed's own address space: the profile's ports are free there
            ports = [split_url(u)[1] for u in profile.transport.all_urls]
            host = tb.consumer_addr if consumer_binds else tb.producer_addr
            emit_profile = out / kernel.EMITTER_PROFILE_FILE
            emit_profile.write_text(dump_profile(kernel.emitter_profile(profile)))
            result.shaping = kernel.shaping_record(tb, name, None, emit_profile)
        else:
            ports = free_ports(len(profile.transport.all_urls))
            host = "127.0.0.1"
            emit_profile = path
            applied = kernel.user_space_shaping(profile)
            result.shaping = {
                "mode": "user space",
                "applied": applied or ["no network conditions in the profile: nothing to shape"],
                "not_applied": [],
            }
        _write_json(out / kernel.SHAPING_FILE, result.shaping)
        if not fan_in:
            ports = ports[:1]
        port = result.port = ports[0]
        url = f"tcp://{host}:{port}"
        urls = [f"tcp://{host}:{p}" for p in ports]
        if fan_in:
            emit_profile = _with_urls(emit_profile, urls, out)
        procs = stack.enter_context(children())

        def in_side(side: str, argv: list[str]) -> list[str]:
            return tb.argv_in(side, argv) if tb is not None else argv

        consumer = Child(
            "consumer",
            in_side("consumer", _consumer_argv(path, out, urls, consumer_binds, "socket",
                                               ["--transport", kind, *consumer_args])),
            out / "consumer.log",
        )
        procs.append(consumer)
        if consumer_binds:
            for p, u in zip(ports, urls, strict=True):
                if tb is not None:
                    wait_until(lambda p=p: kernel.listening_in(tb.consumer_ns, p), 60,
                               f"the consumer to listen on {u} in {tb.consumer_ns}", poll_s=0.2,
                               alive=consumer)
                else:
                    # a Ray consumer starts its actors first: allow it the time
                    wait_until(lambda p=p: is_listening(p), 180, f"the consumer to listen on {u}",
                               alive=consumer)
        cap = None
        caps: list[Any] = []
        if capture:
            iface = tb.consumer_iface if tb is not None else "lo"
            cap = kernel.start_capture(procs, out, iface, port, limit + DRAIN_TIMEOUT_S,
                                       netns=tb.consumer_ns if tb is not None else None,
                                       snaplen=snaplen)
            if tb is not None and tb.emulator == "user-link":
                # the other side of the user-space link: verify follows each data
                # packet across it (headers are enough: sequence, length, TSval)
                caps.append(kernel.start_capture(
                    procs, out, tb.producer_iface, port, limit + DRAIN_TIMEOUT_S,
                    netns=tb.producer_ns, snaplen=kernel.SENDER_SNAPLEN,
                    name=kernel.SENDER_CAPTURE_FILE))
            say(f"capturing port {port} on {iface}"
                + (f" ({tb.consumer_ns})" if tb is not None else "")
                + f" into {out / kernel.CAPTURE_FILE}")
        emit_argv = simstream_argv(
            "emit", "--profile", str(emit_profile), *([] if fan_in else ["--url", url]),
            "--log", str(out / "emit.jsonl"), *emitter_args,
        )
        if duration_s is not None:
            emit_argv += ["--duration", str(duration_s)]
        t_started = clock.now()
        t_mono = time.monotonic()
        emitter = Child("emitter", in_side("producer", emit_argv), out / "emitter.log")
        procs.append(emitter)
        if tb is not None:
            timeline = None
            try:
                timeline = kernel.follow_timeline(
                    tb, profile, out / "emit.jsonl", emitter, t_started,
                    duration_s or run_duration_s(profile), say)
            finally:
                # written even when a change failed or the run was stopped midway
                result.shaping = kernel.shaping_record(tb, tb.name, timeline, emit_profile)
                _write_json(out / kernel.SHAPING_FILE, result.shaping)
        # the emitter's end, or the consumer's death (then the emitter is stopped: it
        # would send into nothing until its own time-outs)
        while (rc := emitter.wait(0.2)) is None:
            if consumer.returncode is not None:
                say(f"the consumer exited ({consumer.returncode}) before the emitter was "
                    f"done: stopping the emitter")
                result.emitter_rc = emitter.interrupt(grace_s=10)
                break
            if time.monotonic() - t_mono > limit:
                result.emitter_rc = emitter.interrupt()
                break
        else:
            result.emitter_rc = rc
        if emitter_done is not None:
            emitter_done()  # the progress display: now draining
        if consumer.returncode is None:
            drained = _drained(out)
            try:
                wait_until(lambda: next(drained), DRAIN_TIMEOUT_S,
                           "the consumer to receive everything", poll_s=0.1, alive=consumer)
            finally:
                result.consumer_rc = consumer.interrupt(as_planned=True)
        else:
            result.consumer_rc = consumer.returncode
        if cap is not None:
            cap.interrupt(grace_s=30)
        for c in caps:
            c.interrupt(grace_s=30)
        _check_consumer(result, consumer)
        if result.emitter_rc not in (0, None):
            raise RuntimeError(
                f"the emitter exited with status {result.emitter_rc}:\n{emitter.tail()}"
            )


#: the consumer flags a run passes on that decide how many addresses it binds
_FAN_IN_FLAGS = {"--layout": "layout", "--queue-backend": "queue.backend"}


def _receiver_actors(profile: Profile, consumer_args: list[str] | None = None) -> bool:
    """Whether the consumer takes one receiver per address: Ray receiver actors, or
    the fast layout's receiver threads; ``consumer_args`` (the run's consumer
    flags) override the profile as they will in the consumer. Raises ProfileError
    for a combination the consumer would refuse."""
    from simstream.pipeline.config import consumer_config

    args = consumer_args or []
    overrides = {_FAN_IN_FLAGS[a]: v for a, v in zip(args, args[1:], strict=False)
                 if a in _FAN_IN_FLAGS}
    cfg = consumer_config(profile, overrides)
    return (cfg.queue.backend == "ray" and cfg.ray.actors) or cfg.layout == "fast"


def _with_urls(emit_profile: Path, urls: list[str], out: Path) -> Path:
    """The emitter's profile with its ranks spread over ``urls`` (written into ``out``)."""
    p = load_profile(emit_profile)
    data = p.model_dump(mode="python")
    data["transport"]["url"] = urls[0]
    data["transport"]["urls"] = urls
    dest = out / kernel.EMITTER_PROFILE_FILE
    dest.write_text(dump_profile(Profile.model_validate(data)))
    return dest


def _add_tail_loss(out: Path, summary: dict[str, Any]) -> None:
    """Write ``lost_at_tail`` into summary.json: the emit log's messages each rank
    never delivered after its last arrival (docs/formats.md). Left out where the emit
    log or messages.csv is missing or carries no sequence numbers."""
    from simstream.records.read import read_emit_columns, read_messages
    from simstream.records.tail import tail_loss

    emit, messages = out / "emit.jsonl", out / "messages.csv"
    if not (emit.is_file() and messages.is_file()):
        return
    try:
        em, msg = read_emit_columns(emit), read_messages(messages)
    except (OSError, ValueError):
        return  # a torn file: the diagnosis says what it could read
    tail = tail_loss(em["rank"], em["seq"], em["at_close"], msg["rank"], msg["seq"],
                     emit_epoch=em.get("epoch"), recv_epoch=msg.get("epoch"))
    if tail is None:
        return
    summary["lost_at_tail"] = tail
    path = out / "summary.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(path)


def _delivered(emit_log: Path) -> int:
    """Message attempts the emit log calls delivered (each must reach the consumer)."""
    n = 0
    try:
        with open(emit_log, encoding="utf-8") as fh:
            for line in fh:
                try:
                    n += json.loads(line).get("outcome") == "delivered"
                except ValueError:
                    continue  # a killed emitter's partial last line
    except OSError:
        pass
    return n


def _drained(out: Path) -> Iterator[bool]:
    """Advanced once per poll after the emitter has exited: True once the consumer
    has received every delivered message (rows of messages.csv against the emit
    log), or nothing has arrived for GIVE_UP_QUIET_S. Not "the file stopped
    growing": a consumer blocked on a full Q1 records no arrivals for a while and
    still has messages in its socket buffers."""
    delivered = _delivered(out / "emit.jsonl")
    rows = LineCount(out / "messages.csv")
    quiet = settled(out / "messages.csv", GIVE_UP_QUIET_S)
    while True:
        received = max(0, rows() - 1)  # the header
        yield received >= delivered or next(quiet)


def _say_testbed(tb: Any, say: Callable[[str], None]) -> None:
    say(f"kernel shaping: testbed {tb.name}: producer {tb.producer_addr} ({tb.producer_ns}) "
        f"-> consumer {tb.consumer_addr} ({tb.consumer_ns}), "
        f"layout {tb.plan.layout if tb.plan else 'none'}")
    for line in tb.applied:
        say(f"applied: {line}")
    for line in tb.not_applied:
        say(f"NOT applied: {line}")
