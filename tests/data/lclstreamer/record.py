"""How the recordings beside this file were made: the real LCLStreamer, run here.

Nothing here runs in CI and none of LCLStreamer's code is in the project: this
script imports it from a checkout given on the command line, so the files it
writes are what LCLStreamer's own classes produce.

    git clone https://github.com/slac-lcls/lclstreamer /tmp/lclstreamer
    git -C /tmp/lclstreamer worktree add /tmp/lcls_main 66cc566
    git -C /tmp/lclstreamer worktree add /tmp/lcls_npz 254604f   # npz-serializer
    python tests/data/lclstreamer/record.py --main /tmp/lcls_main/src --npz /tmp/lcls_npz/src

Needs numpy, h5py, hdf5plugin, pydantic, pyyaml, rich and pyzmq (simstream's own
dependencies). LCLStreamer also imports ``stream.core.source`` (a decorator from
frobnitzem/stream.py that turns a generator into a pipeline source); it is not
needed to call the generator directly, so a stand-in that returns the function
unchanged is put in ``sys.modules``.

For each ``*.yaml`` here: the config is validated by LCLStreamer's ``Parameters``
model; its ``InternalEventSource`` makes the events (numpy.random seeded with 0),
the configured processing pipeline batches them and the configured serializer
encodes each batch; message k is written to ``NAME.K.h5`` or ``NAME.K.npz``.
``NAME.json`` records the commit, the number of messages and the events in each.

Then two transport recordings with LCLStreamer's BinaryDataStreamingDataHandler
(main), the handler that owns the ZMQ PUSH socket (SNDHWM 5, LINGER 0):

- ``two-urls.json``: role client with two urls, each a PULL socket bound here;
  8 messages; how many reached each url.
- ``slow-reader.json``: role client, one url; a PULL socket with RCVHWM 1 that
  reads one message per 0.3 s; 21 messages of 1 MiB sent as fast as the handler
  takes them, then the handler's socket and context closed as the program's exit
  does; which messages arrived (repeated ``--runs`` times).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
COMMITS = {"main": "66cc566", "npz": "254604f"}


def _use_lclstreamer(src: str) -> None:
    for name in [m for m in sys.modules if m == "lclstreamer" or m.startswith("lclstreamer.")]:
        del sys.modules[name]
    stream = types.ModuleType("stream")
    core = types.ModuleType("stream.core")
    core.source = lambda f: f  # type: ignore[attr-defined]
    stream.core = core  # type: ignore[attr-defined]
    sys.modules["stream"], sys.modules["stream.core"] = stream, core
    sys.path.insert(0, src)


def _unuse(src: str) -> None:
    sys.path.remove(src)


def record_config(path: Path, src: str, branch: str) -> None:
    _use_lclstreamer(src)
    try:
        from lclstreamer.event_data_sources.generic.event_sources import InternalEventSource
        from lclstreamer.models.parameters import Parameters

        params = Parameters(**yaml.safe_load(path.read_text()))
        np.random.seed(0)
        source = InternalEventSource(params.event_source, params.data_sources,
                                     params.source_identifier, 1, 0)
        pp = params.processing_pipeline
        if pp.type == "BatchProcessingPipeline":
            from lclstreamer.processing_pipelines.generic.generic import BatchProcessingPipeline

            pipeline: Any = BatchProcessingPipeline(pp)
        else:
            from lclstreamer.processing_pipelines.crystallography.peaknet import (
                PeaknetPreprocessingPipeline,
            )

            pipeline = PeaknetPreprocessingPipeline(pp)
        ds = params.data_serializer
        if ds.type == "HDF5BinarySerializer":
            from lclstreamer.data_serializers.files.hdf5 import HDF5BinarySerializer

            serializer: Any = HDF5BinarySerializer(ds)
            ext = "h5"
        else:
            from lclstreamer.data_serializers.files.numpy import NumpyBinarySerializer

            serializer = NumpyBinarySerializer(ds)
            ext = "npz"
        events = []
        for k, blob in enumerate(serializer(pipeline(source.get_events()))):
            (HERE / f"{path.stem}.{k}.{ext}").write_bytes(blob)
            events.append(k)
        counts = []
        for k in events:
            f = HERE / f"{path.stem}.{k}.{ext}"
            if ext == "h5":
                import h5py

                with h5py.File(f, "r") as fh:
                    counts.append(int(next(iter(_datasets(fh))).shape[0]))
            else:
                with np.load(f) as z:
                    counts.append(int(z[z.files[0]].shape[0]))
        meta = {"config": path.name, "branch": branch, "commit": COMMITS[branch],
                "format": ext, "messages": len(events), "events": counts}
        (HERE / f"{path.stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(path.name, meta)
    finally:
        _unuse(src)


def _datasets(fh: Any) -> list[Any]:
    import h5py

    out: list[Any] = []
    fh.visititems(lambda n, o: out.append(o) if isinstance(o, h5py.Dataset) else None)
    return out


def _handler(src: str, urls: list[str]) -> Any:
    _use_lclstreamer(src)
    from lclstreamer.data_handlers.streaming.binary import BinaryStreamingPushDataHandlerZmq
    from lclstreamer.models.parameters import BinaryDataStreamingDataHandlerParameters

    params = BinaryDataStreamingDataHandlerParameters(
        type="BinaryDataStreamingDataHandler", urls=urls, role="client")
    return BinaryStreamingPushDataHandlerZmq(params)


def _pull(ctx: Any, rcvhwm: int | None = None) -> tuple[Any, str]:
    import zmq

    s = ctx.socket(zmq.PULL)
    if rcvhwm is not None:
        s.setsockopt(zmq.RCVHWM, rcvhwm)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    return s, f"tcp://127.0.0.1:{port}"


def record_two_urls(src: str) -> None:
    import zmq

    ctx = zmq.Context()
    a, ua = _pull(ctx)
    b, ub = _pull(ctx)
    h = _handler(src, [ua, ub])
    for i in range(8):
        h(i.to_bytes(4, "little"))
    got: dict[str, list[int]] = {ua: [], ub: []}
    for s, u in ((a, ua), (b, ub)):
        s.setsockopt(zmq.RCVTIMEO, 2000)
        try:
            while True:
                got[u].append(int.from_bytes(s.recv(), "little"))
        except zmq.Again:
            pass
    h.close()
    out = {"commit": COMMITS["main"], "messages": 8,
           "per_url": [sorted(got[ua]), sorted(got[ub])]}
    (HERE / "two-urls.json").write_text(json.dumps(out, indent=1) + "\n")
    print("two-urls", out)
    ctx.destroy(linger=0)
    _unuse(src)


def record_slow_reader(src: str, runs: int) -> None:
    import zmq

    results = []
    nbytes = 1 << 20
    for _ in range(runs):
        ctx = zmq.Context()
        pull, url = _pull(ctx, rcvhwm=1)
        got: list[int] = []
        done = threading.Event()

        def reader(pull: Any, got: list[int], done: threading.Event) -> None:
            pull.setsockopt(zmq.RCVTIMEO, 3000)
            try:
                while True:
                    m = pull.recv()
                    got.append(int.from_bytes(m[:4], "little"))
                    time.sleep(0.3)
            except zmq.Again:
                pass
            done.set()

        th = threading.Thread(target=reader, args=(pull, got, done), daemon=True)
        th.start()
        h = _handler(src, [url])
        for i in range(21):
            h(i.to_bytes(4, "little") + bytes(nbytes - 4))
        h.close()  # what the program's exit does: LINGER 0, socket and context closed
        done.wait(60)
        results.append(got)
        ctx.destroy(linger=0)
        _unuse(src)
    out = {"commit": COMMITS["main"], "messages": 21, "nbytes": nbytes, "read_every_s": 0.3,
           "rcvhwm": 1, "received": results}
    (HERE / "slow-reader.json").write_text(json.dumps(out, indent=1) + "\n")
    print("slow-reader", [len(r) for r in results])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--main", required=True, help="lclstreamer main (66cc566) src/ folder")
    ap.add_argument("--npz", required=True, help="lclstreamer npz-serializer (254604f) src/")
    ap.add_argument("--runs", type=int, default=5, help="slow-reader repetitions")
    a = ap.parse_args()
    for cfg in sorted(HERE.glob("*.yaml")):
        branch = "npz" if cfg.name.startswith("npz-") else "main"
        record_config(cfg, a.npz if branch == "npz" else a.main, branch)
    record_two_urls(a.main)
    record_slow_reader(a.main, a.runs)


if __name__ == "__main__":
    main()
