"""The contract between the producer, the consumer and the diagnosis (docs/formats.md).

- ``simstream.records.contract``: file names, CSV columns, summary.json keys, the
  emit log's keys, the payload's own fields, compression names, thresholds;
- ``simstream.records.run``: the run directory's writer (``RunRecords``) and its
  accounting (``SequenceLedger``);
- ``simstream.records.emitlog``: the emit log's writer and reader;
- ``simstream.records.read``: numpy readers of both (imported on its own: this
  package and the two writers need neither numpy, torch nor pyzmq).
"""

from __future__ import annotations

from simstream.records.contract import *  # noqa: F403
from simstream.records.contract import __all__ as _contract_all
from simstream.records.emitlog import EmitLog, parse_log_lines, read_log
from simstream.records.run import BatchTimes, RunRecords, SequenceLedger

__all__ = [*_contract_all, "BatchTimes", "EmitLog", "RunRecords", "SequenceLedger",
           "parse_log_lines", "read_log"]
