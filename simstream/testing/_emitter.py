"""A ``simstream emit`` running in the background for a test, steered over its control API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from simstream.emitter.control import ControlClient
from simstream.profile import Profile, dump_profile

__all__ = ["EmitRecord", "EmitterHandle", "read_emit_records", "start_emitter"]

#: how long an emitter may take to start (import, build its first messages) on a busy host
START_TIMEOUT_S = 60.0
_CONTROL_LINE = re.compile(r"emit: control API on (http://\S+)")


@dataclass(frozen=True)
class EmitRecord:
    """One line of the emit log (docs/formats.md): one message attempt."""

    rank: int
    seq: int
    phase: str
    t_sched: float
    t_first_byte: float | None
    t_last_byte: float | None
    nbytes: int
    wire_bytes: int
    events: int
    blocked_s: float
    hwm_wait_s: float
    socket_wait_s: float
    faults: tuple[str, ...]
    outcome: str
    url: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmitRecord:
        kw: dict[str, Any] = {f.name: d.get(f.name) for f in fields(cls)}
        kw["faults"] = tuple(kw["faults"] or ())
        return cls(**kw)

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


def read_emit_records(path: str | Path) -> list[EmitRecord]:
    """The emit log's records (a partial last line of a killed emitter is skipped)."""
    out = []
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return []
    with fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(EmitRecord.from_dict(json.loads(line)))
            except ValueError:
                continue
    return out


class EmitterHandle:
    """A running ``simstream emit`` (one process) with its log and control API.

    ``profile``: what it runs; ``url``: where it sends; ``log_path``: its emit
    log; ``control_url``: its control API. Changes (:meth:`set_network`,
    :meth:`inject`, :meth:`set_rate`, :meth:`pause`) take effect on each rank's
    next message. Raises ControlError (a change the emitter refused) or
    OSError (it is gone).
    """

    def __init__(self, profile: Profile, workdir: Path, *, extra_args: list[str] | None = None,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.profile = profile
        self.url = profile.transport.all_urls[0]
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.profile_path = workdir / "profile.yaml"
        self.profile_path.write_text(dump_profile(profile))
        self.log_path = workdir / "emit.jsonl"
        self.stderr_path = workdir / "emitter.stderr"
        self.stdout_path = workdir / "emitter.stdout"
        argv = [sys.executable, "-m", "simstream", "emit", "--profile", str(self.profile_path),
                "--log", str(self.log_path), "--no-progress", "--control", "127.0.0.1:0",
                *(extra_args or [])]
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in stop()
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(argv, stdout=self._out, stderr=self._err,
                                        stdin=subprocess.DEVNULL, env=env)
        self.control_url = ""
        try:
            self.control_url = self._wait_for_control(start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.control = ControlClient(self.control_url)

    def _wait_for_control(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = _CONTROL_LINE.search(self.stderr)
            if m:
                return m.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"simstream emit exited with status {self.process.returncode} "
                                   f"before it started:\n{self.stderr.strip()}")
            time.sleep(0.02)
        raise TimeoutError(f"simstream emit did not start its control API within {timeout_s} s:"
                           f"\n{self.stderr.strip()}")

    # -- the process

    @property
    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the emitter to finish its profile; its exit status (0: done).

        Raises TimeoutError if it is still running after ``timeout`` seconds (it
        keeps running; the fixture stops it at teardown).
        """
        try:
            return int(self.process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the emitter is still running after {timeout} s "
                               f"({self.url})") from None

    def stop(self, timeout: float = 15.0) -> int:
        """Stop it as Ctrl-C would (every attempt still logged), then kill it after
        ``timeout`` seconds. Returns its exit status (130: interrupted, 0: it had
        finished). Safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for fh in (self._out, self._err):
            if not fh.closed:
                fh.close()
        return int(self.process.returncode)

    # -- its records

    @property
    def records(self) -> list[EmitRecord]:
        """The emit log so far, as :class:`EmitRecord` objects (complete once it has exited)."""
        return read_emit_records(self.log_path)

    @property
    def delivered(self) -> list[EmitRecord]:
        return [r for r in self.records if r.delivered]

    # -- live control

    def status(self) -> dict[str, Any]:
        """GET /status: the conditions in force, live changes, counters."""
        return self.control.status()

    def set_network(self, **fields: Any) -> dict[str, Any]:
        """Network fields (``latency_ms``, ``jitter_ms``, ``jitter_distribution``,
        ``bandwidth_mbps``) from the next message on; None gives a field back to the
        profile."""
        return self.control.set_network(**fields)

    def inject(self, fault: Any) -> dict[str, Any]:
        """A fault (a dict or a profile Fault; its ``rank`` or every rank) on the next
        message. A Fault's triggers are ignored: injected, it strikes now."""
        return self.control.inject(fault)

    def set_rate(self, rate_hz: float | None) -> dict[str, Any]:
        """Messages per second per rank from the next message; None: the timeline's again."""
        return self.control.set_rate(rate_hz)

    def pause(self) -> dict[str, Any]:
        return self.control.pause()

    def resume(self) -> dict[str, Any]:
        return self.control.resume()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<EmitterHandle {self.profile.name} -> {self.url} ({state})>"


def start_emitter(profile: Profile, workdir: Path, **kw: Any) -> EmitterHandle:
    return EmitterHandle(profile, workdir, **kw)
