"""``simstream doctor``: one line per item, always exit 0."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from simstream.testbed import detect, doctor

ITEMS = ["privileges", "namespaces", "qdiscs", "pyzmq", "pynng", "cuda", "hdf5plugin"]


def test_one_line_per_item_and_exit_0() -> None:
    r = CliRunner().invoke(doctor.doctor, [])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert [ln.split()[0] for ln in lines] == ITEMS
    for ln in lines:
        assert ln.split()[1] in ("ok", "no"), ln
    by = {ln.split()[0]: ln for ln in lines}
    assert "pyzmq" in by["pyzmq"] and "libzmq" in by["pyzmq"]
    assert "torch" in by["cuda"]
    if os.geteuid() == 0:
        assert by["privileges"].split()[1:3] == ["ok", "root"]
    if detect.probe().netns_ok:
        assert "tbf" in by["qdiscs"] and "netem" in by["qdiscs"]
        if "netem" not in detect.probe().kinds:
            assert "netem NO" in by["qdiscs"] and "load sch_netem" in by["qdiscs"]


def test_without_privileges_says_so_and_still_exit_0(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = detect.KernelOffer(root=False, cap_net_admin=False, tools={"ip": "/x", "tc": "/x"},
                              netns_ok=False, netns_detail="needs root or CAP_NET_ADMIN")
    monkeypatch.setattr(doctor, "probe", lambda: fake)
    r = CliRunner().invoke(doctor.doctor, [])
    assert r.exit_code == 0
    by = {ln.split()[0]: ln for ln in r.output.splitlines()}
    assert "no" in by["privileges"].split()[1] and "user-space shaping" in by["privileges"]
    assert by["namespaces"].split()[1] == "no"
    assert "not probed" in by["qdiscs"]


def test_a_broken_check_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> tuple[bool, str]:
        raise RuntimeError("driver exploded")

    checks = [(n, boom if n == "cuda" else c) for n, c in doctor.CHECKS]
    monkeypatch.setattr(doctor, "CHECKS", checks)
    r = CliRunner().invoke(doctor.doctor, [])
    assert r.exit_code == 0
    cuda = [ln for ln in r.output.splitlines() if ln.startswith("cuda")]
    assert cuda == ["cuda        no  check failed: RuntimeError: driver exploded"]
