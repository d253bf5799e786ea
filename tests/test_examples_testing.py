"""The example tests in examples/testing/ pass, run as a user's suite would: from
their own directory, with nothing but simstream's public API and its plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "testing"


@pytest.mark.slow
@pytest.mark.integration
def test_the_testing_examples_pass(tmp_path: Path) -> None:
    names = sorted(p.name for p in EXAMPLES.glob("test_*.py"))
    assert names == ["test_fault_midstream.py", "test_property_network.py", "test_verdict.py"]
    env = dict(os.environ)
    # a checkout not installed: the package from this tree (installed, it is found anyway)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cp = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "simstream.testing",
         "-p", "no:cacheprovider", "-c", str(EXAMPLES / "pytest.ini"), "--rootdir",
         str(EXAMPLES), "--basetemp", str(tmp_path / "base"), str(EXAMPLES)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert cp.returncode == 0, cp.stdout[-4000:] + cp.stderr[-2000:]
    assert "3 passed" in cp.stdout
