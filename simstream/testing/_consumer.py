"""The measured consumer (``simstream consume``) run for a test, and its run directory read back."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simstream.profile import Profile, dump_profile

__all__ = ["ConsumerHandle", "ConsumerRun", "read_consumer_run"]

#: how long the consumer may take to import torch and listen, on a busy host
START_TIMEOUT_S = 120.0


def _num(v: str) -> Any:
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (_num(v) if k not in ("status", "reason", "stream", "device") else v)
                 for k, v in row.items()} for row in csv.DictReader(fh)]


@dataclass
class ConsumerRun:
    """A consumer run directory, parsed (docs/formats.md).

    ``summary``: summary.json; ``messages``: messages.csv rows (one per received
    message; ints and floats parsed, empty cells None); ``batches``:
    batches.csv rows; ``quarantined``: the quarantine/*.json records.
    ``returncode``: the consumer's exit status when this process ran it.
    """

    run_dir: Path
    summary: dict[str, Any]
    messages: list[dict[str, Any]]
    batches: list[dict[str, Any]]
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    returncode: int | None = None
    output: str = ""

    @property
    def received(self) -> int:
        return int(self.summary.get("received", len(self.messages)))

    @property
    def processed(self) -> int:
        return int(self.summary.get("processed", len(self.batches)))


def read_consumer_run(run_dir: str | Path) -> ConsumerRun:
    """Read a consumer run directory. Raises FileNotFoundError if it has no summary.json."""
    root = Path(run_dir)
    summary_path = root / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{root} has no summary.json: not a finished consumer run")
    quarantined = []
    qdir = root / "quarantine"
    if qdir.is_dir():
        for p in sorted(qdir.glob("*.json")):
            try:
                quarantined.append(json.loads(p.read_text()))
            except ValueError:
                continue
    return ConsumerRun(run_dir=root, summary=json.loads(summary_path.read_text()),
                       messages=_rows(root / "messages.csv"),
                       batches=_rows(root / "batches.csv"), quarantined=quarantined)


class ConsumerHandle:
    """A ``simstream consume`` bound on ``url``, running in the background.

    :meth:`result` waits for it to end (its ``count``, ``duration`` or idle
    timeout) and returns the parsed :class:`ConsumerRun`.
    """

    def __init__(self, url: str, out_dir: Path, *, profile: Profile | None = None,
                 count: int | None = None, duration: float | None = None,
                 idle_timeout: float | None = 5.0, device: str = "cpu",
                 options: Mapping[str, Any] | None = None,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        from simstream.profile import split_url
        from simstream.runner.procs import is_listening

        self.url = url
        self.run_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "simstream", "consume", "--bind", url, "--out",
                str(out_dir), "--device", device]
        if profile is not None or options:
            from simstream.testing._profiles import resolve_profile

            p = resolve_profile(profile or {"name": "consumer"},
                                consumer=dict(options) if options else None)
            ppath = out_dir.parent / f"{out_dir.name}-profile.yaml"
            ppath.write_text(dump_profile(p))
            argv += ["--profile", str(ppath), "--transport", p.transport.kind]
        for flag, value in (("--count", count), ("--duration", duration),
                            ("--idle-timeout", idle_timeout)):
            if value is not None:
                argv += [flag, str(value)]
        self.log_path = out_dir.parent / f"{out_dir.name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._result: ConsumerRun | None = None
        port = split_url(url)[1]
        deadline = time.monotonic() + start_timeout_s
        try:
            while not is_listening(port):
                if self.process.poll() is not None:
                    raise RuntimeError(f"simstream consume exited with status "
                                       f"{self.process.returncode} before it listened on "
                                       f"{url}:\n{self.output}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"simstream consume did not listen on {url} within "
                                       f"{start_timeout_s} s:\n{self.output}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    @property
    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def result(self, timeout: float = 120.0) -> ConsumerRun:
        """Wait for the consumer to end; its run directory, parsed.

        Raises TimeoutError after ``timeout`` seconds (it is then stopped, as
        Ctrl-C would, and its records kept), RuntimeError if it failed.
        """
        if self._result is not None:
            return self._result
        try:
            rc = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"the consumer on {self.url} did not end within {timeout} s "
                               f"(stopped; records in {self.run_dir})") from None
        return self._finish(rc)

    def stop(self, timeout: float = 30.0) -> ConsumerRun | None:
        """End it as Ctrl-C would (it finishes what it received and writes its
        summary), killing it after ``timeout`` s. Returns the run, if it wrote one."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if not self._log.closed:
            self._log.close()
        try:
            return self._finish(self.process.returncode)
        except (RuntimeError, FileNotFoundError):
            return None

    def _finish(self, rc: int) -> ConsumerRun:
        if not self._log.closed:
            self._log.close()
        if rc not in (0, 130, -signal.SIGINT):
            raise RuntimeError(f"the consumer exited with status {rc}:\n{self.output}")
        run = read_consumer_run(self.run_dir)
        run.returncode = rc
        run.output = self.output
        self._result = run
        return run
