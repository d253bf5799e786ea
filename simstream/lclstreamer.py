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
  (values in ``source.scalars`` where the profile model has that key);
  the numpy branch's ``GenericRandomTimestamp`` / ``GenericRandomWavelength`` ->
  ``source.timestamp: random`` / ``source.wavelength: random`` under that name.
- ``processing_pipeline``: ``BatchProcessingPipeline {batch_size}`` or
  ``PeaknetPreprocessingPipeline {batch_size, target_height, target_width,
  pad_style, add_channel_dim, num_channels}`` -> batch size, and for PeakNet the
  padded shape [C, H, W] (or [H, W] without the channel dimension) with
  ``source.pad_from`` the detector's [H, W] (zero padding) and ``pad_style``.
- ``data_serializer``: ``HDF5BinarySerializer {compression_level, compression,
  fields}`` -> format hdf5, compression (``bitshuffle_with_lz4`` ->
  ``bitshuffle_lz4`` and so on; ``zfp`` refused), dataset paths. The npz branch's
  ``NumpyBinarySerializer {use_compression}`` -> format npz.
- ``data_handlers``: ``BinaryDataStreamingDataHandler {urls, role, library,
  socket_type}`` -> transport (kind zmq, role (default server, as LCLStreamer's
  parameter model), urls with ``url_spread: message``: one PUSH socket on every
  url round-robins messages over them); file-writing handlers are ignored.
  ``library: nng`` is accepted with a warning (``warnings``): LCLStreamer's main
  refuses it since nng was removed in March 2026.

The stream ends as LCLStreamer's does: ``transport.close: abrupt`` (LINGER 0),
SNDHWM 5.

Every problem raises ProfileError naming the path in the LCLStreamer file
(e.g. ``data_serializer.compression: 'zfp' ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from simstream.profile import (
    DTYPES,
    Profile,
    ProfileError,
    Source,
    parse_profile,
    safe_load_bounded,
)

__all__ = ["profile_from_lclstreamer_config", "warnings_for"]

#: what the last import noticed that the user should hear (printed by ``emit``)
_WARNINGS: dict[str, list[str]] = {}


def warnings_for(path: str | Path) -> list[str]:
    """Warnings noticed while importing ``path`` (e.g. ``library: nng``)."""
    return list(_WARNINGS.get(str(Path(path)), []))

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
        self.warnings: list[str] = []

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
        data = safe_load_bounded(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError([f"{p}: no such file"], src) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError([f"{p}: cannot read: {e}"], src) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ProfileError([f"{where}YAML syntax: {getattr(e, 'problem', None) or e}"], src) from None
    r = _Reader(src)
    _WARNINGS[src] = r.warnings
    top = r.mapping(data, "(top level)")
    r.keys(top, "", _TOP)
    for key in ("event_source", "data_sources", "processing_pipeline", "data_serializer"):
        if key not in top:
            raise r.fail(key, "required key is missing")

    total_events = _event_source(r, top["event_source"])
    detector, scalars, generated = _data_sources(r, top["data_sources"])
    batch_size, shape, pad = _pipeline(r, top["processing_pipeline"], detector["shape"])
    fmt, compression, level, fields = _serializer(
        r, top["data_serializer"], detector["name"], scalars, generated)
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
        **pad,
        **{("timestamp" if k == "timestamp" else "wavelength"): "random"
           for k in generated.values()},
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


_GENERATED = {"GenericRandomTimestamp": "timestamp", "GenericRandomWavelength": "photon_wavelength"}


def _data_sources(
    r: _Reader, value: Any
) -> tuple[dict[str, Any], dict[str, int | float], dict[str, str]]:
    """(detector, scalar name -> value, generated source name -> simstream field)."""
    sources = r.mapping(value, "data_sources")
    detector: dict[str, Any] | None = None
    scalars: dict[str, int | float] = {}
    generated: dict[str, str] = {}
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
        elif t in _GENERATED:
            r.keys(node, path, ("type",))
            if _GENERATED[t] in generated.values():
                raise r.fail(path, f"a second {t} source; simstream sends one")
            generated[name] = _GENERATED[t]
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
                f"{t!r} is not supported; use GenericRandomNumpyArray, IntValue, FloatValue, "
                "GenericRandomTimestamp or GenericRandomWavelength",
            )
    if detector is None:
        raise r.fail("data_sources", "no GenericRandomNumpyArray source to act as the detector")
    return detector, scalars, generated


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


def _pipeline(
    r: _Reader, value: Any, shape: list[int]
) -> tuple[int, list[int], dict[str, Any]]:
    """(batch size, per-event shape sent, padding keys of the source)."""
    t, node = r.typed(value, "processing_pipeline")
    path = "processing_pipeline"
    if t == "BatchProcessingPipeline":
        r.keys(node, path, ("type", "batch_size"))
        return r.integer(node, "batch_size", path), shape, {}
    if t == "PeaknetPreprocessingPipeline":
        # num_channels: main; merge_batch_and_channel and the normalisation keys: the
        # numpy branch (normalisation changes values, not the layout: not emulated)
        allowed = ("type", "batch_size", "target_height", "target_width", "pad_style",
                   "add_channel_dim", "num_channels", "merge_batch_and_channel",
                   "apply_normalization", "norm_eps", "norm_check_nan", "norm_scale_variance")
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
        if node.get("merge_batch_and_channel"):
            raise r.fail(f"{path}.merge_batch_and_channel",
                         "true is not supported (it reshapes (B, C, H, W) to (B*C, 1, H, W))")
        if node.get("apply_normalization"):
            r.warnings.append(f"{path}.apply_normalization: true is not emulated; the "
                              "images are sent unnormalised (same shapes and dtypes)")
        if len(shape) != 2:
            raise r.fail(f"{path}.type", f"PeakNet pads 2-D images; the detector's shape is {shape}")
        if shape[-2] > h or shape[-1] > w:
            raise r.fail(
                f"{path}.target_height",
                f"the detector's {shape[-2]}x{shape[-1]} images do not fit a {h}x{w} pad",
            )
        pad = {"pad_from": list(shape[-2:]), "pad_style": style}
        return batch, ([channels, h, w] if add else [h, w]), pad
    raise r.fail(
        f"{path}.type", f"{t!r} is not supported; use BatchProcessingPipeline or PeaknetPreprocessingPipeline"
    )


def _serializer(
    r: _Reader, value: Any, detector: str, scalars: dict[str, int | float],
    generated: dict[str, str],
) -> tuple[str, str, int, dict[str, str]]:
    t, node = r.typed(value, "data_serializer")
    path = "data_serializer"
    if t == "NumpyBinarySerializer":
        r.keys(node, path, ("type", "use_compression"))
        # every source goes in, under its own name (savez(**arrays))
        fields = {"detector_data": detector, **{f: n for n, f in generated.items()},
                  **{n: n for n in scalars}}
        use = node.get("use_compression", True)  # the branch's default
        if not isinstance(use, bool):
            raise r.fail(f"{path}.use_compression", f"{use!r} is not true or false")
        return "npz", "gzip" if use else "none", 3, fields
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
        elif name in generated:
            fields[generated[name]] = target
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
        if library == "nng":
            r.warnings.append(
                f"{path}.library: nng is accepted here, but LCLStreamer's main refuses it "
                "(its nng support was removed in March 2026; only zmq is left)")
        if node.get("socket_type", "push") != "push":
            raise r.fail(f"{path}.socket_type", f"{node['socket_type']!r} is not push")
        # LCLStreamer's handler: SNDHWM 5, LINGER 0 (an abrupt close), and one PUSH
        # socket on every url, which ZMQ round-robins messages over
        transport = {"kind": library, "role": role, "url": urls[0], "sndhwm": 5,
                     "close": "abrupt", "url_spread": "message"}
        if len(urls) > 1:
            transport["urls"] = list(urls)
    if not transport:
        transport = {"close": "abrupt", "sndhwm": 5}
    return transport
