"""The consumer's settings: the profile's ``consumer:`` section, then command-line flags.

Every key has a default, so an empty section (or no profile) is a valid consumer.
Defaults that describe the data (detector field paths, the random-mode batch) come
from the profile's ``source:`` so socket and random runs see the same batches.
Validation happens once, here; errors name the path from the profile's top,
e.g. ``consumer.queue.maxsize: -1 is not >= 1`` (formatted by the profile's own
helpers, so both read alike).
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simstream.profile import DEFAULT_FIELDS, DTYPES, Profile, ProfileError, _check_url, split_url
from simstream.profile import _fmt_loc as _profile_fmt_loc
from simstream.profile import _fmt_value as _profile_fmt_value

__all__ = [
    "DEFAULT_URL",
    "ConsumerConfig",
    "QueueConfig",
    "RandomConfig",
    "RayConfig",
    "consumer_config",
]

log = logging.getLogger("pipeline.config")

DEFAULT_URL = "tcp://127.0.0.1:12321"
GIB = 1024**3


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    bind: str | list[str] | None = Field(
        None, description=f"address to bind (default {DEFAULT_URL}); a list binds each "
        "address in its own receiver actor (queue.backend ray)")
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
    model: dict[str, Any] = Field(default_factory=lambda: {"kind": "synthetic"})
    autocast_bf16: bool = False
    max_message_bytes: int = Field(2 * GIB, ge=1)
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

    @field_validator("model")
    @classmethod
    def _model_kind(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "kind" not in v:
            raise ValueError("must name a kind (peaknet, synthetic or noop)")
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
        if isinstance(self.bind, list) and (self.queue.backend != "ray" or not self.ray.actors):
            raise ValueError(
                f"bind lists {len(self.bind)} addresses: one receiver per address needs "
                "queue.backend ray with ray.actors true (the receivers run as Ray actors)")
        unknown = [n for n in self.expected_fields if n not in self.fields]
        if unknown:
            raise ValueError(f"expected_fields names {unknown} absent from fields")
        rc = self.random
        per_batch = rc.batch_size * math.prod(rc.shape) * np.dtype(rc.dtype).itemsize
        if self.mode == "random" and per_batch > self.max_message_bytes:
            raise ValueError(
                f"random mode's batch would hold {per_batch} bytes (batch_size {rc.batch_size} "
                f"x shape {rc.shape} x {rc.dtype}), more than max_message_bytes "
                f"{self.max_message_bytes}; raise consumer.max_message_bytes if you mean it")
        return self

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


# --------------------------------------------------------------------------
# building one from a profile and flags


def _profile_defaults(profile: Profile | None) -> dict[str, Any]:
    if profile is None:
        return {}
    src = profile.source
    return {
        "transport": profile.transport.kind,
        "fields": dict(src.fields),
        "event_shape": list(src.shape),
        "random": {"batch_size": src.batch_size, "shape": list(src.shape), "dtype": src.dtype},
    }


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k != "model":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = ConsumerConfig
    for part in loc:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        fld = model.model_fields.get(str(part))
        if fld is None:
            return None
        model = fld.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _messages(err: ValidationError, prefix: str) -> list[str]:
    """One line per problem, ``consumer.<path>: <value> <what is wrong>``."""
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _profile_fmt_loc((prefix, *loc))
        typ, ctx, val = e["type"], e.get("ctx") or {}, e.get("input")
        if typ == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = sorted(parent.model_fields) if parent else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"{path}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            out.append(msg + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
        elif typ in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
                  "less_than": "<"}[typ]
            bound = next(iter(ctx.values())) if ctx else "?"
            out.append(f"{path}: {_profile_fmt_value(val)} is not {op} {_profile_fmt_value(bound)}")
        elif typ == "literal_error":
            out.append(f"{path}: {_profile_fmt_value(val)} is not one of {ctx.get('expected', '?')}")
        elif typ == "value_error":
            out.append(f"{path}: {ctx.get('error', e['msg'])}")
        else:
            out.append(f"{path}: {_profile_fmt_value(val)} is invalid: {e['msg']}")
    return list(dict.fromkeys(out))


def consumer_config(
    profile: Profile | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    section: Mapping[str, Any] | None = None,
) -> ConsumerConfig:
    """The consumer's settings: defaults from ``profile.source``, then the profile's
    ``consumer:`` section (or ``section``), then ``overrides`` (dotted keys such as
    ``"queue.backend"``; None values are ignored, as unset flags).

    Raises ProfileError naming each bad path (``consumer.buffers: 0 is not >= 1``).
    """
    data = _profile_defaults(profile)
    sect = section if section is not None else (profile.consumer if profile else {})
    if not isinstance(sect, Mapping):
        raise ProfileError([f"consumer: expected a mapping, got {type(sect).__name__}"])
    data = _merge(data, sect)
    # an explicit connect in the section must not collide with an inherited default bind
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ProfileError([f"consumer.{dotted}: cannot override inside a non-mapping"])
        node[parts[-1]] = value
        if dotted == "connect":
            data.pop("bind", None)
        elif dotted == "bind":
            data.pop("connect", None)
    try:
        cfg = ConsumerConfig.model_validate(data)
    except ValidationError as err:
        source = "(with command-line overrides)" if overrides else None
        raise ProfileError(_messages(err, "consumer"), source) from None
    return cfg
