"""The consistency checker: a report built by diagnose passes it, and each kind of
contradiction the checker knows is caught when planted in an otherwise good report."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from simstream.diagnose.consistency import check
from simstream.diagnose.report import diagnose_run
from simstream.diagnose.simulate import SCENARIOS, write_run_dir


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("consistency")
    return {n: diagnose_run(write_run_dir(SCENARIOS[n], root / n), plots=False, trace=False)
            for n in ("network", "receive-network", "consumer")}


@pytest.mark.parametrize("name", ["network", "receive-network", "consumer"])
def test_diagnosed_reports_are_consistent(reports: dict[str, dict[str, Any]], name: str) -> None:
    assert check(reports[name]) == []


def _planted(rep: dict[str, Any], edit: Any) -> list[str]:
    r = copy.deepcopy(rep)
    edit(r)
    return check(r)


def test_each_contradiction_is_caught(reports: dict[str, dict[str, Any]]) -> None:
    net, rcv, con = reports["network"], reports["receive-network"], reports["consumer"]
    assert net["evidence"]["shaping_cap"] is None
    cases = [
        (net, lambda r: r["recommendations"].append("the link is saturated (a bandwidth cap)."), "bandwidth cap"),
        (rcv, lambda r: r["reasons"].append("nothing in the consumer was saturated, arrivals set the pace"),
         "nothing in the consumer was saturated"),
        (rcv, lambda r: r.update(cause="link", network_detail="link: x"), "does not name the cause link"),
        (rcv, lambda r: r["recommendations"].append("speed up the link, not the consumer."), "not the consumer"),
        (net, lambda r: r.update(cause=None), "without a cause"),
        (con, lambda r: r.update(cause="link"), "a cause (link) on a consumer verdict"),
        (con, lambda r: r.update(verdict="network"), "verdict network although the inference loop"),
        (con, lambda r: r.update(summary=r["summary"].replace("Verdict consumer", "Verdict queue")),
         "first sentence does not name the verdict"),
        (net, lambda r: r.update(summary=r["summary"].replace(", cause link", "")), "does not name the cause"),
        (rcv, lambda r: r["cause_evidence"].update(receiver_busy_share=0.1), "receiver_busy_share"),
        (con, lambda r: r["evidence"].update(gpu_busy_any_stream_share=0.01), "device busy"),
        (con, lambda r: (r["evidence"].update(loop_busy_share=0.5),
                         r["evidence"]["q1"].update(share_over_80pct=0.1)), "neither the loop"),
        (net, lambda r: r["evidence"]["q1"].update(share_over_80pct=0.9),
         "verdict network although Q1 was over 80 % full"),
    ]
    for rep, edit, expect in cases:
        problems = _planted(rep, edit)
        assert any(expect in p for p in problems), (expect, problems)


def test_selftest_checks_consistency(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from simstream.diagnose.cli import diagnose

    res = CliRunner().invoke(diagnose, ["--selftest"])
    assert res.exit_code == 0, res.output
    assert "receive-network" in res.output and "cause receive" in res.output
    assert "inconsistent" not in res.output


def test_busy_figures_of_summary_and_report_must_agree() -> None:
    from simstream.diagnose.consistency import BUSY_TOLERANCE, busy_disagreements

    report = {"evidence": {"loop_busy": 0.40, "device_busy": 0.60, "device_compute_busy": 0.20}}
    same = {"loop_busy": 0.405, "device_busy": 0.60, "device_compute_busy": None}
    assert busy_disagreements(report, same) == []  # within the tolerance; None not compared
    off = {"device_busy": 0.60 + 2 * BUSY_TOLERANCE}
    assert busy_disagreements(report, off) == ["device_busy 0.640 in summary.json, 0.600 in report.json"]
    assert busy_disagreements({"evidence": {}}, off) == []  # an older report: nothing to compare
