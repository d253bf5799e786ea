"""The runner's process handling: ports, listening detection, guaranteed stop."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from simstream.runner.procs import Child, children, free_port, is_listening, settled, wait_until


def test_free_port_is_bindable_and_listening_is_seen() -> None:
    port = free_port()
    assert not is_listening(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        assert not is_listening(port)  # bound is not listening
        s.listen()
        assert is_listening(port)
    assert not is_listening(port)


@pytest.mark.integration
def test_children_are_stopped_on_exception(tmp_path: Path) -> None:
    started: list[Child] = []
    with pytest.raises(RuntimeError, match="boom"), children() as procs:
        c = Child("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log")
        procs.append(c)
        started.append(c)
        raise RuntimeError("boom")
    assert started[0].returncode is not None


@pytest.mark.integration
def test_interrupt_lets_the_child_finish(tmp_path: Path) -> None:
    code = (
        "import time, sys\n"
        "try:\n    print('ready', flush=True); time.sleep(60)\n"
        "except KeyboardInterrupt:\n    print('finished cleanly', flush=True); sys.exit(0)\n"
    )
    with children() as procs:
        c = Child("child", [sys.executable, "-c", code], tmp_path / "log")
        procs.append(c)
        wait_until(lambda: "ready" in (tmp_path / "log").read_text(), 20, "the child to start")
        assert c.interrupt(grace_s=10) == 0
    assert "finished cleanly" in (tmp_path / "log").read_text()


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(RuntimeError, match="the impossible"):
        wait_until(lambda: False, 0.05, "the impossible", poll_s=0.01)


@pytest.mark.integration
def test_wait_until_reports_a_child_that_died(tmp_path: Path) -> None:
    c = Child("quitter", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"], tmp_path / "log")
    try:
        with pytest.raises(RuntimeError, match=r"quitter exited \(3\)"):
            wait_until(lambda: False, 20, "never", alive=c)
    finally:
        c.stop()


def test_settled_waits_for_a_quiet_file(tmp_path: Path) -> None:
    f = tmp_path / "messages.csv"
    f.write_text("a\n")
    quiet = settled(f, 0.2)
    assert next(quiet) is False
    time.sleep(0.25)
    assert next(quiet) is True
    f.write_text("a\nb\n")
    assert next(quiet) is False


def test_line_count_reads_only_what_was_added(tmp_path: Path) -> None:
    from simstream.runner.procs import LineCount

    f = tmp_path / "messages.csv"
    count = LineCount(f)
    assert count() == 0  # no file yet
    f.write_text("index,rank\n0,0\n1,")
    assert count() == 2  # the partial row is not counted yet
    with f.open("a") as fh:
        fh.write("0\n2,0\n")
    assert count() == 4


def test_the_runner_waits_for_every_delivered_message(tmp_path: Path) -> None:
    import json

    from simstream.runner.core import _drained

    (tmp_path / "emit.jsonl").write_text("\n".join(json.dumps({"outcome": o}) for o in
                                                   ["delivered", "cut", "delivered", "lost"]))
    (tmp_path / "messages.csv").write_text("index\n0\n")
    drained = _drained(tmp_path)
    assert next(drained) is False  # 1 of 2 delivered messages received
    with (tmp_path / "messages.csv").open("a") as fh:
        fh.write("1\n")
    assert next(drained) is True
