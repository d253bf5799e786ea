"""Shared test set-up: hypothesis settings profiles (default, ci, thorough)."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# A thread that is not a daemon and outlives its test keeps the interpreter
# alive after the last test: the suite then never exits and CI runs into its
# time limit with every test green. Each test gets a few seconds to let its
# threads end; one still running afterwards fails that test by name. The
# process-wide pool of simstream.pipeline.pinned.copy_into ("copy_N" workers)
# lives as long as the process by design and ends at interpreter exit.
_THREAD_GRACE_S = 5.0
_PROCESS_WIDE_THREADS = ("copy_",)


def _leaked(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.daemon
        and not t.name.startswith(_PROCESS_WIDE_THREADS)
    ]


@pytest.fixture(autouse=True)
def _reports_are_consistent(request):
    """Every report.json a test leaves under its tmp_path says only what its evidence
    shows (simstream.diagnose.consistency)."""
    yield
    root = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if root is None:
        return
    import json

    from simstream.diagnose.consistency import busy_disagreements, check

    for path in sorted(root.rglob("report.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not a diagnosis (a test's own broken file)
        if isinstance(report, dict) and "verdict" in report:
            problems = check(report)
            assert not problems, f"{path} contradicts its evidence:\n  " + "\n  ".join(problems)
            # the busy figures: one definition, the same value in summary.json and the report
            try:
                summary = json.loads((path.parent / "summary.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(summary, dict):
                problems = busy_disagreements(report, summary)
                assert not problems, f"{path.parent}: " + "; ".join(problems)


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + _THREAD_GRACE_S
    while (leaked := _leaked(before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, "non-daemon threads outlived the test: " + ", ".join(
        t.name for t in leaked
    )


_EXIT_WATCHDOG_S = 120.0


def pytest_unconfigure(config):
    """The last word on hangs at exit: a non-daemon thread or child process that
    never ends makes the interpreter wait for it forever (threading and
    multiprocessing join them at exit). A daemon watchdog, still running while
    the interpreter waits, names what is left and ends the run as failed
    instead of hanging until CI's limit."""
    import multiprocessing

    def watchdog() -> None:
        time.sleep(_EXIT_WATCHDOG_S)
        names = [
            f"thread {t.name}" for t in threading.enumerate()
            if not t.daemon and t is not threading.main_thread()
        ]
        names += [f"process {p.name}" for p in multiprocessing.active_children()]
        sys.stderr.write(
            f"the test process did not exit within {_EXIT_WATCHDOG_S:.0f} s of the last "
            "test; still running: " + ", ".join(names) + "\n"
        )
        sys.stderr.flush()
        os._exit(3)

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()
