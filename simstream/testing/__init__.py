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
    "quiet_after_s",
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
def simstream_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Factory: ``simstream_run(profile, *, count=None, duration=None,
    device="cpu", timeout=300.0, **overrides)`` runs one experiment end to end
    (on ``device`` unless the profile's ``consumer.device`` is not ``auto``):
    the measured consumer bound on a free loopback port, the emitter sending to
    it, both as separate programs; the consumer ends by itself once the stream
    has been quiet for longer than any gap the profile plans; then the
    diagnosis (``simstream diagnose``, without plots or trace) of the run directory
    (the consumer's records, ``emit.jsonl``, ``profile.yaml``). Returns a
    :class:`RunReport`. Every process is stopped before it returns or raises;
    TimeoutError after ``timeout`` seconds."""
    started: list[Any] = []

    def run(profile: str | Path | Mapping[str, Any] | Profile, *, count: int | None = None,
            duration: float | None = None, device: str = "cpu", timeout: float = 300.0,
            **overrides: Any) -> RunReport:
        import shutil
        import time

        from simstream.diagnose import diagnose_run

        url = free_url()
        p = resolve_profile(profile, url=url, count=count, duration=duration, **overrides)
        work = _workdir(tmp_path_factory, "run")
        out = work / "run"
        t_end = time.monotonic() + timeout
        # a device the profile's consumer section names (not auto) wins over the default
        if p.consumer.device != "auto":
            device = p.consumer.device
        consumer = ConsumerHandle(url, out, profile=p, idle_timeout=quiet_after_s(p),
                                  device=device)
        started.append(consumer)
        emitter = EmitterHandle(p, work / "emitter")
        started.append(emitter)
        rc = emitter.wait(max(1.0, t_end - time.monotonic()))
        if rc != 0:
            raise RuntimeError(f"the emitter exited with status {rc}:\n{emitter.stderr}")
        consumer_run = consumer.result(max(1.0, t_end - time.monotonic()))
        shutil.copyfile(emitter.log_path, out / "emit.jsonl")
        (out / "profile.yaml").write_text(dump_profile(p))
        report = diagnose_run(out, plots=False, trace=False)
        return RunReport(run_dir=out, report=report, consumer=consumer_run,
                         emit_records=read_emit_records(out / "emit.jsonl"), profile=p)

    try:
        yield run
    finally:
        for h in reversed(started):
            h.stop()


def quiet_after_s(profile: Profile, *, margin_s: float = 2.0, limit: int = 100_000) -> float:
    """Seconds of silence after which a consumer of ``profile`` may take the stream
    as over: the longest gap its schedule plans between two messages of a rank
    (silent phases, stalls, latency), plus the longest message's time on a capped
    link, plus ``margin_s`` (start-up, reconnects)."""
    from simstream.schedule import iter_schedule

    longest = 0.0
    first = profile.transport.rank_offset
    for rank in range(first, first + profile.transport.ranks):
        prev = 0.0
        for planned in iter_schedule(profile, rank, limit=limit):
            gap = planned.t_sched - prev
            if planned.bandwidth_mbps:
                gap += (planned.nbytes_estimate or 0) * 8 / (planned.bandwidth_mbps * 1e6)
            longest = max(longest, gap)
            prev = planned.t_sched
    slow_close = max((f.duration_ms or 0.0 for f in profile.faults
                      if f.kind == "slow_close"), default=0.0) / 1000
    return round(longest + slow_close + margin_s, 3)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "simstream: a test that runs simstream's emitter or consumer")
