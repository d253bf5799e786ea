"""Container faults scripted in the profile (link_cut, host_pause, host_kill): the
profile's validation both ways, the docker driver turning them into the schedule the
equivalent --fault options make, and the warning of every path that cannot apply
them. Unit tests only: no engine, no containers (tests/test_compose_live.py runs
the driver for real)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from simstream.cli import cli, main
from simstream.errors import UsageError
from simstream.profile import (
    HOST_FAULT_KINDS,
    ProfileError,
    container_fault_warnings,
    parse_profile,
)
from simstream.schedule import iter_schedule
from simstream.testbed.docker import (
    PROFILE_MOUNT,
    SERVICES,
    parse_fault,
    profile_faults,
    profile_mount_override,
    read_profile_faults,
)
from simstream.testbed.netns import Testbed

HOST_FAULTS: list[dict[str, Any]] = [
    {"kind": "link_cut", "replica": 1, "at_s": 1, "duration_s": 2},
    {"kind": "host_pause", "replica": 0, "at_s": 0.5, "duration_s": 1},
    {"kind": "host_kill", "replica": 0, "at_s": 3, "restart_after_s": 1.5},
]
# the same faults as --fault options
SAME_AS_OPTIONS = ["cut:emitter-1:1:2", "pause:emitter-0:0.5:1", "kill:emitter-0:3:1.5"]


def _profile(faults: list[dict[str, Any]], **more: Any) -> Any:
    return parse_profile({"name": "hf", "faults": faults, "stop": {"messages": 20}, **more})


def test_valid_container_faults_load() -> None:
    p = _profile([*HOST_FAULTS, {"kind": "reset", "at_message": 5}])
    assert [f.kind for f in p.faults] == [*HOST_FAULT_KINDS, "reset"]
    assert [f.hold_s for f in p.faults[:3]] == [2.0, 1.0, 1.5]
    assert not p.faults[3].is_host_fault


@pytest.mark.parametrize(("fault", "says"), [
    ({"kind": "link_cut", "replica": 1, "at_s": 1}, "needs duration_s"),
    ({"kind": "host_kill", "at_s": 1, "restart_after_s": 2}, "needs replica"),
    ({"kind": "host_pause", "replica": 0, "duration_s": 1}, "needs at_s"),
    ({"kind": "host_kill", "replica": 0, "at_s": 1, "duration_s": 1, "restart_after_s": 1},
     "duration_s does not apply to container fault 'host_kill'"),
    ({"kind": "link_cut", "replica": 0, "at_s": 1, "duration_s": 1, "every_s": 5},
     "every_s does not apply to container fault 'link_cut'"),
    ({"kind": "host_pause", "replica": 0, "at_s": 1, "duration_s": 1, "rank": 0},
     "rank does not apply"),
    ({"kind": "reset", "at_message": 1, "replica": 0}, "replica does not apply to fault 'reset'"),
    ({"kind": "stall", "at_s": 1, "duration_ms": 5, "duration_s": 1}, "duration_s does not apply"),
    ({"kind": "link_cut", "replica": -1, "at_s": 1, "duration_s": 1}, "replica"),
    ({"kind": "link_cut", "replica": 0, "at_s": 1, "duration_s": 0}, "duration_s"),
    ({"kind": "link_melt", "replica": 0, "at_s": 1, "duration_s": 1}, "link_cut"),
])
def test_bad_container_faults_are_refused_by_name(fault: dict[str, Any], says: str) -> None:
    with pytest.raises(ProfileError) as e:
        _profile([fault])
    assert "faults[0]" in str(e.value) and says in str(e.value), str(e.value)


def test_profile_faults_make_the_schedule_of_the_same_fault_options() -> None:
    p = _profile([*HOST_FAULTS, {"kind": "stall", "every_s": 1, "duration_ms": 10}])
    # the emitter's own faults are not the driver's
    assert profile_faults(p) == [parse_fault(x) for x in SAME_AS_OPTIONS]


def test_a_replica_without_a_container_is_a_usage_error() -> None:
    p = _profile([{"kind": "host_pause", "replica": 2, "at_s": 1, "duration_s": 1}])
    with pytest.raises(UsageError, match=r"faults\[0\] host_pause: replica 2 has no container"):
        profile_faults(p)


def test_docker_up_refuses_bad_profile_faults_with_exit_2(tmp_path: Path) -> None:
    # checked before the engine is asked for anything: exit 2 with or without docker
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nfaults:\n  - {kind: host_kill, replica: 0, at_s: 1}\n")
    far = tmp_path / "far.yaml"
    far.write_text("name: far\nfaults:\n"
                   "  - {kind: link_cut, replica: 7, at_s: 1, duration_s: 1}\n")
    for path in (bad, far):
        with pytest.raises(SystemExit) as e:
            main(["testbed", "docker", "up", "--profile", str(path), "--duration", "1"])
        assert e.value.code == 2


def test_read_profile_faults_from_a_file_and_a_path_only_in_the_image(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("name: p\nfaults:\n  - {kind: link_cut, replica: 1, at_s: 1, duration_s: 2}\n")
    assert read_profile_faults(str(f)) == ([parse_fault("cut:emitter-1:1:2")], None)
    assert read_profile_faults("bursty") == ([], None)  # bundled, no container faults
    faults, note = read_profile_faults("/nowhere/in-image.yaml")
    assert faults == [] and note is not None and "faults section is not read" in note


def test_the_emitter_plans_none_of_them_and_warns(tmp_path: Path) -> None:
    with_host = _profile([*HOST_FAULTS, {"kind": "reset", "at_message": 5}])
    without = _profile([{"kind": "reset", "at_message": 5}])
    planned = [(s.seq, s.t_sched, s.fault_names) for s in iter_schedule(with_host)]
    assert planned == [(s.seq, s.t_sched, s.fault_names) for s in iter_schedule(without)]
    assert [f for _, _, f in planned if f] == [["reset"]]

    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nstop: {messages: 2}\nfaults:\n"
        "  - {kind: host_kill, replica: 0, at_s: 3, restart_after_s: 1.5}\n")
    res = CliRunner().invoke(cli, ["emit", "--profile", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert ("warning: faults[0] host_kill emitter-0 at +3 s restart after 1.5 s: a container "
            "fault, applied only by `simstream testbed docker up` (from the host); ignored by "
            "simstream emit") in res.stderr


def test_link_shaping_reports_them_not_applied() -> None:
    p = _profile(HOST_FAULTS)
    lines = Testbed._container_faults(SimpleNamespace(profile=p))  # type: ignore[arg-type]
    assert lines == container_fault_warnings(p, "the link shaping (simstream testbed up)")
    assert len(lines) == 3 and lines[0].startswith("faults[0] link_cut emitter-1 at +1 s for 2 s")
    assert Testbed._container_faults(SimpleNamespace(profile=None)) == []  # type: ignore[arg-type]


def test_a_host_profile_file_is_mounted_into_every_container(tmp_path: Path) -> None:
    f = tmp_path / "a profile: odd.yaml"
    f.write_text("name: p\n")
    override = yaml.safe_load(profile_mount_override(f))
    mount = {"type": "bind", "source": str(f.resolve()), "target": PROFILE_MOUNT,
             "read_only": True}
    assert override == {"services": {s: {"volumes": [mount]} for s in SERVICES}}
