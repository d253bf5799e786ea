"""One experiment end to end: consumer on a free loopback port, the emitter
against it, a clean shutdown once everything sent has been received, then the
diagnosis.

The consumer and the emitter run as separate programs (``simstream consume``
and ``simstream emit``), as they would on two nodes, and each writes its own
records into the run directory. The runner reads the profile to set them up;
the diagnosis afterwards does not (it reads only the measurements).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simstream.profile import Profile, dump_profile, find_profile, load_profile
from simstream.runner.procs import (
    Child,
    children,
    free_port,
    is_listening,
    settled,
    simstream_argv,
    wait_until,
)

# How long the consumer must stay silent after the emitter has finished before
# it is asked to stop: long enough for kernel buffers and Q1 to drain.
QUIET_S = 1.5
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


def default_out_dir(profile: Profile, root: Path = Path("runs"), suffix: str = "") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{profile.name}-{stamp}{suffix}"


def run_duration_s(profile: Profile) -> float:
    """An upper bound on how long the emitter runs, for its time-out."""
    if profile.stop.duration_s is not None:
        return profile.stop.duration_s
    # message-bounded runs: bounded by the timeline's own length or a generous default
    return 600.0


def _consumer_argv(profile_path: Path, out: Path, url: str, bind: bool, mode: str,
                   extra: list[str]) -> list[str]:
    argv = simstream_argv(
        "consume", "--profile", str(profile_path), "--out", str(out), "--mode", mode,
    )
    if mode == "socket":
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
) -> RunResult:
    """Run one experiment. ``mode="random"`` runs the consumer alone on batches it
    generates (no emitter) for the profile's duration.

    Raises RuntimeError when a child fails to start or exits with an error.
    """
    path = find_profile(profile_path)
    profile = load_profile(path)
    out = out_dir or default_out_dir(profile)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.yaml").write_text(dump_profile(profile))
    kind = profile.transport.kind
    result = RunResult(out_dir=out, mode=mode)
    consumer_extra = list(consumer_args or [])

    with children() as procs:
        if mode == "random":
            dur = duration_s or run_duration_s(profile)
            consumer = Child(
                "consumer",
                _consumer_argv(path, out, "", True, "random", ["--duration", str(dur), *consumer_extra]),
                out / "consumer.log",
            )
            procs.append(consumer)
            result.consumer_rc = consumer.wait(dur + DRAIN_TIMEOUT_S)
            if result.consumer_rc is None:
                result.consumer_rc = consumer.interrupt()
        else:
            port = free_port()
            url = f"tcp://127.0.0.1:{port}"
            consumer_binds = profile.transport.role == "client"
            consumer = Child(
                "consumer",
                _consumer_argv(path, out, url, consumer_binds, "socket",
                               ["--transport", kind, *consumer_extra]),
                out / "consumer.log",
            )
            procs.append(consumer)
            if consumer_binds:
                wait_until(lambda: is_listening(port), 60, f"the consumer to listen on {url}",
                           alive=consumer)
            emit_argv = simstream_argv(
                "emit", "--profile", str(path), "--url", url, "--log", str(out / "emit.jsonl"),
                *(emitter_args or []),
            )
            if duration_s is not None:
                emit_argv += ["--duration", str(duration_s)]
            emitter = Child("emitter", emit_argv, out / "emitter.log")
            procs.append(emitter)
            limit = (duration_s or run_duration_s(profile)) + 120
            result.emitter_rc = emitter.wait(limit)
            if result.emitter_rc is None:
                result.emitter_rc = emitter.interrupt()
            if consumer.returncode is None:
                quiet = settled(out / "messages.csv", QUIET_S)
                try:
                    wait_until(lambda: next(quiet), DRAIN_TIMEOUT_S,
                               "the consumer to receive everything", poll_s=0.1, alive=consumer)
                finally:
                    result.consumer_rc = consumer.interrupt()
            else:
                result.consumer_rc = consumer.returncode
        if result.consumer_rc not in (0, None):
            raise RuntimeError(
                f"the consumer exited with status {result.consumer_rc}:\n{procs[0].tail()}"
            )

    summary_path = out / "summary.json"
    if summary_path.exists():
        result.summary = json.loads(summary_path.read_text())
    if diagnose:
        from simstream.diagnose import diagnose_run

        result.report = diagnose_run(out)
    return result

