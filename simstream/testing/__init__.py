"""simstream as a test library: a pytest plugin, handles, assertions.

Layout: this module is the pytest plugin (entry point ``pytest11``, name
``simstream.testing``; active wherever simstream is installed) and the public
surface. The machinery lives in private modules: ``_profiles`` (what a test
passes -> a Profile), ``_emitter`` (a background ``simstream emit`` steered
through its control API, ``simstream.emitter.control``), ``_consumer`` (the
measured consumer and its run directory read back), ``_assertions``.
Hypothesis strategies are in ``simstream.strategies``. Nothing here imports
torch: the consumer runs as its own program.

Fixtures (each a factory; everything a test started is stopped at teardown,
also when the test fails):

- ``simstream_emitter(profile, *, url, count=None, duration=None, **overrides)``
  -> :class:`EmitterHandle`, already sending in the background.
- ``simstream_consumer(url=None, *, count=None, duration=None, ...)`` -> the
  consumer's parsed run (:class:`ConsumerRun`); ``background=True`` gives a
  :class:`ConsumerHandle` instead.
- ``simstream_run(profile, *, count=None, duration=None, **overrides)`` -> a
  :class:`RunReport`: both ends and the diagnosis.

See docs/testing.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from simstream.emitter.control import ControlClient, ControlError
from simstream.profile import Profile, dump_profile
from simstream.testing._assertions import (
    assert_accounted,
    assert_no_loss,
    assert_no_starvation,
    assert_verdict,
    idle_share,
    report_of,
)
from simstream.testing._consumer import ConsumerHandle, ConsumerRun, read_consumer_run
from simstream.testing._emitter import EmitRecord, EmitterHandle, read_emit_records
from simstream.testing._profiles import resolve_profile

__all__ = [
    "ConsumerHandle",
    "ConsumerRun",
    "ControlClient",
    "ControlError",
    "EmitRecord",
    "EmitterHandle",
    "RunReport",
    "assert_accounted",
    "assert_no_loss",
    "assert_no_starvation",
    "assert_verdict",
    "free_url",
    "idle_share",
    "read_consumer_run",
    "read_emit_records",
    "report_of",
    "resolve_profile",
    "simstream_consumer",
    "simstream_emitter",
    "simstream_run",
]


def free_url(host: str = "127.0.0.1") -> str:
    """``tcp://HOST:PORT`` with a port nothing listens on right now."""
    from simstream.runner.procs import free_port

    return f"tcp://{host}:{free_port(host)}"


@dataclass
class RunReport:
    """One experiment end to end (``simstream run``): the diagnosis and what it read.

    ``report``: report.json (``verdict``, ``confidence``, ``summary``,
    ``reasons``, ``evidence`` ...); ``consumer``: the consumer's parsed run;
    ``emit_records``: the emit log; ``run_dir``: where it all is.
    """

    run_dir: Path
    report: dict[str, Any]
    consumer: ConsumerRun
    emit_records: list[EmitRecord] = field(default_factory=list)
    profile: Profile | None = None

    @property
    def verdict(self) -> str:
        return str(self.report.get("verdict"))

    @property
    def confidence(self) -> float:
        return float(self.report.get("confidence") or 0.0)

    @property
    def summary(self) -> dict[str, Any]:
        return self.consumer.summary


def _workdir(factory: pytest.TempPathFactory, what: str) -> Path:
    return factory.mktemp(f"simstream-{what}", numbered=True)


@pytest.fixture
def simstream_emitter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Factory: ``simstream_emitter(profile, *, url, count=None, duration=None,
    **overrides)`` starts ``simstream emit`` (client role: it connects to ``url``,
    retrying until something listens) and returns its :class:`EmitterHandle`.
    ``profile``: a bundled name, a path, a mapping or a Profile; ``overrides``:
    profile sections (``network={...}``, ``timeline={...}``, ``faults=[...]``,
    ``source={...}``). Raises ProfileError at once for an invalid profile."""
    started: list[EmitterHandle] = []

    def start(profile: str | Path | Mapping[str, Any] | Profile, *, url: str,
              count: int | None = None, duration: float | None = None,
              **overrides: Any) -> EmitterHandle:
        p = resolve_profile(profile, url=url, count=count, duration=duration, **overrides)
        if p.transport.processes > 1:
            from simstream.profile import ProfileError

            raise ProfileError(["transport.processes: the fixture runs one emitter process "
                                "(its control API steers one); use 1"])
        h = EmitterHandle(p, _workdir(tmp_path_factory, "emit"))
        started.append(h)
        return h

    try:
        yield start
    finally:
        for h in started:
            h.stop()


@pytest.fixture
def simstream_consumer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Factory: ``simstream_consumer(url=None, *, profile=None, count=None,
    duration=None, idle_timeout=5.0, device="cpu", background=False,
    timeout=120.0, **options)`` runs the measured consumer bound on ``url`` (a free
    loopback port if None; an :class:`EmitterHandle` gives its URL and profile)
    until ``count`` messages, ``duration`` seconds or ``idle_timeout`` seconds of
    silence, and returns its parsed :class:`ConsumerRun`. ``options``: keys of
    the profile's ``consumer:`` section (``buffers=3``, ``queue={...}``).
    ``background=True`` returns a :class:`ConsumerHandle` as soon as it listens."""
    started: list[ConsumerHandle] = []

    def run(url: Any = None, *, profile: Any = None, count: int | None = None,
            duration: float | None = None, idle_timeout: float | None = 5.0,
            device: str = "cpu", background: bool = False, timeout: float = 120.0,
            **options: Any) -> Any:
        if isinstance(url, EmitterHandle):
            profile = url.profile if profile is None else profile
            url = url.url
        prof = None
        if profile is not None:
            prof = resolve_profile(profile)
        h = ConsumerHandle(url or free_url(), _workdir(tmp_path_factory, "consume") / "run",
                           profile=prof, count=count, duration=duration,
                           idle_timeout=idle_timeout, device=device, options=options)
        started.append(h)
        return h if background else h.result(timeout)

    try:
        yield run
    finally:
        for h in started:
            h.stop()


@pytest.fixture
def simstream_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Factory: ``simstream_run(profile, *, count=None, duration=None,
    device="cpu", **overrides)`` runs one experiment as ``simstream run`` does
    (consumer and emitter as separate programs on a free loopback port, then the
    diagnosis, without plots) and returns its :class:`RunReport`. Every process
    is stopped before it returns or raises."""

    def run(profile: str | Path | Mapping[str, Any] | Profile, *, count: int | None = None,
            duration: float | None = None, device: str = "cpu", **overrides: Any) -> RunReport:
        from simstream.diagnose import diagnose_run
        from simstream.runner.core import run_profile

        p = resolve_profile(profile, count=count, duration=duration, **overrides)
        work = _workdir(tmp_path_factory, "run")
        path = work / "profile.yaml"
        path.write_text(dump_profile(p))
        out = work / "run"
        consumer_args = [] if "device" in p.consumer else ["--device", device]
        run_profile(path, out, consumer_args=consumer_args, diagnose=False)
        report = diagnose_run(out, plots=False)
        return RunReport(run_dir=out, report=report, consumer=read_consumer_run(out),
                         emit_records=read_emit_records(out / "emit.jsonl"), profile=p)

    return run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "simstream: a test that runs simstream's emitter or consumer")
