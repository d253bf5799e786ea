"""A named interface that comes back (a container's eth0 after a docker network
disconnect and connect, as a new device and possibly as eth1) is shaped again
with the phase in force. No privileges: the kernel calls are replaced."""

from __future__ import annotations

import pytest

from simstream.testbed import netns, tc
from simstream.testbed.netns import Testbed


def test_a_recreated_interface_is_followed_and_shaped_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tb = Testbed("t", None, i_know_iface="eth0")
    shaping = tc.Shaping(rate_mbps=400.0)
    tb.plan = tc.plan("eth0", [shaping], {"tbf"})
    tb._shaped, tb._ifindex, tb._known_ifaces = True, 7, {"lo", "eth0"}
    ran: list[list[str]] = []
    monkeypatch.setattr(Testbed, "_run", staticmethod(ran.append))
    index = {"eth0": 7}
    monkeypatch.setattr(netns, "_ifindex", index.get)
    new: list[str] = []
    monkeypatch.setattr(netns, "_new_ethernet", lambda known: new[0] if new else None)
    monkeypatch.setattr(netns.socket, "if_nameindex", lambda: [(1, "lo"), *[
        (i, n) for n, i in index.items()]])

    assert tb.reshape_if_recreated(shaping) is None and not ran  # unchanged
    del index["eth0"]  # cut: the device is gone
    assert tb.reshape_if_recreated(shaping) is None and not ran
    index["eth1"] = 9  # back as the next name
    new.append("eth1")
    lines = tb.reshape_if_recreated(shaping)
    assert lines and any("400" in line for line in lines)
    assert ran == tc.apply_commands("eth1", shaping, tb.plan.layout)
    assert tb.producer_iface == tb.explicit_iface == "eth1"
    ran.clear()
    assert tb.reshape_if_recreated(shaping) is None and not ran  # done once
    index["eth1"] = 12  # cut again, back under the same name: a new index
    assert tb.reshape_if_recreated(shaping) is not None
    assert ran and all(cmd[cmd.index("dev") + 1] == "eth1" for cmd in ran)
