"""Read a real LCLStreamer YAML configuration as a simstream profile.

``profile_from_lclstreamer_config(path)`` maps LCLStreamer's schema (summary in
WIRE.md) onto a Profile, so a site's own config drives the emitter
(``simstream emit --lclstreamer-config FILE``):

- ``event_source``: ``InternalEventSource {number_of_events_to_generate}`` ->
  ``source.total_events``. Psana1/Psana2 sources need facility data: refused,
  with a pointer to ``content: replay``.
- ``data_sources``: one ``GenericRandomNumpyArray {array_shape: "20,2",
  array_dtype}`` -> the detector (shape, dtype, ``content: random``);
  ``IntValue``/``FloatValue {value}`` -> extra per-event scalar fields
  (values in ``source.scalars`` where the profile model has that key).
- ``processing_pipeline``: ``BatchProcessingPipeline {batch_size}`` or
  ``PeaknetPreprocessingPipeline {batch_size, target_height, target_width,
  pad_style, add_channel_dim, num_channels}`` -> batch size, and for PeakNet the
  padded shape [C, H, W] (or [H, W] without the channel dimension).
- ``data_serializer``: ``HDF5BinarySerializer {compression_level, compression,
  fields}`` -> format hdf5, compression (``bitshuffle_with_lz4`` ->
  ``bitshuffle_lz4`` and so on; ``zfp`` refused), dataset paths. The npz branch's
  ``NumpyBinarySerializer {use_compression}`` -> format npz.
- ``data_handlers``: ``BinaryDataStreamingDataHandler {urls, role, library,
  socket_type}`` -> transport (kind zmq or nng, role, urls); file-writing
  handlers are ignored.

Every problem raises ProfileError naming the path in the LCLStreamer file
(e.g. ``data_serializer.compression: 'zfp' ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from simstream.profile import DTYPES, Profile, ProfileError, Source, parse_profile

__all__ = ["profile_from_lclstreamer_config"]

_TOP = (
    "source_identifier",
    "skip_incomplete_events",
    "event_source",
    "data_sources",
    "processing_pipeline",
    "data_serializer",
    "data_handlers",
)
_COMPRESSIONS = {
    None: "none",
    "gzip": "gzip",
    "gzip_with_shuffle": "gzip_with_shuffle",
    "bitshuffle_with_lz4": "bitshuffle_lz4",
    "bitshuffle_with_zstd": "bitshuffle_zstd",
}
_PSANA_HINT = (
    "needs facility data (psana), which is not reachable here; export events to "
    "HDF5/npz and use a profile with source.content: replay and source.replay_path"
)


class _Reader:
    """Walks the YAML mapping; every error names its path in the file."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, msg: str) -> ProfileError:
        return ProfileError([f"{path}: {msg}"], self.source)

    def mapping(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        return value

    def keys(self, node: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for k in node:
            if k not in allowed:
                raise self.fail(
                    f"{path}.{k}" if path else str(k),
                    f"unknown key in an LCLStreamer config; allowed: {', '.join(allowed)}",
                )

    def integer(self, node: dict[str, Any], key: str, path: str, *, minimum: int = 1) -> int:
        if key not in node:
            raise self.fail(f"{path}.{key}", "required key is missing")
        v = node[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"{path}.{key}", f"{v!r} is not an integer")
        if v < minimum:
            raise self.fail(f"{path}.{key}", f"{v} is not >= {minimum}")
        return v

    def typed(self, value: Any, path: str) -> tuple[str, dict[str, Any]]:
        node = self.mapping(value, path)
        t = node.get("type")
        if not isinstance(t, str):
            raise self.fail(f"{path}.type", "required key is missing (the component's class name)")
        return t, node


def profile_from_lclstreamer_config(path: str | Path) -> Profile:
    """The profile equivalent to an LCLStreamer YAML config. Raises ProfileError."""
    p = Path(path)
    src = str(p)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError([f"{p}: no such file"], src) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError([f"{p}: cannot read: {e}"], src) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ProfileError([f"{where}YAML syntax: {getattr(e, 'problem', None) or e}"], src) from None
    r = _Reader(src)
    top = r.mapping(data, "(top level)")
    r.keys(top, "", _TOP)
    for key in ("event_source", "data_sources", "processing_pipeline", "data_serializer"):
        if key not in top:
            raise r.fail(key, "required key is missing")

    total_events = _event_source(r, top["event_source"])
    detector, scalars = _data_sources(r, top["data_sources"])
    batch_size, shape = _pipeline(r, top["processing_pipeline"], detector["shape"])
    fmt, compression, level, fields = _serializer(r, top["data_serializer"], detector["name"], scalars)
    transport = _handlers(r, top.get("data_handlers") or [])

    source: dict[str, Any] = {
        "batch_size": batch_size,
        "shape": shape,
        "dtype": detector["dtype"],
        "content": "random",
        "format": fmt,
        "compression": compression,
        "compression_level": level,
        "fields": fields,
        "total_events": total_events,
        "pool": None,
    }
    if "scalars" in Source.model_fields:
        source["scalars"] = {n: v for n, v in scalars.items() if n in fields}
    profile = {
        "name": p.stem,
        "description": f"From the LCLStreamer config {p.name}",
        "seed": 0,
        "source": source,
        "transport": transport,
        # InternalEventSource has no rate control: as fast as the socket takes it
        "timeline": {"repeat": False, "phases": [{"name": "unpaced", "rate_hz": None}]},
    }
    return parse_profile(profile, source=src)


def _event_source(r: _Reader, value: Any) -> int:
    t, node = r.typed(value, "event_source")
    if t in ("Psana1EventSource", "Psana2EventSource"):
        raise r.fail("event_source.type", f"{t} {_PSANA_HINT}")
    if t != "InternalEventSource":
        raise r.fail("event_source.type", f"{t!r} is not supported; use InternalEventSource")
    return r.integer(node, "number_of_events_to_generate", "event_source")


def _data_sources(r: _Reader, value: Any) -> tuple[dict[str, Any], dict[str, int | float]]:
    sources = r.mapping(value, "data_sources")
    detector: dict[str, Any] | None = None
    scalars: dict[str, int | float] = {}
    for name, spec in sources.items():
        path = f"data_sources.{name}"
        t, node = r.typed(spec, path)
        if t == "GenericRandomNumpyArray":
            if detector is not None:
                raise r.fail(
                    path, f"a second array source (after {detector['name']!r}); simstream "
                    "sends one detector array per event"
                )
            r.keys(node, path, ("type", "array_shape", "array_dtype"))
            detector = {"name": name, "shape": _shape(r, node, path), "dtype": _dtype(r, node, path)}
        elif t in ("IntValue", "FloatValue"):
            r.keys(node, path, ("type", "value"))
            if "value" not in node:
                raise r.fail(f"{path}.value", "required key is missing")
            try:
                scalars[name] = int(node["value"]) if t == "IntValue" else float(node["value"])
            except (TypeError, ValueError):
                raise r.fail(f"{path}.value", f"{node['value']!r} is not a valid {t[:-5].lower()}") from None
        elif "Psana" in t or "psana_name" in node:
            raise r.fail(f"{path}.type", f"{t} {_PSANA_HINT}")
        else:
            raise r.fail(
                f"{path}.type",
                f"{t!r} is not supported; use GenericRandomNumpyArray, IntValue or FloatValue",
            )
    if detector is None:
        raise r.fail("data_sources", "no GenericRandomNumpyArray source to act as the detector")
    return detector, scalars


def _shape(r: _Reader, node: dict[str, Any], path: str) -> list[int]:
    raw = node.get("array_shape")
    if raw is None:
        raise r.fail(f"{path}.array_shape", "required key is missing")
    parts = raw if isinstance(raw, list) else str(raw).split(",")
    try:
        shape = [int(str(x).strip()) for x in parts]
    except ValueError:
        raise r.fail(f"{path}.array_shape", f"{raw!r} is not a comma-separated list of integers") from None
    if not 1 <= len(shape) <= 4 or any(d < 1 for d in shape):
        raise r.fail(f"{path}.array_shape", f"{raw!r}: need 1 to 4 dimensions, each >= 1")
    return shape


def _dtype(r: _Reader, node: dict[str, Any], path: str) -> str:
    import numpy as np

    raw = node.get("array_dtype")
    if raw is None:
        raise r.fail(f"{path}.array_dtype", "required key is missing")
    try:
        name = np.dtype(str(raw)).name
    except TypeError:
        name = str(raw)
    if name not in DTYPES:
        raise r.fail(f"{path}.array_dtype", f"{raw!r} is not one of {', '.join(DTYPES)}")
    return name


def _pipeline(r: _Reader, value: Any, shape: list[int]) -> tuple[int, list[int]]:
    t, node = r.typed(value, "processing_pipeline")
    path = "processing_pipeline"
    if t == "BatchProcessingPipeline":
        r.keys(node, path, ("type", "batch_size"))
        return r.integer(node, "batch_size", path), shape
    if t == "PeaknetPreprocessingPipeline":
        allowed = ("type", "batch_size", "target_height", "target_width", "pad_style",
                   "add_channel_dim", "num_channels")
        r.keys(node, path, allowed)
        batch = r.integer(node, "batch_size", path)
        h = r.integer(node, "target_height", path)
        w = r.integer(node, "target_width", path)
        style = node.get("pad_style", "center")
        if style not in ("center", "bottom-right"):
            raise r.fail(f"{path}.pad_style", f"{style!r} is not one of center, bottom-right")
        add = node.get("add_channel_dim", True)
        if not isinstance(add, bool):
            raise r.fail(f"{path}.add_channel_dim", f"{add!r} is not true or false")
        channels = r.integer(node, "num_channels", path) if "num_channels" in node else 1
        if len(shape) >= 2 and (shape[-2] > h or shape[-1] > w):
            raise r.fail(
                f"{path}.target_height",
                f"the detector's {shape[-2]}x{shape[-1]} images do not fit a {h}x{w} pad",
            )
        return batch, ([channels, h, w] if add else [h, w])
    raise r.fail(
        f"{path}.type", f"{t!r} is not supported; use BatchProcessingPipeline or PeaknetPreprocessingPipeline"
    )


def _serializer(
    r: _Reader, value: Any, detector: str, scalars: dict[str, int | float]
) -> tuple[str, str, int, dict[str, str]]:
    t, node = r.typed(value, "data_serializer")
    path = "data_serializer"
    if t == "NumpyBinarySerializer":
        r.keys(node, path, ("type", "use_compression"))
        fields = {"detector_data": detector, **{n: n for n in scalars}}
        return "npz", "gzip" if node.get("use_compression") else "none", 3, fields
    if t != "HDF5BinarySerializer":
        raise r.fail(
            f"{path}.type", f"{t!r} is not supported; use HDF5BinarySerializer (or NumpyBinarySerializer)"
        )
    r.keys(node, path, ("type", "compression_level", "compression", "fields"))
    comp = node.get("compression")
    if comp == "zfp":
        raise r.fail(
            f"{path}.compression",
            "'zfp' is not supported by simstream (lossy; hdf5plugin's Zfp); use gzip, "
            "gzip_with_shuffle, bitshuffle_with_lz4 or bitshuffle_with_zstd",
        )
    if comp not in _COMPRESSIONS:
        allowed = ", ".join(str(k) for k in _COMPRESSIONS if k) + ", zfp or null"
        raise r.fail(f"{path}.compression", f"{comp!r} is not one of {allowed}")
    level = r.integer(node, "compression_level", path, minimum=0) if "compression_level" in node else 3
    raw_fields = r.mapping(node.get("fields"), f"{path}.fields")
    fields = {}
    for name, target in raw_fields.items():
        if not isinstance(target, str) or not target:
            raise r.fail(f"{path}.fields.{name}", f"{target!r} is not a dataset path")
        if name == detector:
            fields["detector_data"] = target
        elif name in scalars:
            fields[name] = target
        else:
            raise r.fail(f"{path}.fields.{name}", "names no data source in data_sources")
    if "detector_data" not in fields:
        raise r.fail(f"{path}.fields", f"does not map the detector source {detector!r} to a path")
    return "hdf5", _COMPRESSIONS[comp], level, fields


def _handlers(r: _Reader, value: Any) -> dict[str, Any]:
    if not isinstance(value, list):
        raise r.fail("data_handlers", f"expected a list, got {type(value).__name__}")
    transport: dict[str, Any] = {}
    for i, spec in enumerate(value):
        path = f"data_handlers[{i}]"
        t, node = r.typed(spec, path)
        if t == "BinaryFileWritingDataHandler":
            continue  # files on disk: nothing on the wire
        if t != "BinaryDataStreamingDataHandler":
            raise r.fail(f"{path}.type", f"{t!r} is not supported; use BinaryDataStreamingDataHandler")
        if transport:
            raise r.fail(path, "a second streaming handler; simstream streams to one set of urls")
        r.keys(node, path, ("type", "urls", "role", "library", "socket_type"))
        urls = node.get("urls")
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise r.fail(f"{path}.urls", "expected a non-empty list of tcp://HOST:PORT addresses")
        role = node.get("role", "server")  # LCLStreamer's default
        if role not in ("server", "client"):
            raise r.fail(f"{path}.role", f"{role!r} is not one of server, client")
        library = node.get("library", "zmq")
        if library not in ("zmq", "nng"):
            raise r.fail(f"{path}.library", f"{library!r} is not one of zmq, nng")
        if node.get("socket_type", "push") != "push":
            raise r.fail(f"{path}.socket_type", f"{node['socket_type']!r} is not push")
        transport = {"kind": library, "role": role, "url": urls[0]}
        if len(urls) > 1:
            transport["urls"] = list(urls)
    return transport
