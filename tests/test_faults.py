"""Faults: registry, the trigger envelope, and what each fault does to an attempt."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simstream.codec import Scatter
from simstream.faults import FAULTS, Attempt, Trigger, fault_class, make_fault
from simstream.faults.corrupt import Corrupt
from simstream.faults.duplicate import Duplicate
from simstream.faults.reset import Reset
from simstream.faults.slow_close import SlowClose
from simstream.faults.stall import Stall
from simstream.faults.truncate import Truncate
from simstream.profile import FAULT_KINDS, Fault


def test_registry_names_every_fault_kind_of_the_profile() -> None:
    assert set(FAULTS) == set(FAULT_KINDS)
    for name, cls in FAULTS.items():
        assert cls.name == name
    with pytest.raises(KeyError, match="unknown fault 'latency'"):
        fault_class("latency")


def test_reset_cuts_mid_message_at_a_seeded_point() -> None:
    spec = Fault(kind="reset", at_message=1)
    a = make_fault(spec, random.Random(5))
    b = make_fault(spec, random.Random(5))
    assert a == b and isinstance(a, Reset)
    assert 0.05 <= a.cut_fraction <= 0.95
    att = a.apply(Attempt(b"x" * 1000))
    assert att.cut_after_bytes() == int(1000 * a.cut_fraction)


def test_truncate_sends_its_fraction() -> None:
    t = make_fault(Fault(kind="truncate", at_message=0, fraction=0.3), random.Random(0))
    assert isinstance(t, Truncate)
    assert t.apply(Attempt(b"x" * 1000)).cut_after_bytes() == 300
    assert make_fault(Fault(kind="truncate", at_message=0), random.Random(0)).fraction == 0.5


@given(st.integers(1, 10**7), st.floats(0.0, 1.0, exclude_min=True, exclude_max=True))
def test_a_cut_is_always_strictly_inside_the_message(size: int, fraction: float) -> None:
    cut = Attempt(b"", cut_fraction=fraction).with_(payload=memoryview(bytes(min(size, 64))))
    n = cut.cut_after_bytes(wire_overhead=9)
    assert n is not None and 1 <= n < cut.nbytes + 9


def test_corrupt_flips_exactly_nbytes_in_a_copy() -> None:
    c = make_fault(Fault(kind="corrupt", at_message=0, nbytes=5), random.Random(2))
    assert isinstance(c, Corrupt)
    original = bytearray(b"\x89HDF\r\n\x1a\n" + bytes(200))
    frozen = bytes(original)
    out = c.apply(Attempt(original)).payload
    assert original == frozen  # never mutates the (pooled) input
    diff = [i for i in range(len(frozen)) if out[i] != frozen[i]]
    assert len(diff) == 5 and diff[0] < 4
    assert len(out) == len(frozen)  # framing sizes unchanged
    # a pooled message's pieces (the emitter's payloads): the same flips, the pool's
    # bytes untouched
    pieces = Scatter([frozen[:100], frozen[100:]])
    assert c.apply(Attempt(pieces)).payload == out and bytes(pieces) == frozen


def test_corrupt_on_a_tiny_payload_flips_at_most_its_length() -> None:
    c = Corrupt(signature_offset=3, positions=(0.1, 0.9, 0.5), masks=(1, 2, 4, 8))
    out = c.apply(Attempt(b"ab")).payload
    assert out != b"ab" and len(out) == 2


def test_stall_duplicate_slow_close_attributes() -> None:
    s = make_fault(Fault(kind="stall", at_s=1, duration_ms=250), random.Random(0))
    assert isinstance(s, Stall) and s.shift_s == 0.25
    assert s.apply(Attempt(b"x")).silence_s == 0.25
    d = make_fault(Fault(kind="duplicate", probability=0.5), random.Random(0))
    assert isinstance(d, Duplicate) and d.apply(Attempt(b"x")) == Attempt(b"x")
    sc = make_fault(Fault(kind="slow_close", at_message=3, duration_ms=40), random.Random(0))
    assert isinstance(sc, SlowClose) and sc.apply(Attempt(b"x")).close_s == 0.04
    default = make_fault(Fault(kind="slow_close", at_message=3), random.Random(0))
    assert default.apply(Attempt(b"x")).close_s == 1.0


def test_trigger_envelope() -> None:
    t = Trigger(every_messages=250)
    assert [s for s in range(1001) if t.message_occurs(s)] == [250, 500, 750, 1000]
    assert Trigger(at_message=0).message_occurs(0)
    ts = Trigger(every_s=3.0, at_s=1.0)
    got, after = [], -1.0
    for _ in range(4):
        nxt = ts.next_time(after)
        assert nxt is not None
        got.append(nxt)
        after = nxt
    assert got == [1.0, 3.0, 6.0, 9.0]
    assert Trigger(at_s=2.0).next_time(2.0) is None
    assert Trigger(probability=0.2, rank=1).applies_to(1)
    assert not Trigger(probability=0.2, rank=1).applies_to(0)
    assert Trigger(probability=0.2).probability_only
    rng = random.Random(9)
    hits = sum(Trigger(probability=0.2).passes_probability(rng) for _ in range(10_000))
    assert 1800 < hits < 2200
