"""simstream's producer against recordings of the real LCLStreamer.

tests/data/lclstreamer/ holds small messages made by LCLStreamer's own classes
(main at 66cc566, the npz-serializer branch at 254604f) for the configs beside
them, and two transport recordings (two urls; a slow reader at the end of the
stream); record.py there says how. Here simstream emits for the same configs
and the two are compared structurally: message count and partial batch, dataset
paths / npz keys, dtypes, shapes, chunks, filters and their parameters, HDF5
allocation and fill times, attributes, zip compression per member, value ranges
and zero padding. simstream's own fields (``/simstream/*``, ``simstream_*``) are
left out: a real LCLStreamer sends none (docs/formats.md).
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import trio

from simstream.lclstreamer import profile_from_lclstreamer_config
from simstream.payload import MessageFactory
from simstream.profile import parse_profile

DATA = Path(__file__).parent / "data" / "lclstreamer"
CONFIGS = sorted(p.stem for p in DATA.glob("*.yaml"))


def _simstream_messages(name: str) -> tuple[Any, list[bytes], list[int]]:
    profile = profile_from_lclstreamer_config(DATA / f"{name}.yaml")
    f = MessageFactory(profile.source, rank=0, seed=profile.seed)
    assert f.total_messages is not None
    msgs = [f.message(k) for k in range(f.total_messages)]
    return profile, [bytes(m.payload) for m in msgs], [m.events for m in msgs]


def _real_messages(name: str) -> tuple[dict[str, Any], list[bytes]]:
    meta = json.loads((DATA / f"{name}.json").read_text())
    ext = meta["format"]
    return meta, [(DATA / f"{name}.{k}.{ext}").read_bytes() for k in range(meta["messages"])]


def _h5_structure(buf: bytes) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with h5py.File(io.BytesIO(buf), "r") as fh:
        def visit(name: str, obj: Any) -> None:
            if not isinstance(obj, h5py.Dataset) or name.startswith("simstream/"):
                return
            plist = obj.id.get_create_plist()
            filters = [plist.get_filter(i)[:3:2] for i in range(plist.get_nfilters())]
            out[name] = {
                "dtype": obj.dtype.str, "shape": obj.shape, "chunks": obj.chunks,
                "filters": [(code, tuple(cd)) for code, cd in filters],
                "alloc_time": plist.get_alloc_time(), "fill_time": plist.get_fill_time(),
                "attrs": dict(obj.attrs),
            }
        fh.visititems(visit)
        out["/"] = {"attrs": dict(fh.attrs)}
    return out


def _npz_structure(buf: bytes) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(io.BytesIO(buf)) as zf, np.load(io.BytesIO(buf)) as z:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if key.startswith("simstream_"):
                continue
            out[key] = {"dtype": z[key].dtype.str, "shape": z[key].shape,
                        "compress_type": info.compress_type}
    return out


def _arrays(buf: bytes) -> dict[str, np.ndarray]:
    if buf[:4] == b"PK\x03\x04":
        with np.load(io.BytesIO(buf)) as z:
            return {k: z[k] for k in z.files if not k.startswith("simstream_")}
    out: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(buf), "r") as fh:
        fh.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                      and not n.startswith("simstream/") else None)
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_same_messages_structure_as_the_real_serializers(name: str) -> None:
    meta, real = _real_messages(name)
    profile, ours, events = _simstream_messages(name)
    # message count and the partial last batch
    assert len(ours) == meta["messages"] and events == meta["events"]
    structure = _npz_structure if meta["format"] == "npz" else _h5_structure
    for k, (r, o) in enumerate(zip(real, ours, strict=True)):
        assert structure(o) == structure(r), f"message {k}"


@pytest.mark.parametrize("name", CONFIGS)
def test_same_value_ranges_and_zero_padding(name: str) -> None:
    meta, real = _real_messages(name)
    _, ours, _ = _simstream_messages(name)
    for r_buf, o_buf in zip(real, ours, strict=True):
        r, o = _arrays(r_buf), _arrays(o_buf)
        assert r.keys() == o.keys()
        for key, ra in r.items():
            oa = o[key]
            if key.endswith("_original_shape"):
                assert oa.tolist() == ra.tolist()  # [B, C, H, W] before padding
                continue
            if ra.ndim > 1:
                # padding: exactly zero where the real images are zero in every event
                pad = (ra == 0).all(axis=0)
                if pad.any():
                    assert (oa[:, pad] == 0).all() and (oa[:, ~pad] != 0).mean() > 0.9
                inside = ra[:, ~pad] if pad.any() else ra
                ours_inside = oa[:, ~pad] if pad.any() else oa
                if ra.dtype.kind in "iu":
                    # randint(0, 255): 0..254 whatever the dtype
                    assert ours_inside.min() >= 0 and ours_inside.max() <= 254
                    assert inside.min() >= 0 and inside.max() <= 254
                else:
                    assert ours_inside.min() >= 0 and ours_inside.max() < 1
                    assert inside.min() >= 0 and inside.max() < 1
            elif key == "timestamp":  # GenericRandomTimestamp
                assert ((oa >= 1.6e9) & (oa < 1.7e9)).all() and ((ra >= 1.6e9) & (ra < 1.7e9)).all()
            elif key == "photon_wavelength":  # GenericRandomWavelength
                assert ((oa >= 0.1) & (oa < 10)).all() and ((ra >= 0.1) & (ra < 10)).all()
            else:  # IntValue / FloatValue: the configured constant
                assert oa.dtype == ra.dtype and (oa == ra).all()


def test_two_urls_split_messages_like_the_real_handler() -> None:
    real = json.loads((DATA / "two-urls.json").read_text())
    profile = profile_from_lclstreamer_config(DATA / "main-float32-two-urls.yaml")
    assert profile.transport.url_spread == "message"
    from simstream.emitter.engine import rank_urls_of

    urls = rank_urls_of(profile, 0)
    per_url = [[k for k in range(real["messages"]) if urls[k % len(urls)] == u] for u in urls]
    assert per_url == real["per_url"]  # [[0, 2, 4, 6], [1, 3, 5, 7]]


def _slow_reader(url_box: dict[str, str], got: list[int], ready: threading.Event,
                 every_s: float) -> None:
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, 1)
    s.setsockopt(zmq.LINGER, 0)
    url_box["url"] = f"tcp://127.0.0.1:{s.bind_to_random_port('tcp://127.0.0.1')}"
    ready.set()
    s.setsockopt(zmq.RCVTIMEO, 30_000)  # the emitter's start, on a loaded machine
    try:
        while True:
            m = s.recv()
            s.setsockopt(zmq.RCVTIMEO, 1000)  # then: the stream is over after 1 s of quiet
            with h5py.File(io.BytesIO(m), "r") as fh:
                got.append(int(fh["simstream/sequence"][0]))
            time.sleep(every_s)
    except zmq.Again:
        pass
    finally:
        s.close()
        ctx.term()


def _emit_to_slow_reader(close: str) -> tuple[list[int], list[dict[str, Any]], Any]:
    from simstream.emitter.engine import run_emitter

    box: dict[str, str] = {}
    got: list[int] = []
    ready = threading.Event()
    th = threading.Thread(target=_slow_reader, args=(box, got, ready, 0.1), daemon=True)
    th.start()
    assert ready.wait(10)
    # as the recording: 21 messages of 1 MiB, unpaced, SNDHWM 5, one PULL with RCVHWM 1;
    # pre-encoded (pool) so the producer outruns the reader even on a loaded machine
    profile = parse_profile({
        "name": "slow-reader", "seed": 0,
        "source": {"batch_size": 1, "shape": [512, 512], "dtype": "float32",
                   "content": "constant", "total_events": 21, "pool": 2,
                   "fields": {"detector_data": "/data/data"}},
        "transport": {"role": "client", "url": box["url"], "sndhwm": 5, "close": close,
                      "connect_timeout_s": 10},
        "timeline": {"phases": [{"name": "unpaced", "rate_hz": None}]},
    })
    records: list[dict[str, Any]] = []
    result = trio.run(lambda: run_emitter(profile, on_record=records.append))
    th.join(30)
    assert not th.is_alive()
    return got, records, result


def _reconcile(records: list[dict[str, Any]], got: list[int]) -> dict[str, Any]:
    from simstream.records.tail import tail_loss

    lost = tail_loss([r["rank"] for r in records], [r["seq"] for r in records],
                     [r["at_close"] for r in records], [0] * len(got), got)
    assert lost is not None
    return lost


def test_end_of_stream_against_a_slow_reader_loses_the_tail_like_the_real_one() -> None:
    real = json.loads((DATA / "slow-reader.json").read_text())
    n = real["messages"]
    for got in real["received"]:
        # the real producer: the head arrives in order, a tail of at most SNDHWM + 1 does not
        assert got == list(range(len(got))) and 1 <= n - len(got) <= 6
    got, records, result = _emit_to_slow_reader("abrupt")
    tail = sorted(r["seq"] for r in records if r["at_close"] is not None)
    assert got == list(range(len(got))) and 1 <= n - len(got) <= 6
    # what did not arrive is exactly what the emit log and the summary call the tail
    assert tail == list(range(len(got), n))
    assert result.ranks[0].lost_at_tail == len(tail)
    delivered = sorted(r["seq"] for r in records if r["outcome"] == "delivered")
    assert delivered == got
    # the reconciliation `simstream run` and `diagnose` report finds the same tail
    lost = _reconcile(records, got)
    assert lost["count"] == len(tail) and lost["not_logged"] == 0
    assert [(m["rank"], m["seq"]) for m in lost["messages"]] == [(0, s) for s in tail]
    assert {m["at_close"] for m in lost["messages"]} <= {"in_flight", "queued"}


def test_graceful_close_loses_nothing_at_the_end() -> None:
    got, records, result = _emit_to_slow_reader("graceful")
    assert got == list(range(21))
    assert all(r["at_close"] is None and r["outcome"] == "delivered" for r in records)
    assert result.ranks[0].lost_at_tail == 0
    assert _reconcile(records, got)["count"] == 0
