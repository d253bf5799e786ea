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
