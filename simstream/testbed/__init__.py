"""Kernel shaping and wire checks.

Layout: ``tc`` builds tc command lines (pure); ``detect`` finds what the kernel
offers; ``netns`` makes the two-namespace testbed and applies the plan
(``Testbed`` is the Python API); ``cli``, ``doctor``, ``capture`` and
``verify`` are the click commands; ``traffic`` is a bounded TCP sender and
receiver used by the tests and the shaping benchmark.
"""

from __future__ import annotations

__all__ = ["Testbed"]


def __getattr__(name: str) -> object:
    # imported lazily: `simstream doctor` must not pay for the testbed
    if name == "Testbed":
        from simstream.testbed.netns import Testbed

        return Testbed
    raise AttributeError(name)
