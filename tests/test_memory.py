"""simstream.memory: the periodic malloc_trim that keeps a streaming process's
resident memory at what it holds."""

from __future__ import annotations

import threading

import pytest

from simstream.memory import Trimmer, libc_trim


def test_trimmer_calls_trim_until_stopped() -> None:
    calls: list[int] = []
    third = threading.Event()

    def trim() -> int:
        calls.append(1)
        if len(calls) == 3:
            third.set()
        return 1

    t = Trimmer(0.001, trim).start()
    assert third.wait(10.0), "the trimmer never trimmed three times"
    thread = t._thread  # noqa: SLF001
    t.stop()
    assert thread is not None and not thread.is_alive()  # stop joined it: no call can follow
    assert t.calls == len(calls) >= 3


def test_without_a_trim_function_start_does_nothing() -> None:
    t = Trimmer(1.0, trim=None)
    t.trim = None
    assert t.start()._thread is None  # noqa: SLF001
    t.stop()


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s 0 is not > 0"):
        Trimmer(0)


def test_glibc_trim_is_found_and_callable() -> None:
    trim = libc_trim()
    if trim is None:
        pytest.skip("not glibc: nothing to trim with")
    assert trim() in (0, 1)
