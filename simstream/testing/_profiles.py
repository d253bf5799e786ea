"""Turning what a test passes (a name, a path, a dict, a Profile, overrides) into a Profile."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simstream.profile import Profile, find_profile, load_profile, parse_profile

__all__ = ["SECTIONS", "resolve_profile"]

#: the profile sections a test may override by keyword
SECTIONS = ("source", "transport", "network", "timeline", "faults", "stop", "consumer")


def _data(p: Profile) -> dict[str, Any]:
    """The profile as a mapping whose consumer values that merely repeat the source's
    are left out, so they follow a source the test overrides (as with_overrides does)."""
    from simstream.profile import _without_derived, consumer_defaults

    data = p.model_dump(mode="python")
    data["consumer"] = _without_derived(data["consumer"],
                                        consumer_defaults(p.source, p.transport.kind))
    return data


def resolve_profile(profile: str | Path | Mapping[str, Any] | Profile, *,
                    url: str | None = None, count: int | None = None,
                    duration: float | None = None, **overrides: Any) -> Profile:
    """The profile a test asks for, validated.

    ``profile``: a bundled name (``"steady"``, ``"hypotheses/network-bound"``), a
    path to a YAML file, a mapping in the YAML's shape, or a Profile.
    ``overrides``: profile sections by name. A mapping is merged into the
    section key by key (``network={"latency_ms": 5}`` keeps the other network
    keys); a list (``faults=[...]``) or any other value replaces it. Also
    ``seed=`` and ``name=``. ``url`` sets ``transport.url`` (and drops
    ``transport.urls``), ``count`` ``stop.messages``, ``duration``
    ``stop.duration_s``.

    Raises ProfileError naming the bad key (an unknown section, an invalid
    value), as ``simstream emit`` would.
    """
    from simstream.profile import ProfileError

    if isinstance(profile, Profile):
        data = _data(profile)
        source = f"(profile {profile.name})"
    elif isinstance(profile, Mapping):
        data = dict(profile)
        data.setdefault("name", "test")
        source = "(a mapping)"
    elif isinstance(profile, (str, Path)):
        path = find_profile(profile)
        data = _data(load_profile(path))
        source = str(path)
    else:
        raise ProfileError([f"profile: expected a bundled name, a path, a mapping or a Profile, "
                            f"got {type(profile).__name__}"])
    unknown = sorted(set(overrides) - set(SECTIONS) - {"seed", "name", "description"})
    if unknown:
        raise ProfileError([f"{k}: not a profile section; overrides are "
                            f"{', '.join(SECTIONS)}, seed, name" for k in unknown], source)
    for key, value in overrides.items():
        if value is None:
            continue
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="python", exclude_unset=key == "consumer")
        elif isinstance(value, list):
            value = [v.model_dump(mode="python", exclude_none=True) if hasattr(v, "model_dump")
                     else v for v in value]
        current = data.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            data[key] = {**current, **value}
        else:
            data[key] = value
    for section in ("transport", "stop"):
        data[section] = dict(data.get(section) or {})
    if url is not None:
        data["transport"]["url"] = url
        data["transport"]["urls"] = None
    if count is not None:
        data["stop"]["messages"] = count
    if duration is not None:
        data["stop"]["duration_s"] = duration
    return parse_profile(data, source=source + " (with the test's overrides)")
