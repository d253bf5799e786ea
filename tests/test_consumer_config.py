"""The consumer's settings: defaults, profile section, flag overrides, path-naming errors."""

from __future__ import annotations

import pytest

from simstream.pipeline.config import DEFAULT_URL, ConsumerConfig, PeakNetModelSpec, consumer_config
from simstream.profile import ProfileError, bundled_profiles, load_profile, parse_profile


def test_every_key_has_a_default() -> None:
    cfg = consumer_config()
    assert cfg.mode == "socket"
    assert cfg.role == "bind" and cfg.url == DEFAULT_URL
    assert cfg.transport == "zmq"
    assert cfg.buffers == 2
    assert cfg.parse_in == "receiver" and cfg.parser_threads == 2
    q = cfg.queue
    assert (q.maxsize, q.backend, q.shards, q.poll_interval_ms, q.sample_interval_ms) == (
        16, "local", 4, 10.0, 100.0)
    assert cfg.idle_timeout_s == 5.0
    assert cfg.log_every_batches == 10
    assert cfg.max_message_bytes == 2 * 1024**3
    assert cfg.fields["detector_data"] == "/data/data"


def test_defaults_come_from_the_profile_source() -> None:
    prof = load_profile(bundled_profiles()["peaknet-1920"])
    cfg = consumer_config(prof)
    assert cfg.fields["detector_data"] == "detector_data"  # npz key
    assert cfg.random.batch_size == 8 and cfg.random.shape == [1, 1920, 1920]
    assert cfg.event_shape == [1, 1920, 1920]
    assert cfg.model == PeakNetModelSpec(size="production")


@pytest.mark.parametrize("name", sorted(bundled_profiles()))
def test_every_bundled_profile_gives_a_valid_consumer(name: str) -> None:
    cfg = consumer_config(load_profile(bundled_profiles()[name]))
    assert isinstance(cfg, ConsumerConfig)


def test_section_then_flags() -> None:
    prof = parse_profile({"name": "x", "consumer": {"queue": {"maxsize": 8, "backend": "process"},
                                                   "buffers": 3}})
    cfg = consumer_config(prof, {"queue.backend": "local", "buffers": None, "mode": "random"})
    assert cfg.queue.maxsize == 8  # kept from the section
    assert cfg.queue.backend == "local"  # flag wins
    assert cfg.buffers == 3  # unset flag (None) leaves the section's value
    assert cfg.mode == "random"


def test_connect_flag_replaces_a_bind_from_the_profile() -> None:
    prof = parse_profile({"name": "x", "consumer": {"bind": "tcp://127.0.0.1:5000"}})
    cfg = consumer_config(prof, {"connect": "tcp://127.0.0.1:6000"})
    assert cfg.role == "connect" and cfg.url == "tcp://127.0.0.1:6000"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"queue": {"maxsize": -1}}, "consumer.queue.maxsize: -1 is not >= 1"),
        ({"buffers": 0}, "consumer.buffers: 0 is not >= 1"),
        ({"parse_in": "gpu"}, "consumer.parse_in: 'gpu' is not one of 'receiver' or 'actor'"),
        ({"queue": {"maxsise": 3}}, "consumer.queue.maxsise: unknown key (did you mean 'maxsize'?)"),
        ({"bind": "udp://x:1"}, "consumer.bind: 'udp://x:1' is not a tcp://HOST:PORT address"),
        ({"bind": "tcp://127.0.0.1:1", "connect": "tcp://127.0.0.1:2"},
         "consumer: bind and connect are exclusive"),
        ({"model": {"compute_ms": 3}}, "consumer.model: must name a kind"),
        ({"device": "tpu"}, "consumer.device: 'tpu' is not one of auto, cpu, cuda, cuda:N"),
        ({"expected_fields": ["timestamp", "nope"]}, "consumer: expected_fields names ['nope'] absent"),
    ],
)
def test_errors_name_the_path(section: dict, message: str) -> None:
    with pytest.raises(ProfileError) as exc:
        consumer_config(section=section)
    assert any(p.startswith(message) for p in exc.value.problems), exc.value.problems


def test_a_bad_flag_is_reported_as_an_override() -> None:
    with pytest.raises(ProfileError) as exc:
        consumer_config(None, {"queue.shards": 0})
    assert exc.value.problems == ["consumer.queue.shards: 0 is not >= 1"]
    assert "command-line" in str(exc.value)


def test_all_interfaces_only_when_asked() -> None:
    assert not consumer_config().binds_all_interfaces
    assert consumer_config(section={"bind": "tcp://0.0.0.0:12321"}).binds_all_interfaces
    assert not consumer_config(section={"connect": "tcp://127.0.0.1:12321"}).binds_all_interfaces


def test_the_profile_model_specs_match_the_model_builders() -> None:
    """The typed consumer.model keys and defaults are the builders' keyword arguments."""
    pytest.importorskip("torch")
    import inspect

    from simstream.pipeline.models import REGISTRY
    from simstream.profile import MODEL_SPECS

    assert set(MODEL_SPECS) == set(REGISTRY)
    for kind, spec in MODEL_SPECS.items():
        params = {n: p.default for n, p in inspect.signature(REGISTRY[kind]).parameters.items()
                  if p.kind == p.KEYWORD_ONLY}
        fields = {n: f.default for n, f in spec.model_fields.items() if n != "kind"}
        assert fields == params, kind
