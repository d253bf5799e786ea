"""What the producer, the consumer and the diagnosis agree on, defined once.

docs/formats.md describes these files; tests/test_records_contract.py checks that
every file, column and key the page names is here and the other way round.
Nothing here imports numpy, torch or pyzmq: a consumer of any kind can import it.
"""

from __future__ import annotations

__all__ = [
    "BATCH_COLUMNS",
    "BATCHES_CSV",
    "BUSY_FIGURES",
    "COMPRESSIONS",
    "CONSUMER_SUMMARY_KEYS",
    "EMIT_LOG",
    "EMIT_LOG_HOSTS",
    "EMIT_LOG_KEYS",
    "EMIT_OUTCOMES",
    "GPU_COLUMNS",
    "GPU_CSV",
    "GPU_STREAMS",
    "MESSAGE_COLUMNS",
    "MESSAGE_STATUSES",
    "MESSAGES_CSV",
    "Q1_COLUMNS",
    "Q1_CSV",
    "PROBE_SUMMARY_KEYS",
    "Q1_HIGH_SHARE",
    "LOST_AT_TAIL_KEYS",
    "LOST_AT_TAIL_LISTED",
    "QUARANTINE_DIR",
    "QUARANTINE_HEAD_BYTES",
    "QUARANTINE_META_KEYS",
    "QUARANTINE_REASONS",
    "RECORD_SUMMARY_KEYS",
    "RUN_SUMMARY_KEYS",
    "RUN_CSV_COLUMNS",
    "SIMSTREAM_FIELDS",
    "STAGES",
    "STARVATION_UTILISATION",
    "SUMMARY_ACCOUNTING_KEYS",
    "SUMMARY_JSON",
    "SUMMARY_KEYS",
    "SUMMARY_Q1_KEYS",
    "SUMMARY_STAGE_KEYS",
    "SUMMARY_THROUGHPUT_KEYS",
    "busy_label",
    "field_keys",
]

# -- the run directory (one consumer run) ----------------------------------------------
SUMMARY_JSON = "summary.json"
MESSAGES_CSV = "messages.csv"
BATCHES_CSV = "batches.csv"
Q1_CSV = "q1.csv"
GPU_CSV = "gpu.csv"
QUARANTINE_DIR = "quarantine"
EMIT_LOG = "emit.jsonl"  # in a `simstream run` directory: the emitter's log
# one emit log per emitter host (the compose testbed); the diagnosis merges them
# into EMIT_LOG in time order when that is absent
EMIT_LOG_HOSTS = "emit-*.jsonl"

MESSAGE_COLUMNS = ("index", "rank", "seq", "nbytes", "t_arrival", "status", "reason", "epoch")
MESSAGE_STATUSES = ("processed", "quarantined")
BATCH_COLUMNS = (
    "index", "rank", "seq", "events", "nbytes", "t_arrival", "t_parse_start", "t_parse_end",
    "t_q1_put_start", "t_q1_put_end", "t_q1_get_start", "t_q1_get_end", "buffer",
    "t_h2d_start", "t_h2d_end", "t_compute_start", "t_compute_end", "t_d2h_start", "t_d2h_end",
)
Q1_COLUMNS = ("t", "depth", "maxsize")
GPU_COLUMNS = ("stream", "buffer", "batch_index", "t_start", "t_end", "device")
GPU_STREAMS = ("h2d", "compute", "d2h")  # gpu.csv's ``stream`` values, in this order
RUN_CSV_COLUMNS = {
    MESSAGES_CSV: MESSAGE_COLUMNS,
    BATCHES_CSV: BATCH_COLUMNS,
    Q1_CSV: Q1_COLUMNS,
    GPU_CSV: GPU_COLUMNS,
}

#: a quarantined message: quarantine/NNNNNN.bin (its bytes) and NNNNNN.json (these keys)
QUARANTINE_META_KEYS = ("reason", "nbytes", "saved_bytes", "t_arrival", "rank", "seq")
#: the category a quarantine reason starts with
QUARANTINE_REASONS = ("codec", "missing field", "shape", "oversize")
#: bytes of an oversize message kept in quarantine/ (the rest is not worth the disk)
QUARANTINE_HEAD_BYTES = 1 << 20

#: the stages a batch passes through, in order; each has t_<stage>_start/_end in batches.csv
STAGES = ("parse", "q1_put", "q1_get", "h2d", "compute", "d2h")

# -- summary.json ----------------------------------------------------------------------
#: the accounting contract: received = processed + quarantined
SUMMARY_ACCOUNTING_KEYS = ("received", "processed", "quarantined", "lost", "duplicated",
                           "reordered")
#: every key the run records write (simstream.records.RunRecords.close, the probe too)
RECORD_SUMMARY_KEYS = (
    *SUMMARY_ACCOUNTING_KEYS,
    "accounting_ok", "accounting_problems", "seq_out_of_window", "messages_with_seq",
    "messages_without_seq", "quarantine_reasons", "quarantine_saved", "quarantine_not_saved",
    "disk_error", "disk_errors", "batches", "samples", "bytes", "first_arrival", "last_arrival", "last_finish", "active_s",
    "throughput", "gpu_busy_fraction", "gpu_busy_by_device", "loop_busy", "device_busy",
    "device_compute_busy", "compute_s", "stage_median_ms", "q1", "per_rank",
)
#: keys the in-process and Ray consumers add (pipeline/)
CONSUMER_SUMMARY_KEYS = (
    "wall_s", "t_start", "t_end", "end_reason", "device", "device_description", "mode",
    "transport", "url", "urls", "role", "parse_in", "queue_backend", "ray_address", "buffers",
    "model", "backpressure_events", "receiver", "starvation_warnings", "clock_error_s",
    "host_pool", "config", "ray",
)
#: keys the probe adds (simstream.probe)
PROBE_SUMMARY_KEYS = ("wall_s", "t_start", "t_end", "mode", "device", "stages_seen")
#: keys `simstream run` adds once both ends are done, reconciling the emit log
RUN_SUMMARY_KEYS = ("lost_at_tail",)
SUMMARY_KEYS = tuple(dict.fromkeys((*RECORD_SUMMARY_KEYS, *CONSUMER_SUMMARY_KEYS,
                                    *PROBE_SUMMARY_KEYS, *RUN_SUMMARY_KEYS)))
#: summary.json's and report.json's ``lost_at_tail`` block (simstream.records.tail)
LOST_AT_TAIL_KEYS = ("count", "by_rank", "messages", "logged_at_close", "not_logged",
                     "logged_not_at_tail")
#: at most this many lost messages are listed in ``lost_at_tail.messages``
LOST_AT_TAIL_LISTED = 100
SUMMARY_THROUGHPUT_KEYS = ("batches_per_s", "samples_per_s", "mb_per_s")
SUMMARY_STAGE_KEYS = ("parse", "q1_put", "q1_wait", "q1_get", "h2d", "compute", "d2h", "latency")
SUMMARY_Q1_KEYS = ("samples", "maxsize", "mean_occupancy", "share_empty", "share_under_30",
                   "share_over_80")

# -- busy figures ----------------------------------------------------------------------
#: The busy figures, each defined here once: its key (in summary.json, report.json's
#: evidence and the consumer's records), the words the report, the consumer's log
#: and `simstream consume`'s summary print for it, and what it measures. Every one
#: is a share of the run's active span: from the first arrival to the last batch's
#: finish (summary.json ``active_s``).
BUSY_FIGURES: dict[str, tuple[str, str]] = {
    "loop_busy": (
        "inference loop busy",
        "the share of the active span in which the inference loop was not waiting on "
        "an empty Q1 (its Q1 gets' waits for a batch to be put, as a union, taken away); "
        "the loop's work is the Q1 get's own cost, any parsing in the loop, H2D, "
        "compute and D2H"),
    "device_busy": (
        "device busy",
        "the share of the active span in which the inference device (a GPU, or the "
        "host's threads on a CPU run) worked on any of its streams: H2D, compute or D2H "
        "(the union of gpu.csv's intervals); with several inference devices, the mean "
        "of each one's share"),
    "device_compute_busy": (
        "device compute busy",
        "the same for the compute stream alone (the older key gpu_busy_fraction, kept, "
        "has the same value)"),
}


def busy_label(key: str, device: str | None = None) -> str:
    """The words for busy figure ``key``, with the device named where it is known:
    ``device busy (cpu)``, ``device compute busy (cuda:0)``, ``inference loop busy``."""
    words = BUSY_FIGURES[key][0]
    if device and key.startswith("device"):
        return f"{words} ({device})"
    return words


# -- thresholds ------------------------------------------------------------------------
#: Q1 below this share of its capacity: "potential data starvation" (the seed's 30 %)
STARVATION_UTILISATION = 0.30
#: Q1 above this share of its capacity counts as full (summary q1.share_over_80)
Q1_HIGH_SHARE = 0.80

# -- the emit log (simstream emit --log) ------------------------------------------------
EMIT_LOG_KEYS = (
    "rank", "seq", "phase", "t_sched", "t_first_byte", "t_last_byte", "nbytes",
    "wire_bytes", "events", "blocked_s", "hwm_wait_s", "socket_wait_s", "faults", "outcome", "url",
    "at_close", "epoch",
)
EMIT_OUTCOMES = ("delivered", "cut", "lost")

# -- the payload -----------------------------------------------------------------------
#: simstream's own per-message fields: name (= npz key) -> HDF5 dataset path
SIMSTREAM_FIELDS = {
    "simstream_sequence": "/simstream/sequence",
    "simstream_rank": "/simstream/rank",
    "simstream_event": "/simstream/event",
    # the emitter's start id: a restarted emitter's ranks begin new sequence spaces
    "simstream_epoch": "/simstream/epoch",
}
#: compression names of source.compression and simstream.codec.encode
COMPRESSIONS = ("none", "gzip", "gzip_with_shuffle", "bitshuffle_lz4", "bitshuffle_zstd")


def field_keys(name: str) -> tuple[str, str]:
    """Where a simstream field sits in a decoded message (``simstream.codec.decode``'s
    keys): (the HDF5 dataset path without its leading slash, the npz key)."""
    return SIMSTREAM_FIELDS[name].strip("/"), name
