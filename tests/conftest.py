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
# threads end; one still running afterwards fails that test by name.
_THREAD_GRACE_S = 5.0


@pytest.fixture(autouse=True)
def _reports_are_consistent(request):
    """Every report.json a test leaves under its tmp_path says only what its evidence
    shows (simstream.diagnose.consistency)."""
    yield
    root = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if root is None:
        return
    import json

    from simstream.diagnose.consistency import check

    for path in sorted(root.rglob("report.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not a diagnosis (a test's own broken file)
        if isinstance(report, dict) and "verdict" in report:
            problems = check(report)
            assert not problems, f"{path} contradicts its evidence:\n  " + "\n  ".join(problems)


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + _THREAD_GRACE_S
    while True:
        leaked = [
            t for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.daemon
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, "non-daemon threads outlived the test: " + ", ".join(
        t.name for t in leaked
    )


def pytest_unconfigure(config):
    """The last word on hangs at exit: a non-daemon thread or a child process
    still alive when the session ends would make the interpreter wait for it
    forever (threading and multiprocessing join them at exit). Name them and
    end the run as failed instead of hanging until CI's limit."""
    import multiprocessing

    deadline = time.monotonic() + 10.0
    while True:
        threads = [
            t for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and not t.daemon
        ]
        children = [p for p in multiprocessing.active_children() if not p.daemon]
        if not (threads or children) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if threads or children:
        names = [f"thread {t.name}" for t in threads] + [f"process {p.name}" for p in children]
        sys.stderr.write("the suite left running (it would never exit): " + ", ".join(names) + "\n")
        sys.stderr.flush()
        os._exit(3)

# simstream's own pytest plugin (fixtures simstream_emitter, simstream_consumer,
# simstream_run). Installed, it is already loaded through its pytest11 entry point,
# registered under this same name, so this line is then a no-op; in a checkout
# used through PYTHONPATH it loads the plugin.
pytest_plugins = ["simstream.testing"]
