"""LCLStreamer YAML configs -> simstream profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from simstream.lclstreamer import profile_from_lclstreamer_config, warnings_for
from simstream.profile import ProfileError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lclstreamer-internal.yaml"

BASE = """\
source_identifier: ""
skip_incomplete_events: false
event_source:
    type: InternalEventSource
    number_of_events_to_generate: 76
data_sources:
    random:
        type: GenericRandomNumpyArray
        array_shape: 20,2
        array_dtype: float32
    int:
        type: IntValue
        value: 3
    float:
        type: FloatValue
        value: 4.5
processing_pipeline:
    type: BatchProcessingPipeline
    batch_size: 10
data_serializer:
    type: HDF5BinarySerializer
    compression_level: 3
    compression: null
    fields:
        random: /data/random
        int: /data/int
        float: /data/float
data_handlers:
    - type: BinaryFileWritingDataHandler
      file_prefix: ""
      file_suffix: h5
      write_directory: workspace/output
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "lclstreamer.yaml"
    p.write_text(text)
    return p


def test_example_config_maps_to_the_expected_profile() -> None:
    prof = profile_from_lclstreamer_config(EXAMPLE)
    s = prof.source
    assert prof.name == "lclstreamer-internal"
    assert (s.batch_size, s.shape, s.dtype, s.content) == (8, [1, 1920, 1920], "float32", "random")
    assert (s.format, s.compression, s.compression_level) == ("hdf5", "bitshuffle_lz4", 3)
    assert s.fields == {
        "detector_data": "/data/data",
        "run_number": "/data/run_number",
        "photon_energy": "/data/photon_energy",
    }
    assert s.total_events == 800 and s.pool is None
    t = prof.transport
    assert (t.kind, t.role, t.url, t.urls) == ("zmq", "client", "tcp://127.0.0.1:12321", None)
    assert [p.rate_hz for p in prof.timeline.phases] == [None]


def test_lclstreamer_own_internal_example(tmp_path: Path) -> None:
    prof = profile_from_lclstreamer_config(write(tmp_path, BASE))
    s = prof.source
    assert (s.total_events, s.batch_size, s.shape, s.dtype) == (76, 10, [20, 2], "float32")
    assert s.compression == "none"
    assert s.fields == {"detector_data": "/data/random", "int": "/data/int", "float": "/data/float"}


@pytest.mark.parametrize(
    "name,ours",
    [("gzip", "gzip"), ("gzip_with_shuffle", "gzip_with_shuffle"),
     ("bitshuffle_with_lz4", "bitshuffle_lz4"), ("bitshuffle_with_zstd", "bitshuffle_zstd")],
)
def test_compression_names_are_mapped(tmp_path: Path, name: str, ours: str) -> None:
    prof = profile_from_lclstreamer_config(write(tmp_path, BASE.replace("compression: null", f"compression: {name}")))
    assert prof.source.compression == ours


def test_zfp_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"data_serializer.compression: 'zfp' is not supported"):
        profile_from_lclstreamer_config(write(tmp_path, BASE.replace("compression: null", "compression: zfp")))


@pytest.mark.parametrize("kind", ["Psana1EventSource", "Psana2EventSource"])
def test_psana_sources_need_facility_data(tmp_path: Path, kind: str) -> None:
    text = BASE.replace(
        "    type: InternalEventSource\n    number_of_events_to_generate: 76\n", f"    type: {kind}\n"
    )
    with pytest.raises(ProfileError, match=r"event_source.type: .*facility data.*content: replay"):
        profile_from_lclstreamer_config(write(tmp_path, text))


def test_peaknet_pipeline_gives_channels_height_width(tmp_path: Path) -> None:
    text = BASE.replace(
        "    type: BatchProcessingPipeline\n    batch_size: 10\n",
        "    type: PeaknetPreprocessingPipeline\n    batch_size: 16\n    target_height: 512\n"
        "    target_width: 512\n    pad_style: center\n    add_channel_dim: true\n    num_channels: 1\n",
    )
    prof = profile_from_lclstreamer_config(write(tmp_path, text))
    assert (prof.source.batch_size, prof.source.shape) == (16, [1, 512, 512])
    # the 20x2 images are zero-padded into 512x512, as numpy.pad with zeros
    assert (prof.source.pad_from, prof.source.pad_style) == ([20, 2], "center")
    no_channel = text.replace("add_channel_dim: true", "add_channel_dim: false")
    assert profile_from_lclstreamer_config(write(tmp_path, no_channel)).source.shape == [512, 512]


def test_streaming_handler_gives_the_transport(tmp_path: Path) -> None:
    handler = (
        "    - type: BinaryDataStreamingDataHandler\n      urls:\n"
        "          - tcp://127.0.0.1:12321\n          - tcp://127.0.0.1:12322\n"
        "      role: server\n      library: nng\n      socket_type: push\n"
    )
    path = write(tmp_path, BASE + handler)
    prof = profile_from_lclstreamer_config(path)
    t = prof.transport
    assert (t.kind, t.role, t.urls) == ("nng", "server", ["tcp://127.0.0.1:12321", "tcp://127.0.0.1:12322"])
    # LCLStreamer's handler: SNDHWM 5, LINGER 0, one socket on every url
    assert (t.sndhwm, t.close, t.url_spread) == (5, "abrupt", "message")
    assert any("removed in March 2026" in w for w in warnings_for(path))
    # no role given: the parameter model's default, server; zmq gives no warning
    plain = path.parent / "plain.yaml"
    plain.write_text(BASE + handler.replace("      role: server\n", "").replace("nng", "zmq"))
    assert profile_from_lclstreamer_config(plain).transport.role == "server"
    assert warnings_for(plain) == []


@pytest.mark.parametrize(
    "old,new,where",
    [
        ("skip_incomplete_events: false", "skip_incomplete_events: false\nsurprise: 1", r"surprise: unknown key"),
        ("batch_size: 10", "batch_size: 0", r"processing_pipeline.batch_size: 0 is not >= 1"),
        ("array_shape: 20,2", "array_shape: 20,x", r"data_sources.random.array_shape"),
        ("array_dtype: float32", "array_dtype: complex64", r"data_sources.random.array_dtype"),
        ("        int: /data/int\n", "        nope: /data/nope\n", r"data_serializer.fields.nope: names no data source"),
        ("type: IntValue", "type: Psana1AreaDetector", r"data_sources.int.type: Psana1AreaDetector needs facility data"),
        ("type: BatchProcessingPipeline", "type: Mystery", r"processing_pipeline.type: 'Mystery' is not supported"),
    ],
)
def test_errors_name_the_yaml_path(tmp_path: Path, old: str, new: str, where: str) -> None:
    assert old in BASE
    with pytest.raises(ProfileError, match=where):
        profile_from_lclstreamer_config(write(tmp_path, BASE.replace(old, new)))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such file"):
        profile_from_lclstreamer_config(tmp_path / "absent.yaml")
    with pytest.raises(ProfileError, match="YAML syntax"):
        profile_from_lclstreamer_config(write(tmp_path, "a: [1,\n"))


def test_the_mapped_profile_generates_messages(tmp_path: Path) -> None:
    from simstream import codec
    from simstream.payload import MessageFactory

    prof = profile_from_lclstreamer_config(write(tmp_path, BASE))
    f = MessageFactory(prof.source)
    assert f.total_messages == 8 and f.message(7).events == 6
    out = codec.decode(f.message(0).payload, fields=f.fields)
    assert out["detector_data"].shape == (10, 20, 2)
    assert out["int"].shape == (10,) and out["float"].shape == (10,)


def test_npz_branch_example_with_generated_timestamp_and_wavelength(tmp_path: Path) -> None:
    # the npz branch's own example (lclstreamer-random-to-sdfada-numpy.yaml), smaller
    text = BASE.replace(
        "    random:\n        type: GenericRandomNumpyArray",
        "    timestamp:\n        type: GenericRandomTimestamp\n"
        "    photon_wavelength:\n        type: GenericRandomWavelength\n"
        "    random:\n        type: GenericRandomNumpyArray",
    ).replace("array_shape: 20,2", "array_shape: 6,5")
    text = text[: text.index("data_serializer:")] + (
        "data_serializer:\n    type: NumpyBinarySerializer\n    use_compression: true\n")
    text = text.replace("    type: BatchProcessingPipeline\n    batch_size: 10\n",
                        "    type: PeaknetPreprocessingPipeline\n    batch_size: 8\n"
                        "    target_height: 8\n    target_width: 8\n    add_channel_dim: true\n")
    prof = profile_from_lclstreamer_config(write(tmp_path, text))
    s = prof.source
    assert (s.format, s.compression, s.timestamp, s.wavelength) == ("npz", "gzip", "random", "random")
    assert s.fields["timestamp"] == "timestamp" and s.fields["photon_wavelength"] == "photon_wavelength"
    assert (s.shape, s.pad_from) == ([1, 8, 8], [6, 5])
