"""docs/formats.md and simstream.records.contract name the same files, columns and keys,
and every side of the project takes them from the contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simstream.records import contract as c
from simstream.records.run import BatchTimes, RunRecords

DOC = Path(__file__).resolve().parent.parent / "docs" / "formats.md"


def _section(heading: str) -> str:
    text = DOC.read_text()
    start = text.index(heading)
    nxt = re.search(r"^#{2,3} ", text[start + len(heading):], re.M)
    return text[start:start + len(heading) + nxt.start()] if nxt else text[start:]


def _first_cells(section: str) -> list[str]:
    """The backticked first cell of each table row of a section."""
    return re.findall(r"^\| `([^`]+)` \|", section, re.M)


def test_emit_log_keys_match_the_doc_in_order() -> None:
    assert tuple(_first_cells(_section("## Emit log"))) == c.EMIT_LOG_KEYS
    outcomes = re.search(r"^\| `outcome` \|.*$", _section("## Emit log"), re.M).group(0)
    assert re.findall(r"`(\w+)` \(", outcomes) == list(c.EMIT_OUTCOMES)


def test_run_directory_files_and_columns_match_the_doc() -> None:
    sec = _section("## Consumer run directory")
    files = _first_cells(sec)
    assert files == [c.SUMMARY_JSON, *c.RUN_CSV_COLUMNS, c.QUARANTINE_DIR + "/"]
    for name, cols in c.RUN_CSV_COLUMNS.items():
        row = re.search(rf"^\| `{re.escape(name)}` \|(.*)$", sec, re.M).group(1)
        listed = [m for m in re.findall(r"`([^`]+)`", row) if "," in m]
        assert listed == [",".join(cols)], (name, listed)
    gpu_row = re.search(r"^\| `gpu.csv` \|(.*)$", sec, re.M).group(1)
    assert f"(`stream`: {', '.join(c.GPU_STREAMS)};" in gpu_row
    msg_row = re.search(r"^\| `messages.csv` \|(.*)$", sec, re.M).group(1)
    assert f"(`status`: {' or '.join(c.MESSAGE_STATUSES)})" in msg_row
    q_row = re.search(r"^\| `quarantine/` \|(.*)$", sec, re.M).group(1)
    meta = re.search(r"`NNNNNN.json` \(([^)]*)\)", q_row).group(1)
    assert re.findall(r"`(\w+)`", meta) == list(c.QUARANTINE_META_KEYS)
    reasons = re.search(r"category \(([^)]*)\)", q_row).group(1)
    assert re.findall(r"`([^`:]+):`", reasons) == list(c.QUARANTINE_REASONS)
    assert f"first {c.QUARANTINE_HEAD_BYTES >> 20} MiB" in q_row


def test_summary_keys_match_the_doc() -> None:
    sec = _section("### `summary.json` keys")
    rows = re.findall(r"^\| `(\w+)` \| ([a-z, ]+) \|(.*)$", sec, re.M)
    assert [k for k, _, _ in rows] == list(c.SUMMARY_KEYS)
    writers = {k: {w.strip() for w in who.split(",")} for k, who, _ in rows}
    assert {k for k, w in writers.items() if "records" in w} == set(c.RECORD_SUMMARY_KEYS)
    assert {k for k, w in writers.items() if "consumer" in w} == set(c.CONSUMER_SUMMARY_KEYS)
    assert {k for k, w in writers.items() if "probe" in w} == set(c.PROBE_SUMMARY_KEYS)
    assert {k for k, w in writers.items() if "run" in w} == set(c.RUN_SUMMARY_KEYS)
    tail = _section("### Loss at the tail")
    assert tuple(_first_cells(tail)) == c.LOST_AT_TAIL_KEYS
    assert f"first {c.LOST_AT_TAIL_LISTED} of them" in tail
    meaning = {k: m for k, _, m in rows}
    for key, sub in (("throughput", c.SUMMARY_THROUGHPUT_KEYS),
                     ("stage_median_ms", c.SUMMARY_STAGE_KEYS), ("q1", c.SUMMARY_Q1_KEYS)):
        assert re.findall(r"`(\w+)`", meaning[key])[:len(sub)] == list(sub), key
    assert f"{round(c.STARVATION_UTILISATION * 100)} %" in meaning["q1"]
    accounting = _section("## Consumer run directory")
    for key in c.SUMMARY_ACCOUNTING_KEYS:
        assert f"`{key}`" in accounting.split("\n| `messages.csv`")[0]


def test_payload_fields_match_the_doc() -> None:
    text = DOC.read_text()
    for name in ("simstream_rank", "simstream_sequence", "simstream_epoch"):
        assert f"`{c.SIMSTREAM_FIELDS[name]}`" in text and f"`{name}`" in text
    # the epoch is where the emit log, messages.csv and the payload meet
    assert "epoch" in c.EMIT_LOG_KEYS and "epoch" in c.MESSAGE_COLUMNS
    assert "### Restarts: the epoch" in text


def test_the_writer_writes_what_the_contract_says(tmp_path: Path) -> None:
    rec = RunRecords(tmp_path)
    rec.arrival(1.0)
    rec.sequence(0, 0, 0)
    fin = type("Fin", (), dict(events=2, buffer=0, t_h2d_start=1.2, t_h2d_end=1.3,
                               t_compute_start=1.3, t_compute_end=1.5, t_d2h_start=1.5,
                               t_d2h_end=1.6))()
    rec.batch_done(BatchTimes(0, 0, 0, 2, 10, 1.0, 1.0, 1.1), fin)
    rec.q1_sample(1.1, 1, 4)
    summary = rec.close({})
    assert tuple(summary) == c.RECORD_SUMMARY_KEYS
    assert tuple(summary["throughput"]) == c.SUMMARY_THROUGHPUT_KEYS
    assert tuple(summary["stage_median_ms"]) == c.SUMMARY_STAGE_KEYS
    assert tuple(summary["q1"]) == c.SUMMARY_Q1_KEYS
    assert json.loads((tmp_path / c.SUMMARY_JSON).read_text())["received"] == 1
    for name, cols in c.RUN_CSV_COLUMNS.items():
        assert (tmp_path / name).read_text().splitlines()[0] == ",".join(cols)
    assert (tmp_path / c.QUARANTINE_DIR).is_dir()


def test_simulated_run_directories_use_the_contract_headers(tmp_path: Path) -> None:
    from simstream.diagnose.simulate import SCENARIOS, Scenario, write_run_dir

    sc = SCENARIOS["consumer"]
    out = write_run_dir(Scenario(**{**sc.__dict__, "duration_s": 0.3}), tmp_path)
    for name, cols in c.RUN_CSV_COLUMNS.items():
        assert (out / name).read_text().splitlines()[0] == ",".join(cols)
    rows = (out / c.GPU_CSV).read_text().splitlines()[1:]
    assert rows and all(len(r.split(",")) == len(c.GPU_COLUMNS) for r in rows)


@pytest.mark.parametrize(("module", "name", "contract_name"), [
    ("simstream.pipeline.records", "BATCH_COLUMNS", "BATCH_COLUMNS"),
    ("simstream.pipeline.records", "STARVATION_UTILISATION", "STARVATION_UTILISATION"),
    ("simstream.pipeline.inference", "STARVATION_UTILISATION", "STARVATION_UTILISATION"),
    ("simstream.diagnose.evidence", "STARVATION_UTILISATION", "STARVATION_UTILISATION"),
    ("simstream.diagnose.load", "BATCH_COLUMNS", "BATCH_COLUMNS"),
    ("simstream.emitter.log", "LOG_KEYS", "EMIT_LOG_KEYS"),
    ("simstream.payload", "SIMSTREAM_FIELDS", "SIMSTREAM_FIELDS"),
    ("simstream.profile", "COMPRESSIONS", "COMPRESSIONS"),
    ("simstream.codec", "COMPRESSIONS", "COMPRESSIONS"),
])
def test_one_definition_imported_everywhere(module: str, name: str, contract_name: str) -> None:
    import importlib

    assert getattr(importlib.import_module(module), name) is getattr(c, contract_name)


def test_the_contract_and_the_writers_import_without_numpy_torch_or_pyzmq() -> None:
    code = ("import sys, simstream.records, simstream.probe; "
            "print(sorted(m for m in ('numpy', 'torch', 'zmq') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_busy_figures_match_the_doc_both_ways() -> None:
    """Each busy figure is defined once, in the contract, and the page gives the same
    keys, words and definitions; summary.json and the consumer's lines use them."""
    rows = re.findall(r"^\| `(\w+)` \| ([a-z ]+) \| (.*) \|$", _section("### Busy figures"), re.M)
    assert {k: (w, d) for k, w, d in rows} == c.BUSY_FIGURES
    assert set(c.BUSY_FIGURES) <= set(c.RECORD_SUMMARY_KEYS)
    assert c.busy_label("device_busy", "cpu") == "device busy (cpu)"
    assert c.busy_label("loop_busy", "cpu") == "inference loop busy"
    assert c.busy_label("device_compute_busy") == "device compute busy"
