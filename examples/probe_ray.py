"""Sketch: the production Ray layout recording itself with ``simstream.probe`` (docs/probe.md).

The layout: a producer actor with a pyzmq PULL socket that receives and parses
each message, sharded Ray queue actors (Q1), and a double-buffered CUDA actor
that copies a batch in (H2D) on one stream while the other buffer computes.
Stage times are taken where they happen and ride along with the batch (a small
dict of floats); the CUDA actor, which sees every batch last, owns the Probe.
Every line the probe needs is marked ``# probe``: the dozen a production
pipeline adds. ``simstream diagnose OUT`` then names the bottleneck.

This is a sketch of a pipeline that is not part of simstream: it shows where
the calls go, it is not a tested consumer (examples/probe_consumer.py is).
"""

from __future__ import annotations

import numpy as np
import ray
import torch
import zmq

from simstream import codec
from simstream.clock import now  # probe: the one timeline (Unix seconds)
from simstream.probe import Probe

SHARDS, MAXSIZE = 4, 16


@ray.remote
class QueueShard:
    def __init__(self) -> None:
        self.items: list = []

    def put(self, item) -> bool:
        if len(self.items) >= MAXSIZE // SHARDS:
            return False
        self.items.append(item)
        return True

    def get(self):
        return self.items.pop(0) if self.items else None

    def size(self) -> int:
        return len(self.items)


@ray.remote
class Producer:
    def __init__(self, url: str, shards: list) -> None:
        self.sock = zmq.Context().socket(zmq.PULL)
        self.sock.bind(url)
        self.shards = shards

    def run(self, count: int) -> None:
        for i in range(count):
            raw = self.sock.recv()
            stamps = {"t_arrival": now(), "nbytes": len(raw)}  # probe
            stamps["t_parse_start"] = now()  # probe
            arrays = codec.decode(raw)
            stamps["t_parse_end"] = now()  # probe
            rank = int(arrays["simstream/rank"][0])
            seq = int(arrays["simstream/sequence"][0])
            shard = self.shards[i % SHARDS]
            while not ray.get(shard.put.remote((rank, seq, arrays["data/data"], stamps))):
                pass  # backpressure: Q1 is full


@ray.remote(num_gpus=1)
class Inference:
    def __init__(self, out: str, shards: list, model: torch.nn.Module) -> None:
        self.shards, self.model = shards, model.cuda()
        self.streams = [torch.cuda.Stream() for _ in range(2)]  # double buffer
        self.probe = Probe(out, device=torch.cuda.get_device_name())  # probe
        self.probe.sample_queue(  # probe: Q1 depth over all shards
            lambda: sum(ray.get([s.size.remote() for s in self.shards])), maxsize=MAXSIZE)

    def run(self, count: int) -> None:
        p = self.probe
        for i in range(count):
            t_get = now()
            item = None
            while item is None:
                item = ray.get(self.shards[i % SHARDS].get.remote())
            rank, seq, data, s = item
            n = p.message_arrived(s["nbytes"], rank, seq, events=len(data), t=s["t_arrival"])  # probe
            p.stage_started("parse", n, t=s["t_parse_start"])  # probe: timed in the producer
            p.stage_ended("parse", n, t=s["t_parse_end"])  # probe
            p.stage_started("q1_get", n, t=t_get)  # probe
            p.stage_ended("q1_get", n)  # probe
            stream = self.streams[i % 2]
            with torch.cuda.stream(stream):
                with p.stage("h2d", n, buffer=i % 2):  # probe
                    x = torch.from_numpy(np.ascontiguousarray(data)).cuda(non_blocking=True)
                    stream.synchronize()
                with p.stage("compute", n, buffer=i % 2):  # probe
                    y = self.model(x)
                    stream.synchronize()
                with p.stage("d2h", n, buffer=i % 2):  # probe: its end finishes the batch
                    y.cpu()

    def close(self) -> dict:
        return self.probe.close()  # probe: writes summary.json


def main(out: str = "runs/ray-probe", url: str = "tcp://0.0.0.0:12321", count: int = 1000) -> None:
    ray.init()
    shards = [QueueShard.remote() for _ in range(SHARDS)]
    producer = Producer.remote(url, shards)
    inference = Inference.remote(out, shards, torch.nn.Conv2d(1, 8, 3))
    ray.get([producer.run.remote(count), inference.run.remote(count)])
    print(ray.get(inference.close.remote()))


if __name__ == "__main__":
    main()
