"""The emit log (docs/formats.md): its writer and reader live in simstream.records."""

from __future__ import annotations

from simstream.records.emitlog import LOG_KEYS, OUTCOMES, EmitLog, parse_log_lines, read_log

__all__ = ["LOG_KEYS", "OUTCOMES", "EmitLog", "parse_log_lines", "read_log"]
