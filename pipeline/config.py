"""The consumer's settings: the profile's ``consumer:`` section, then command-line flags.

The section is typed in the profile model (``simstream.profile.ConsumerConfig``), so a
profile is checked whole when it is loaded (``simstream profiles validate``); this
module adds the command-line layer. Every key has a default, so an empty section (or
no profile) is a valid consumer. Defaults that describe the data (detector field
paths, the random-mode batch) come from the profile's ``source:`` so socket and random
runs see the same batches. Errors name the path from the profile's top, e.g.
``consumer.queue.maxsize: -1 is not >= 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from simstream.profile import (
    DEFAULT_URL,
    ConsumerConfig,
    NoopModelSpec,
    PeakNetModelSpec,
    Profile,
    ProfileError,
    QueueConfig,
    RandomConfig,
    RayConfig,
    SyntheticModelSpec,
    consumer_defaults,
    merge_consumer,
)
from simstream.profile import _messages as _profile_messages

__all__ = [
    "DEFAULT_URL",
    "ConsumerConfig",
    "NoopModelSpec",
    "PeakNetModelSpec",
    "QueueConfig",
    "RandomConfig",
    "RayConfig",
    "SyntheticModelSpec",
    "consumer_config",
]


def consumer_config(
    profile: Profile | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    section: Mapping[str, Any] | None = None,
) -> ConsumerConfig:
    """The consumer's settings: the profile's (already validated) ``consumer:`` section,
    or ``section`` over the defaults from ``profile.source``, then ``overrides`` (dotted
    keys such as ``"queue.backend"``; None values are ignored, as unset flags).

    Raises ProfileError naming each bad path (``consumer.buffers: 0 is not >= 1``).
    """
    if section is not None:
        if not isinstance(section, Mapping):
            raise ProfileError([f"consumer: expected a mapping, got {type(section).__name__}"])
        base = consumer_defaults(profile.source, profile.transport.kind) if profile else {}
        data = merge_consumer(base, section)
    elif profile is not None:
        data = profile.consumer.model_dump(mode="python")
    else:
        data = {}
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
        # an explicit address replaces the other role's
        if dotted == "connect":
            data.pop("bind", None)
        elif dotted == "bind":
            data.pop("connect", None)
    try:
        return ConsumerConfig.model_validate(data)
    except ValidationError as err:
        source = "(with command-line overrides)" if overrides else None
        raise ProfileError(_profile_messages(err, ("consumer",)), source) from None
