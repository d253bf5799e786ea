"""`simstream diagnose`: exit codes, printed verdict and evidence, --quiet,
--json, --selftest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simstream.cli import main
from simstream.diagnose.simulate import SCENARIOS, Scenario, write_run_dir


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_not_a_run_dir_exits_2_naming_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "summary.json").write_text("{}")
    code, out, err = run_cli(["diagnose", str(tmp_path)], capsys)
    assert code == 2
    assert "batches.csv" in err and "summary.json" not in err.split("missing", 1)[1]
    assert "Traceback" not in err + out


def test_missing_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["diagnose", str(tmp_path / "nope")], capsys)
    assert code == 2 and "nope" in err


def test_no_dir_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["diagnose"], capsys)
    assert code == 2 and "run directory" in err


def test_prints_verdict_evidence_and_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_run_dir(SCENARIOS["consumer"], tmp_path / "run")
    code, out, _ = run_cli(["diagnose", str(d), "--no-plots"], capsys)
    assert code == 0
    assert "consumer" in out and "confidence" in out
    assert "key evidence" in out and "Q1 occupancy" in out
    for name in ("report.json", "report.md", "report.html", "trace.json"):
        assert str(d / name) in out
        assert (d / name).is_file()


def test_quiet_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_run_dir(SCENARIOS["queue"], tmp_path / "run")
    code, out, _ = run_cli(["diagnose", str(d), "--quiet", "--no-plots"], capsys)
    assert code == 0
    assert out.strip().splitlines() == [out.strip()] and out.startswith("verdict: queue (confidence ")
    code, out, _ = run_cli(["diagnose", str(d), "--json", "--no-plots"], capsys)
    rep = json.loads(out)
    assert code == 0 and rep["verdict"] == "queue"
    assert rep == json.loads((d / "report.json").read_text())


def test_consumer_side_only_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = SCENARIOS["network"]
    d = write_run_dir(Scenario(**{**base.__dict__, "emit_log": False, "seq": False}), tmp_path / "run")
    code, out, _ = run_cli(["diagnose", str(d), "--no-plots"], capsys)
    assert code == 0 and "network" in out
    assert "consumer-side data only" in out and "no sequence numbers" in out
    code, out, _ = run_cli(["diagnose", str(d), "--quiet", "--no-plots"], capsys)
    assert "[consumer-side data only]" in out


def test_selftest_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["diagnose", "--selftest"], capsys)
    assert code == 0, out
    assert out.count("ok ") == len(SCENARIOS) and "selftest passed" in out


def test_investigate_root_hints_at_its_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run_dir(SCENARIOS["consumer"], tmp_path / "random")
    write_run_dir(SCENARIOS["network"], tmp_path / "socket")
    code, _, err = run_cli(["diagnose", str(tmp_path)], capsys)
    assert code == 2 and "it holds run directories: random, socket" in err


def test_several_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A glob that matches two runs diagnoses both; one that is not a run dir stops
    everything first (exit 2, naming it)."""

    a = write_run_dir(SCENARIOS["consumer"], tmp_path / "a")
    b = write_run_dir(SCENARIOS["network"], tmp_path / "b")
    code, out, _ = run_cli(["diagnose", str(a), str(b), "--quiet", "--no-plots"], capsys)
    assert code == 0
    assert out.splitlines() == [f"{a}: verdict: consumer (confidence 0.98)",
                                f"{b}: verdict: network (confidence 0.99), cause link"]
    code, out, _ = run_cli(["diagnose", str(a), str(b), "--json", "--no-plots"], capsys)
    assert [r["verdict"] for r in json.loads(out)] == ["consumer", "network"]
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["diagnose", str(a), str(tmp_path / "empty"), "--quiet"], capsys)
    assert code == 2 and "empty" in err and "1 of 2" in err


RUN_WITH_A_FAKE_RESULT = """
import sys
from pathlib import Path
from simstream.cli import main
from simstream.runner import cli as run_cli
from simstream.runner.core import RunResult

def fake_run_profile(profile_path, out_dir, **kw):
    kw["echo"]("run directory: " + str(out_dir))
    return RunResult(out_dir=Path(str(out_dir)), mode="socket",
                     summary={"received": 3, "processed": 3}, shaping={"mode": "user space"})

run_cli.run_profile = fake_run_profile
main(["run", "--profile", "steady", "--out", sys.argv[1]])
"""


def test_output_into_a_pipe_whose_reader_left_is_not_an_error(tmp_path: Path) -> None:
    """`simstream diagnose A B | head -1` and `simstream run ... | head -1`: the reader
    is gone before the first write (deterministic), and the command still ends quietly
    with its own status, 0 here (rich alone would exit 1)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    a = write_run_dir(Scenario(**{**SCENARIOS["consumer"].__dict__, "duration_s": 0.3}), tmp_path / "a")
    b = write_run_dir(Scenario(**{**SCENARIOS["network"].__dict__, "duration_s": 0.3}), tmp_path / "b")
    env = {**os.environ, "PYTHONPATH": str(root)}
    for argv in (["-m", "simstream", "diagnose", "--no-plots", str(a), str(b)],
                 ["-m", "simstream", "diagnose", "--quiet", "--no-plots", str(a), str(b)],
                 ["-c", RUN_WITH_A_FAKE_RESULT, str(tmp_path / "run")]):
        r, w = os.pipe()
        os.close(r)  # the reader has left
        try:
            cp = subprocess.run([sys.executable, *argv], stdout=w, stderr=subprocess.PIPE,
                                cwd=root, env=env, timeout=120)
        finally:
            os.close(w)
        err = cp.stderr.decode()
        assert cp.returncode == 0, (argv, err)
        assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_output_into_a_file_or_pipe_is_not_wrapped(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Not a terminal: each line whole (a grep for a sentence finds it), not cut at 80
    columns."""
    a = write_run_dir(Scenario(**{**SCENARIOS["network"].__dict__, "duration_s": 0.3}), tmp_path / "a")
    code, out, _ = run_cli(["diagnose", "--no-plots", str(a)], capsys)
    report = json.loads((a / "report.json").read_text())
    assert code == 0 and len(report["summary"]) > 200
    assert report["summary"] in out.splitlines()
    assert any(line.startswith("  • device busy") and len(line) > 80 for line in out.splitlines())
