"""The consumer's run records: the shared writer of simstream.records (docs/formats.md).

The consumer writes its run directory with the same writer the public probe
(simstream.probe) uses, so the two cannot drift apart.
"""

from __future__ import annotations

from simstream.records.contract import (
    BATCH_COLUMNS,
    BUSY_FIGURES,
    GPU_COLUMNS,
    MESSAGE_COLUMNS,
    Q1_COLUMNS,
    QUARANTINE_HEAD_BYTES,
    STARVATION_UTILISATION,
    busy_label,
)
from simstream.records.run import BatchTimes, Reservoir, RunRecords, SequenceLedger, UnionTracker

__all__ = [
    "BATCH_COLUMNS",
    "BUSY_FIGURES",
    "GPU_COLUMNS",
    "MESSAGE_COLUMNS",
    "QUARANTINE_HEAD_BYTES",
    "Q1_COLUMNS",
    "STARVATION_UTILISATION",
    "BatchTimes",
    "Reservoir",
    "RunRecords",
    "SequenceLedger",
    "UnionTracker",
    "busy_label",
]
