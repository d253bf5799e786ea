"""The profile: one YAML file that scripts an experiment.

The key names are a public contract (README, issue tracker, outside checks):
additions are welcome, renames are not. Units live in the names. A profile is
validated once, at load; every later stage trusts it.

Errors name the YAML path, the value and what is allowed, e.g.
``timeline.phases[1].rate_hz: -3 is not >= 0``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from simstream.records.contract import COMPRESSIONS

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_URL",
    "DTYPES",
    "FAULT_KINDS",
    "HOST_FAULT_KINDS",
    "MODEL_KINDS",
    "MODEL_SPECS",
    "TARGET_CONSUMERS",
    "ConsumerConfig",
    "Fault",
    "NetworkConditions",
    "NoopModelSpec",
    "NetworkOverride",
    "PeakNetModelSpec",
    "Phase",
    "Profile",
    "ProfileError",
    "QueueConfig",
    "RandomConfig",
    "RayConfig",
    "Source",
    "Stop",
    "SyntheticModelSpec",
    "Timeline",
    "Transport",
    "bundled_profiles",
    "container_fault_warnings",
    "consumer_defaults",
    "dump_profile",
    "find_profile",
    "load_profile",
    "merge_consumer",
    "parse_profile",
    "profile_schema",
]

DTYPES = (
    "float16",
    "float32",
    "float64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
)
FAULT_KINDS = ("reset", "truncate", "corrupt", "stall", "duplicate", "slow_close")
#: container-level faults: applied from the host by `simstream testbed docker up` to an
#: emitter replica's container (docker network disconnect, pause, kill); the emitter
#: itself and the namespace testbed cannot apply them and say so
HOST_FAULT_KINDS = ("link_cut", "host_pause", "host_kill")
TARGET_CONSUMERS = ("simstream", "peaknet-pipeline-ray")
TRIGGERS = ("at_message", "every_messages", "at_s", "every_s", "probability")

# source.max_message_bytes' default: what the consumer accepts by default
DEFAULT_MAX_MESSAGE_BYTES = 2 << 30
# a profile's YAML may not expand (aliases followed) to more values than this: an
# alias bomb is refused before anything walks the expanded tree
MAX_YAML_NODES = 100_000

DEFAULT_FIELDS = {
    "detector_data": "/data/data",
    "timestamp": "/data/timestamp",
    "photon_wavelength": "/data/wavelength",
}

_URL_RE = re.compile(r"^tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.*-]+):(\d{1,5})$")


class ProfileError(ValueError):
    """A profile (or a flag overriding one) is invalid; ``str()`` is the user message."""

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"invalid profile {source}" if source else "invalid profile"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Source(_Model):
    """What LCLStreamer would send: batches of detector events."""

    batch_size: int = Field(8, ge=1, description="events per message")
    shape: list[int] = Field(
        default_factory=lambda: [1, 512, 512],
        min_length=1,
        max_length=4,
        description="per-event array shape of the detector data",
    )
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    content: Literal["random", "peaks", "constant", "replay"] = "peaks"
    replay_path: str | list[str] | None = Field(
        None, description="HDF5/npz file(s) to replay when content: replay (regular files)"
    )
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, ge=1,
        description="bound on one message's detector data (batch_size x shape x dtype), "
        "checked at validation; raise it for messages this big on purpose",
    )
    format: Literal["hdf5", "npz"] = "hdf5"
    compression: Literal[COMPRESSIONS] = "none"  # type: ignore[valid-type]
    compression_level: int = Field(3, ge=0, le=22)
    fields: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_FIELDS),
        description="data source name -> dataset path (hdf5) or key (npz)",
    )
    total_events: int | None = Field(
        4000, ge=1, description="per rank; null = endless; a final partial batch is sent"
    )
    pool: int | None = Field(
        None, ge=1, description="pre-encode N batches and cycle them, rewriting per-message fields"
    )
    peaks_per_event: int = Field(30, ge=0, description="Bragg-like spots per event (content: peaks)")
    scalars: dict[str, int | float] = Field(
        default_factory=dict,
        description="values of extra per-event scalar fields (LCLStreamer IntValue/FloatValue); "
        "int -> int64, float -> float64",
    )
    pad_from: list[int] | None = Field(
        None, min_length=2, max_length=2,
        description="[H, W] of the detector images before padding (LCLStreamer's "
        "PeaknetPreprocessingPipeline): content is made at this size and zero-padded to "
        "shape's last two dimensions; null = no padding",
    )
    pad_style: Literal["center", "bottom-right"] = Field(
        "center", description="where the padding goes (pad_from): center | bottom-right"
    )
    timestamp: Literal["clock", "random"] = Field(
        "clock", description="clock = a fixed epoch + event / 120 Hz; random = uniform in "
        "[1.6e9, 1.7e9) s per event (LCLStreamer's GenericRandomTimestamp)",
    )
    wavelength: Literal["steady", "random"] = Field(
        "steady", description="steady = ~1.30 A with a small spread; random = uniform in "
        "[0.1, 10) A per event (LCLStreamer's GenericRandomWavelength)",
    )

    @field_validator("shape")
    @classmethod
    def _positive_dims(cls, v: list[int]) -> list[int]:
        for i, d in enumerate(v):
            if d < 1:
                raise ValueError(f"shape[{i}] = {d} is not >= 1")
        return v

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        if "detector_data" not in v:
            raise ValueError("must name the detector_data source")
        seen: dict[str, str] = {}
        for name, path in v.items():
            if not name or not path:
                raise ValueError("field names and paths must be non-empty")
            if path in seen:
                raise ValueError(f"{name!r} and {seen[path]!r} share the path {path!r}")
            seen[path] = name
        return v

    @field_validator("replay_path")
    @classmethod
    def _regular_files(cls, v: str | list[str] | None) -> str | list[str] | None:
        # stat only (never open): a FIFO named here would block whoever opens it
        for p in [v] if isinstance(v, str) else (v or []):
            try:
                st = os.stat(p)
            except OSError:
                continue  # a missing file is reported when the replay opens it
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{_short(p)} is {_file_kind(st.st_mode)}, not a regular file")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Source:
        if self.content == "replay" and not self.replay_path:
            raise ValueError("content: replay needs replay_path")
        per_message = self.batch_size * math.prod(self.shape) * _itemsize(self.dtype)
        if per_message > self.max_message_bytes:
            raise ValueError(
                f"one message would hold {per_message} bytes of detector data (batch_size "
                f"{self.batch_size} x shape {self.shape} x {self.dtype}), more than "
                f"max_message_bytes {self.max_message_bytes}; set source.max_message_bytes "
                f"higher if you mean it")
        if self.compression in ("gzip", "gzip_with_shuffle") and self.compression_level > 9:
            raise ValueError(f"compression_level {self.compression_level} is not <= 9 for gzip")
        if self.format == "npz" and self.compression not in ("none", "gzip"):
            raise ValueError(
                f"format npz supports compression none or gzip (savez_compressed), "
                f"not {self.compression!r}"
            )
        if self.pad_from is not None:
            h, w = self.pad_from
            if len(self.shape) < 2:
                raise ValueError("pad_from needs a shape with at least two dimensions")
            if not (1 <= h <= self.shape[-2] and 1 <= w <= self.shape[-1]):
                raise ValueError(
                    f"pad_from {self.pad_from} does not fit the padded images "
                    f"{self.shape[-2]}x{self.shape[-1]} (shape's last two dimensions)"
                )
        return self

    @property
    def event_nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        import numpy as np

        return n * np.dtype(self.dtype).itemsize


class Transport(_Model):
    """How the emitter reaches the consumer (LCLStreamer's BinaryDataStreamingDataHandler)."""

    kind: Literal["zmq", "nng", "tcp"] = "zmq"
    role: Literal["client", "server"] = Field(
        "client", description="client = connect (LCLStreamer's usual role) | server = bind"
    )
    url: str = "tcp://127.0.0.1:12321"
    urls: list[str] | None = Field(
        None, description="several addresses, used as url_spread says"
    )
    url_spread: Literal["rank", "message"] = Field(
        "rank", description="rank = each rank uses one of urls (round robin over ranks); "
        "message = every rank uses all urls and sends its messages over them in turn "
        "(one ZMQ PUSH socket on several endpoints, as LCLStreamer does)",
    )
    close: Literal["graceful", "abrupt"] = Field(
        "graceful", description="at the end of the stream: graceful = queued messages are "
        "sent first (within the drain time-out); abrupt = the socket closes at once and "
        "messages still queued are lost (LCLStreamer's LINGER 0)",
    )
    sndhwm: int = Field(5, ge=1, description="messages queued for a peer that is not reading")
    ranks: int = Field(1, ge=1, le=1024, description="independent connections, one per MPI rank")
    rank_offset: int = Field(
        0, ge=0, description="MPI rank id of this emitter's first rank: its ranks are "
        "rank_offset..rank_offset+ranks-1 (rank ids go into the payload and the emit log)"
    )
    processes: int = Field(
        1, ge=1, description="emitter processes the ranks are split over (each runs its share "
        "of the ranks in its own process; an aggregate bandwidth cap is split evenly over "
        "them); at most ranks"
    )
    connect_timeout_s: float = Field(30.0, gt=0, description="give up on an unreachable peer")
    reconnect_backoff_ms: list[float] = Field(
        default_factory=lambda: [100.0, 5000.0],
        min_length=2,
        max_length=2,
        description="[first, max] reconnect backoff, doubled per attempt",
    )
    dead_link_ms: float | None = Field(
        None, gt=0, description="drop and re-establish a connection whose peer has "
        "answered nothing (retransmissions, zero-window or keepalive probes) this long: "
        "a cut link then ends in a real disconnect and reconnect; a consumer that keeps "
        "answering with a shut window (backpressure) is never dropped; None: TCP's own "
        "time-outs (many minutes)",
    )
    sndbuf_bytes: int | None = Field(
        None, gt=0, description="the kernel send buffer of each connection (SO_SNDBUF; "
        "Linux doubles it for its bookkeeping and caps it at net.core.wmem_max): a large "
        "one lets a fast sender run on while the consumer drains; None: the kernel's "
        "autotuning, as libzmq's default (LCLStreamer) leaves it",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        _check_url(v)
        return v

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("urls must not be empty (use null)")
            for u in v:
                _check_url(u)
        return v

    @field_validator("processes")
    @classmethod
    def _processes(cls, v: int, info: ValidationInfo) -> int:
        ranks = info.data.get("ranks")
        if ranks is not None and v > ranks:
            raise ValueError(f"{v} is not <= transport.ranks ({ranks}): "
                             f"each process runs at least one rank")
        return v

    @model_validator(mode="after")
    def _role_url(self) -> Transport:
        if self.url_spread == "message" and self.role == "server" and self.ranks > 1:
            raise ValueError(
                "url_spread message with role server binds every url in each rank: "
                "use one rank, role client, or url_spread rank"
            )
        if (self.role == "server" and self.ranks > 1 and self.url_spread == "rank"
                and len(self.all_urls) < self.ranks):
            raise ValueError(
                f"role server with {self.ranks} ranks needs {self.ranks} addresses in "
                f"transport.urls (each rank binds its own), got {len(self.all_urls)}"
            )
        for u in self.all_urls:
            host = _URL_RE.match(u).group(1)  # type: ignore[union-attr]
            if self.role == "client" and host in ("*", "0.0.0.0", "[::]"):
                raise ValueError(f"role client cannot connect to the wildcard address in {u!r}")
        return self

    @property
    def all_urls(self) -> list[str]:
        return list(self.urls) if self.urls else [self.url]


def _check_url(v: str) -> None:
    m = _URL_RE.match(v)
    if not m:
        raise ValueError(f"{v!r} is not a tcp://HOST:PORT address")
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} in {v!r} is not in 1..65535")


def split_url(url: str) -> tuple[str, int]:
    """``tcp://host:port`` -> (host, port); IPv6 brackets removed."""
    m = _URL_RE.match(url)
    if not m:
        raise ValueError(f"{url!r} is not a tcp://HOST:PORT address")
    return m.group(1).strip("[]"), int(m.group(2))


JitterDistribution = Literal["uniform", "normal", "pareto", "paretonormal"]


class BurstLoss(_Model):
    """Gilbert-Elliott burst loss, netem's ``loss gemodel`` parameters in percent."""

    p_pct: float = Field(..., ge=0, le=100, description="good -> bad, per packet")
    r_pct: float = Field(..., gt=0, le=100, description="bad -> good, per packet")
    bad_loss_pct: float = Field(100.0, ge=0, le=100, description="loss in the bad state")
    good_loss_pct: float = Field(0.0, ge=0, le=100, description="loss in the good state")


class NetworkConditions(_Model):
    """Base network conditions; in user space unless kernel shaping is asked for."""

    latency_ms: float = Field(0.0, ge=0, description="one-way delay added before each message")
    jitter_ms: float = Field(0.0, ge=0, description="spread of the delay (netem's jitter)")
    jitter_distribution: JitterDistribution = "normal"
    bandwidth_mbps: float | None = Field(
        None, gt=0, description="megabits per second (10^6 bit/s); null = uncapped"
    )
    bandwidth_scope: Literal["per_rank", "aggregate"] = Field(
        "per_rank", description="the cap applies to each rank, or to all ranks together"
    )
    # Packet-level conditions: applied by kernel shaping only (tc's netem, or the
    # user-space link emulator), never by the emitter, which sends messages, not packets.
    loss_pct: float = Field(
        0.0, ge=0, le=100, description="random packet loss, producer to consumer (kernel shaping)"
    )
    loss_burst: BurstLoss | None = Field(
        None, description="Gilbert-Elliott burst loss instead of loss_pct (user-link emulator)"
    )
    reorder: bool = Field(
        False, description="jitter may reorder packets (user-link; netem reorders by itself)"
    )
    queue_packets: int | None = Field(
        None, ge=1, description="drop-tail queue limit in packets before the rate cap (user-link)"
    )
    queue_bytes: int | None = Field(
        None, ge=1, description="drop-tail queue limit in bytes before the rate cap (user-link)"
    )
    trace: str | None = Field(
        None, description="throughput trace to replay instead of bandwidth_mbps (user-link): "
        "mahimahi's delivery-opportunity format, or a .csv of time_s,mbps"
    )
    emulator: Literal["tc", "user-link", "auto"] = Field(
        "auto", description="who shapes under kernel shaping: tc qdiscs, the user-space link "
        "emulator, or auto (user-link when netem is missing and latency, jitter or loss are "
        "asked, or a user-link-only key is set)"
    )


    @field_validator("trace")
    @classmethod
    def _trace_is_a_file(cls, v: str | None) -> str | None:
        # stat only, as replay_path: the content is parsed when a testbed starts
        if v is not None:
            try:
                st = os.stat(v)
            except OSError:
                return v  # reported, with the reason, when the link emulator reads it
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{_short(v)} is {_file_kind(st.st_mode)}, not a regular file")
        return v


class NetworkOverride(_Model):
    """Per-phase overrides of the base network conditions (unset = inherit)."""

    latency_ms: float | None = Field(None, ge=0)
    jitter_ms: float | None = Field(None, ge=0)
    jitter_distribution: JitterDistribution | None = None
    bandwidth_mbps: float | None = Field(None, gt=0)
    loss_pct: float | None = Field(None, ge=0, le=100)


class Phase(_Model):
    name: str = "steady"
    duration_s: float | None = Field(
        None, gt=0, description="null = lasts until the stop condition"
    )
    rate_hz: float | None = Field(
        None, ge=0, description="messages per second per rank; null = as fast as possible"
    )
    network: NetworkOverride | None = None


class Timeline(_Model):
    repeat: bool = True
    phases: list[Phase] = Field(default_factory=lambda: [Phase()], min_length=1)

    @model_validator(mode="after")
    def _open_ended_last(self) -> Timeline:
        for i, ph in enumerate(self.phases[:-1]):
            if ph.duration_s is None:
                raise ValueError(f"phases[{i}] has no duration_s but is not the last phase")
        if self.repeat and self.phases[-1].duration_s is None and len(self.phases) > 1:
            raise ValueError("repeat: true needs a duration_s on every phase")
        return self


class Fault(_Model):
    """A message- or time-triggered fault, or a container-level (host) fault.

    Triggers: ``at_message`` (sequence number, per rank), ``every_messages``,
    ``at_s`` / ``every_s`` (seconds since the start of the run) and
    ``probability`` (0..1). With only ``probability`` the fault strikes each
    message with that chance; with another trigger too, each triggering
    occurrence strikes with that chance.

    Host faults (``link_cut``, ``host_pause``, ``host_kill``) act on the
    container of emitter ``replica`` (compose service ``emitter-N``) at ``at_s``
    seconds after both emitters' first message, the same clock as
    ``simstream testbed docker up --fault``; only that driver applies them.
    """

    kind: Literal[FAULT_KINDS + HOST_FAULT_KINDS]  # type: ignore[valid-type]
    at_message: int | None = Field(None, ge=0)
    every_messages: int | None = Field(None, ge=1)
    at_s: float | None = Field(None, ge=0)
    every_s: float | None = Field(None, gt=0)
    probability: float | None = Field(None, ge=0, le=1)
    duration_ms: float | None = Field(
        None, ge=0, description="stall: silence; slow_close: how long the close takes"
    )
    fraction: float | None = Field(
        None, gt=0, lt=1, description="truncate: share of the message sent before the reset"
    )
    nbytes: int | None = Field(None, ge=1, description="corrupt: bytes flipped in the payload")
    rank: int | None = Field(None, ge=0, description="only this rank; null = every rank")
    replica: int | None = Field(
        None, ge=0, description="link_cut, host_pause, host_kill: the emitter replica whose "
        "container is hit (compose service emitter-N)"
    )
    duration_s: float | None = Field(
        None, gt=0, description="link_cut: seconds disconnected; host_pause: seconds frozen"
    )
    restart_after_s: float | None = Field(
        None, gt=0, description="host_kill: seconds until the killed container is started again"
    )

    @property
    def is_host_fault(self) -> bool:
        return self.kind in HOST_FAULT_KINDS

    def describe(self) -> str:
        """One line for warnings: the kind, its target and its time."""
        if not self.is_host_fault:
            return str(self.kind)
        span = (f"restart after {self.restart_after_s:g} s" if self.kind == "host_kill"
                else f"for {self.duration_s:g} s")
        return f"{self.kind} emitter-{self.replica} at +{self.at_s:g} s {span}"

    @model_validator(mode="after")
    def _trigger(self) -> Fault:
        if self.is_host_fault:
            return self._host()
        if all(getattr(self, t) is None for t in TRIGGERS):
            raise ValueError(f"fault {self.kind!r} needs a trigger: one of {', '.join(TRIGGERS)}")
        if self.kind == "stall" and self.duration_ms is None:
            raise ValueError("fault 'stall' needs duration_ms")
        for attr, kinds in (
            ("fraction", ("truncate",)),
            ("nbytes", ("corrupt",)),
            ("duration_ms", ("stall", "slow_close")),
            ("replica", HOST_FAULT_KINDS),
            ("duration_s", ("link_cut", "host_pause")),
            ("restart_after_s", ("host_kill",)),
        ):
            if getattr(self, attr) is not None and self.kind not in kinds:
                raise ValueError(f"{attr} does not apply to fault {self.kind!r}")
        return self

    def _host(self) -> Fault:
        kind = self.kind
        span = "restart_after_s" if kind == "host_kill" else "duration_s"
        missing = [a for a in ("at_s", "replica", span) if getattr(self, a) is None]
        if missing:
            raise ValueError(f"container fault {kind!r} needs {', '.join(missing)} "
                             f"(e.g. {{kind: {kind}, replica: 1, at_s: 3, {span}: 2}})")
        other = "duration_s" if kind == "host_kill" else "restart_after_s"
        extra = [a for a in ("at_message", "every_messages", "every_s", "probability",
                             "duration_ms", "fraction", "nbytes", "rank", other)
                 if getattr(self, a) is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} does not apply to container fault {kind!r} "
                             f"(it takes at_s, replica and {span})")
        return self

    @property
    def hold_s(self) -> float:
        """A host fault's span: how long until it is undone."""
        value = self.restart_after_s if self.kind == "host_kill" else self.duration_s
        return float(value or 0.0)


class Stop(_Model):
    messages: int | None = Field(None, ge=1, description="per rank")
    duration_s: float | None = Field(None, gt=0)


# --------------------------------------------------------------------------
# the consumer (read by pipeline/; typed here so a profile is checked whole at load)

DEFAULT_URL = "tcp://127.0.0.1:12321"
_GIB = 1024**3


class SyntheticModelSpec(_Model):
    """A stand-in that occupies the compute stage for a set time (no weights)."""

    kind: Literal["synthetic"] = "synthetic"
    compute_ms: float = Field(10.0, ge=0, description="per batch")
    compute_ms_per_event: float = Field(0.0, ge=0, description="added per event of the batch")


class NoopModelSpec(_Model):
    """Does (almost) nothing: measures the executor, not a network."""

    kind: Literal["noop"] = "noop"
    probe: int = Field(16, ge=1, description="values per event read (a real data dependency)")


class PeakNetModelSpec(_Model):
    """PeakNet (ConvNeXt + BiFPN) of a preset size, each preset value overridable."""

    kind: Literal["peaknet"] = "peaknet"
    size: Literal["tiny", "small", "base", "production"] = "tiny"
    dims: list[int] | None = Field(None, description="channels per stage (None: the size's)")
    depths: list[int] | None = Field(None, description="blocks per stage (None: the size's)")
    bifpn_channels: int | None = Field(None, ge=1, description="None: the size's")
    bifpn_layers: int | None = Field(None, ge=1, description="None: the size's")
    in_channels: int = Field(1, ge=1)
    num_classes: int = Field(2, ge=1)
    seed: int = Field(0, description="random weights drawn from this")
    weights_path: str | None = Field(None, description="a state dict to load instead")


MODEL_SPECS: dict[str, type[BaseModel]] = {
    "synthetic": SyntheticModelSpec, "noop": NoopModelSpec, "peaknet": PeakNetModelSpec,
}
MODEL_KINDS = tuple(MODEL_SPECS)
_MODEL_UNION = SyntheticModelSpec | NoopModelSpec | PeakNetModelSpec
ModelSpec = Annotated[_MODEL_UNION, Field(discriminator="kind")]


class QueueConfig(_Model):
    """Q1, the bounded queue between parse and inference (counted in batches)."""

    maxsize: int = Field(16, ge=1, description="batches")
    backend: Literal["local", "process", "ray"] = Field(
        "local", description="local = in-process; process = sharded queue in another process; "
        "ray = sharded queue of Ray actors (needs the ray extra)"
    )
    shards: int = Field(4, ge=1, le=256, description="process and ray backends: shard count")
    poll_interval_ms: float = Field(
        10.0, ge=0,
        description="process and ray backends: sleep between empty sweeps of the shards",
    )
    sample_interval_ms: float = Field(100.0, gt=0, description="occupancy sampling period")


class RayConfig(_Model):
    """Where Ray runs when a stage uses it (``queue.backend: ray``)."""

    address: str | None = Field(
        None, description="None = start a local instance for the run; auto | HOST:PORT | "
        "ray://HOST:PORT = attach to a running cluster"
    )
    num_cpus: int = Field(1, ge=1, le=256, description="CPUs of a local instance")
    actors: bool = Field(
        True, description="queue.backend ray in socket mode: receivers and inference run as "
        "Ray actors (production's layout); false = only Q1 on Ray, the receiver and "
        "inference threads in the consumer process")
    inference_actors: int | None = Field(
        None, ge=1, le=1024,
        description="inference actors (each takes one GPU when the device is cuda); "
        "None = one per GPU of the cluster, or one on CPU",
    )
    q1_items: Literal["ref", "value"] = Field(
        "ref", description="how a batch crosses the Ray Q1 shards: ref = its array is put "
        "into the object store once and the item carries the reference (production's "
        "ObjectRef mode, as its socket producer does); value = the whole batch travels "
        "through the shard actor, serialised on the put and again on the get")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None or v == "auto":
            return v
        rest = v[len("ray://"):] if v.startswith("ray://") else v
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{v!r} is not auto, HOST:PORT or ray://HOST:PORT")
        return v


class RandomConfig(_Model):
    """Random mode's batches (default: the profile's source)."""

    batch_size: int = Field(8, ge=1)
    shape: list[int] = Field(default_factory=lambda: [1, 512, 512], min_length=1, max_length=4)
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    fresh: bool = Field(
        False, description="draw every batch with torch.randn (else copy one of a few drawn once)"
    )

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        for i, d in enumerate(v):
            if d < 1:
                raise ValueError(f"shape[{i}] = {d} is not >= 1")
        return v


class ConsumerConfig(_Model):
    """One consumer run. Times in seconds unless the name says otherwise."""

    mode: Literal["socket", "random"] = "socket"
    layout: Literal["production", "fast"] = Field(
        "production",
        description="production = one socket and receiver thread, a parser pool and an "
        "in-order feeder into Q1, as production receives (what diagnosis reproduces); "
        "fast = one socket and receiver thread per bind address, large kernel receive "
        "buffers, each zmq message read once into the engine's host buffers and decoded "
        "there in place by parser threads, put into an in-process Q1 as they finish "
        "(queue.backend local; with ray and ray.actors, each inference actor runs the "
        "receivers of its share of the addresses and its own Q1, no shard actors)")
    bind: str | list[str] | None = Field(
        None, description=f"address to bind (default {DEFAULT_URL}); a list binds each "
        "address in its own receiver actor (queue.backend ray) or receiver thread "
        "(layout fast)")
    connect: str | None = Field(None, description="address of a server-role emitter")
    transport: Literal["zmq", "nng", "tcp"] = "zmq"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    buffers: int = Field(2, ge=1, le=16)
    parse_in: Literal["receiver", "actor"] = "receiver"
    parser_threads: int = Field(2, ge=1, le=64)
    parse_isolation: Literal["none", "process"] = Field(
        "none", description="process = decode in worker processes (one per parser thread): "
        "a crash in native HDF5 code costs one message, not the run")
    parse_timeout_s: float = Field(
        30.0, gt=0, description="parse_isolation process: longest decode of one message")
    queue: QueueConfig = Field(default_factory=lambda: QueueConfig.model_validate({}))
    ray: RayConfig = Field(default_factory=lambda: RayConfig.model_validate({}))
    model: ModelSpec = Field(
        default_factory=lambda: SyntheticModelSpec(),
        description="the model inference runs; kind: synthetic | noop | peaknet")
    autocast_bf16: bool = False
    max_message_bytes: int = Field(2 * _GIB, ge=1)
    max_decoded_bytes: int | None = Field(
        None, ge=1,
        description="per-message budget on the decoded bytes of the fields the consumer "
        "reads, checked from their declared shapes before anything is allocated; None = "
        "max_message_bytes, or 4 x the expected batch (random.batch_size x event_shape x 8 "
        "bytes) when that is more (compressed messages decode to more than they occupy)")
    max_chunks: int = Field(
        16384, ge=1,
        description="chunks of one HDF5 dataset (objects of one file, members of one npz) "
        "a message may have; counted from the shapes before anything iterates them")
    parse_deadline_s: float = Field(
        10.0, gt=0,
        description="longest decode of one message, checked between its steps; a message "
        "past it is quarantined (parse_isolation: process also kills a worker stuck in one "
        "native call, after parse_timeout_s)")
    parse_hold_s: float = Field(
        1.0, ge=0,
        description="parse_in receiver: how long a slow message may hold back the batches "
        "parsed after it before they go into Q1 ahead of it")
    rcvhwm: int = Field(
        1000, ge=0,
        description="zmq: messages libzmq reads ahead per connection while the consumer is "
        "busy (0 = unlimited; 1000 is libzmq's default, as production runs)",
    )
    count: int | None = Field(None, ge=1, description="stop after this many messages")
    duration_s: float | None = Field(None, gt=0, description="stop after this long")
    idle_timeout_s: float | None = Field(
        5.0, gt=0, description="end of stream after this much silence (after the first message)"
    )
    log_every_batches: int = Field(10, ge=1)
    fields: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_FIELDS),
        description="data source name -> dataset path (hdf5) or key (npz)",
    )
    expected_fields: list[str] = Field(
        default_factory=lambda: ["detector_data"],
        description="names that every message must carry (else quarantined)",
    )
    event_shape: list[int] | None = Field(
        None, description="expected per-event shape; (C,H,W) also accepts (H,W) when C = 1"
    )
    random: RandomConfig = Field(default_factory=lambda: RandomConfig.model_validate({}))

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list binds nothing: give at least one address")
            for u in v:
                _check_url(u)
            dup = sorted({u for u in v if v.count(u) > 1})
            if dup:
                raise ValueError(f"{dup[0]!r} is listed twice")
            return v[0] if len(v) == 1 else v
        if v is not None:
            _check_url(v)
        return v

    @field_validator("connect")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None:
            _check_url(v)
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _model_kind(cls, v: Any) -> Any:
        if isinstance(v, Mapping) and "kind" not in v:
            raise ValueError(f"must name a kind ({', '.join(MODEL_KINDS)})")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        s = v.strip().lower()
        if s not in ("auto", "cpu", "cuda") and not (s.startswith("cuda:") and s[5:].isdigit()):
            raise ValueError(f"{v!r} is not one of auto, cpu, cuda, cuda:N")
        return s

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        if "detector_data" not in v:
            raise ValueError("must name the detector_data source")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ConsumerConfig:
        if self.bind is not None and self.connect is not None:
            raise ValueError("bind and connect are exclusive: give one")
        if self.layout == "fast" and not (
                self.queue.backend == "local"
                or (self.queue.backend == "ray" and self.ray.actors)):
            raise ValueError(
                f"layout fast hands batches to inference in memory: it needs queue.backend "
                f"local, or ray with ray.actors true (each inference actor runs the "
                f"receivers of its addresses), not {self.queue.backend}"
                + (" with ray.actors false" if self.queue.backend == "ray" else ""))
        if (isinstance(self.bind, list) and self.layout != "fast"
                and (self.queue.backend != "ray" or not self.ray.actors)):
            raise ValueError(
                f"bind lists {len(self.bind)} addresses: one receiver per address needs "
                "queue.backend ray with ray.actors true (the receivers run as Ray actors), "
                "or layout fast (receiver threads)")
        unknown = [n for n in self.expected_fields if n not in self.fields]
        if unknown:
            raise ValueError(f"expected_fields names {unknown} absent from fields")
        rc = self.random
        per_batch = rc.batch_size * math.prod(rc.shape) * _itemsize(rc.dtype)
        if self.mode == "random" and per_batch > self.max_message_bytes:
            raise ValueError(
                f"random mode's batch would hold {per_batch} bytes (batch_size {rc.batch_size} "
                f"x shape {rc.shape} x {rc.dtype}), more than max_message_bytes "
                f"{self.max_message_bytes}; raise consumer.max_message_bytes if you mean it")
        return self

    @property
    def decoded_budget(self) -> int:
        """``max_decoded_bytes``, or its default sized from the expected batch."""
        if self.max_decoded_bytes is not None:
            return self.max_decoded_bytes
        event = self.event_shape or self.random.shape
        expected = 4 * self.random.batch_size * math.prod(event) * 8
        return max(expected, self.max_message_bytes)

    @property
    def decode_limits(self) -> Any:
        """The decoder's per-message bounds (``pipeline.decode.DecodeLimits``)."""
        from simstream.pipeline.decode import DecodeLimits

        return DecodeLimits(max_bytes=self.decoded_budget, max_chunks=self.max_chunks,
                            deadline_s=self.parse_deadline_s)

    @property
    def role(self) -> Literal["bind", "connect"]:
        return "connect" if self.connect is not None else "bind"

    @property
    def urls(self) -> list[str]:
        """Every address bound (one receiver each) or the one connected to."""
        if self.connect is not None:
            return [self.connect]
        if isinstance(self.bind, list):
            return list(self.bind)
        return [self.bind or DEFAULT_URL]

    @property
    def url(self) -> str:
        """The (first) address bound or connected to."""
        return self.urls[0]

    @property
    def binds_all_interfaces(self) -> bool:
        return self.role == "bind" and any(
            split_url(u)[0] in ("*", "0.0.0.0", "::") for u in self.urls)


def consumer_defaults(source: Source, transport_kind: str) -> dict[str, Any]:
    """The consumer keys whose defaults describe the data: taken from the profile's
    source (and transport), so socket and random runs see the same batches."""
    return {
        "transport": transport_kind,
        "fields": dict(source.fields),
        "event_shape": list(source.shape),
        "random": {"batch_size": source.batch_size, "shape": list(source.shape),
                   "dtype": source.dtype},
    }


def merge_consumer(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, nested sections merged key by key (``model`` replaced whole)."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k != "model":
            out[k] = merge_consumer(out[k], v)
        else:
            out[k] = v
    return out


def _without_derived(section: dict[str, Any], derived: Mapping[str, Any]) -> dict[str, Any]:
    """``section`` less the values that only repeat ``derived`` (so they follow a new source)."""
    out = {}
    for k, v in section.items():
        d = derived.get(k)
        if isinstance(v, dict) and isinstance(d, Mapping):
            rest = _without_derived(v, d)
            if rest:
                out[k] = rest
        elif k not in derived or v != d:
            out[k] = v
    return out


class Profile(_Model):
    name: str
    description: str = ""
    seed: int = Field(0, ge=0, description="every random draw derives from this")
    source: Source = Field(default_factory=Source)
    transport: Transport = Field(default_factory=Transport)
    network: NetworkConditions = Field(default_factory=NetworkConditions)
    timeline: Timeline = Field(default_factory=Timeline)
    faults: list[Fault] = Field(default_factory=list)
    stop: Stop = Field(default_factory=Stop)
    consumer: ConsumerConfig = Field(
        default_factory=lambda: ConsumerConfig.model_validate(
            consumer_defaults(Source(), "zmq")),
        description="read by the consumer side (pipeline/); the data-describing keys "
        "(transport, fields, event_shape, random) default to the source's",
    )

    @model_validator(mode="before")
    @classmethod
    def _consumer_from_source(cls, data: Any) -> Any:
        """Fill the consumer's data-describing defaults from the source and transport."""
        if not isinstance(data, Mapping):
            return data
        section = data.get("consumer")
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            return data  # reported by the field's own validation
        src = data.get("source")
        try:
            source = src if isinstance(src, Source) else Source.model_validate(src or {})
        except ValidationError:
            return data  # the source's errors are reported; the consumer's are not guessed
        tp = data.get("transport")
        kind = "zmq"
        if isinstance(tp, Transport):
            kind = tp.kind
        elif isinstance(tp, Mapping) and tp.get("kind") in ("zmq", "nng", "tcp"):
            kind = tp["kind"]
        return {**data, "consumer": merge_consumer(consumer_defaults(source, kind), section)}

    @field_serializer("consumer")
    def _consumer_out(self, consumer: ConsumerConfig, info: FieldSerializationInfo) -> Any:
        """The section less the values that only repeat the source's, so a profile dumped,
        edited (another source) and validated again derives them anew; dump_profile
        writes them all."""
        return _without_derived(consumer.model_dump(mode=info.mode),
                                consumer_defaults(self.source, self.transport.kind))
    target_consumer: Literal[TARGET_CONSUMERS] | None = Field(  # type: ignore[valid-type]
        None, description="the consumer this stream is meant for; emit warns before "
        "sending what it is known not to take (docs/lclstreamer.md)",
    )

    @model_validator(mode="after")
    def _bounded(self) -> Profile:
        tp = self.transport
        for f in self.faults:
            # rank ids are global (MPI) ids: rank_offset..rank_offset+ranks-1; a fault may
            # name a lower rank of another emitter process, where it does not apply here
            if f.rank is not None and f.rank >= tp.rank_offset + tp.ranks:
                top = f"transport.ranks is {tp.ranks}" if not tp.rank_offset else (
                    f"this emitter's ranks end at {tp.rank_offset + tp.ranks - 1} "
                    f"(transport.rank_offset {tp.rank_offset}, transport.ranks {tp.ranks})")
                raise ValueError(f"a fault names rank {f.rank} but {top}")
        return self

    def with_overrides(self, overrides: Mapping[str, Any], *, skip_none: bool = True) -> Profile:
        """A new profile with dotted-path overrides (``{"transport.url": ...}``) applied.

        ``skip_none``: a None value means "not given" and leaves the field as it is
        (a command-line flag left out); False sets the field to None (to lift a
        limit the profile sets, e.g. ``source.total_events``).
        Raises ProfileError naming the flag's path when the result is invalid.
        """
        data = self.model_dump(mode="python")
        for dotted, value in overrides.items():
            if value is None and skip_none:
                continue
            node = data
            parts = dotted.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        return parse_profile(data, source="(with command-line overrides)")


# --------------------------------------------------------------------------
# loading and error messages


MAX_VALUE_CHARS = 120  # a value quoted in an error message is cut to this


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _itemsize(dtype: str) -> int:
    import numpy as np

    return int(np.dtype(dtype).itemsize)


def _fmt_value(v: Any) -> str:
    text = _fmt_value_whole(v)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _fmt_value_whole(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(v)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return repr(v)
    try:
        return json.dumps(v, default=str)
    except (TypeError, ValueError):
        return repr(v)


def _fmt_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model class found by walking ``loc`` from Profile."""
    import typing

    model: Any = Profile
    for part in loc:
        if isinstance(part, int):
            continue
        if model is _MODEL_UNION and part in MODEL_SPECS:
            model = MODEL_SPECS[part]  # the member a discriminated union chose
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        fld = model.model_fields.get(str(part))
        if fld is None:
            return None
        ann = fld.annotation
        if ann == _MODEL_UNION:
            model = _MODEL_UNION
            continue
        # unwrap Optional[...] and list[...]
        for _ in range(3):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            origin = typing.get_origin(ann)
            if origin in (list, typing.Union) or str(origin) == "types.UnionType":
                models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
                if models:
                    ann = models[0]
                    break
                if args:
                    ann = args[0]
            else:
                break
        model = ann
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _messages(err: ValidationError, prefix: tuple[str, ...] = ()) -> list[str]:
    """One line per problem, ``<yaml path>: <value> <what is wrong>``; ``prefix``: the
    path of the model validated (e.g. ``("consumer",)``) from the profile's top."""
    out = []
    for e in err.errors():
        typ = e["type"]
        loc = prefix + tuple(
            x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        # pydantic puts union member tags into loc; drop them (after finding the parent)
        loc = tuple(x for x in loc if x not in ("str", "list[str]", "int", "float", "none"))
        tagged = loc
        loc = tuple(x for i, x in enumerate(loc)
                    if not (x in MODEL_SPECS and i and loc[i - 1] == "model"))
        path = _fmt_loc(loc)
        ctx = e.get("ctx") or {}
        val = e.get("input")
        if typ == "extra_forbidden":
            parent = _model_at(tagged[:-1])
            allowed = sorted(parent.model_fields) if parent else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"{path}: unknown key"
            if hint:
                msg += f" (did you mean {hint[0]!r}?)"
            if allowed:
                msg += f"; allowed: {', '.join(allowed)}"
            out.append(msg)
        elif typ == "union_tag_invalid":
            out.append(f"{path}.kind: {_fmt_value(ctx.get('tag'))} is not one of "
                       f"{ctx.get('expected_tags', '?')}")
        elif typ == "missing":
            out.append(f"{path}: required key is missing")
        elif typ in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
                  "less_than": "<"}[typ]
            bound = next(iter(ctx.values())) if ctx else "?"
            out.append(f"{path}: {_fmt_value(val)} is not {op} {_fmt_value(bound)}")
        elif typ == "literal_error":
            out.append(f"{path}: {_fmt_value(val)} is not one of {ctx.get('expected', '?')}")
        elif typ in ("too_short", "too_long"):
            out.append(f"{path}: {_fmt_value(val)} {e['msg'].lower()}")
        elif typ == "value_error":
            msg = str(ctx.get("error", e["msg"]))
            out.append(f"{path}: {msg}")
        else:
            out.append(f"{path}: {_fmt_value(val)} is invalid: {e['msg']}")
    # one line per problem, in order, without repeats
    return list(dict.fromkeys(out))


def parse_profile(data: Any, source: str | None = None) -> Profile:
    """Validate an already-loaded mapping. Raises ProfileError."""
    if not isinstance(data, Mapping):
        raise ProfileError(
            [f"(top level): expected a mapping of keys, got {type(data).__name__}"], source
        )
    try:
        return Profile.model_validate(dict(data))
    except ValidationError as err:
        raise ProfileError(_messages(err), source) from None


def load_profile(path: str | Path) -> Profile:
    """Read and validate one YAML profile. Raises ProfileError (never a traceback)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError([f"{p}: no such file"], str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError([f"{p}: cannot read: {e}"], str(p)) from None
    try:
        data = safe_load_bounded(text)
    except RecursionError:
        raise ProfileError([f"{p}: YAML nested too deeply"], str(p)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ProfileError([f"{where}YAML syntax: {problem}"], str(p)) from None
    return parse_profile(data, source=str(p))


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Values in ``node`` with every alias followed, counted in time linear in the
    distinct nodes (memoized), stopping past ``limit``. Raises yaml.YAMLError for a
    recursive alias."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise yaml.YAMLError("an alias refers to the node that holds it (recursive)")
        busy.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        busy.discard(key)
        sizes[key] = total
        return total

    return size(node)


def safe_load_bounded(text: str, limit: int = MAX_YAML_NODES) -> Any:
    """``yaml.safe_load`` that refuses a document expanding (aliases followed) to more
    than ``limit`` values. Raises yaml.YAMLError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node, limit)
        if n > limit:
            raise yaml.YAMLError(
                f"the document expands to more than {limit} values once its aliases are "
                f"followed (an alias bomb?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def dump_profile(profile: Profile) -> str:
    """The profile as YAML, every default written out (the consumer's too); load(dump(p)) == p."""
    data = profile.model_dump(mode="json")
    data["consumer"] = profile.consumer.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def profile_schema() -> dict[str, Any]:
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "simstream profile"
    return schema


def profiles_dir() -> Path:
    """The folder of bundled profiles: package data of ``simstream`` (in a checkout,
    ``simstream/profiles`` is a link to the repository's ``profiles/``).
    ``SIMSTREAM_PROFILES`` names another folder."""
    import os
    from importlib.resources import files

    env = os.environ.get("SIMSTREAM_PROFILES")
    if env:
        return Path(env)
    # a regular install (wheel, editable, checkout on the path) is on the file system
    return Path(str(files("simstream").joinpath("profiles")))


def bundled_profiles() -> dict[str, Path]:
    """Bundled profile name -> path; hypotheses are named ``hypotheses/NAME``."""
    root = profiles_dir()
    out: dict[str, Path] = {}
    if not root.is_dir():
        return out
    for p in sorted(root.rglob("*.yaml")):
        out[p.relative_to(root).with_suffix("").as_posix()] = p
    return out


def find_profile(name_or_path: str | Path) -> Path:
    """A path as given if it exists, else a bundled profile by name. Raises ProfileError."""
    p = Path(name_or_path)
    if p.exists():
        return p
    bundled = bundled_profiles()
    key = str(name_or_path).removesuffix(".yaml").removeprefix("profiles/")
    if key in bundled:
        return bundled[key]
    hint = difflib.get_close_matches(key, list(bundled), n=1)
    more = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ProfileError(
        [f"{name_or_path}: no such file or bundled profile{more}; "
         f"bundled: {', '.join(bundled) or 'none'}"]
    )


def container_fault_warnings(p: Profile, where: str) -> list[str]:
    """One line per container-level fault in ``p.faults`` that ``where`` (the emitter,
    the namespace testbed) cannot apply and ignores: only ``simstream testbed docker
    up`` applies them, from the host."""
    return [f"faults[{i}] {f.describe()}: a container fault, applied only by "
            f"`simstream testbed docker up` (from the host); ignored by {where}"
            for i, f in enumerate(p.faults) if f.is_host_fault]
