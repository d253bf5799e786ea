# Layout: load (read a run directory) -> evidence (figures from measurements)
# -> verdict (decision logic, recommendations, summary) -> report (report.json,
# report.md, report.html; compare_report for random vs socket), with plots
# (matplotlib PNGs) and trace (Chrome trace / Perfetto). simulate writes run
# directories with a known bottleneck; cli is `simstream diagnose`.
"""Diagnose a run directory: the verdict, its evidence, the report and a trace."""

from __future__ import annotations

from simstream.diagnose.load import NotARunDir, RunData, load_run
from simstream.diagnose.report import compare_report, diagnose_run

__all__ = ["NotARunDir", "RunData", "compare_report", "diagnose_run", "load_run"]
