"""pipeline: the measured consumer (receive -> parse -> Q1 -> N-way buffered inference).

Needs the ``consumer`` extra (torch, pyzmq). Every stage records its times on the
same clock as the emit log (Unix time in seconds, float), so both ends of a run
can be laid on one timeline; a run takes that clock injected (``clock=``), so its
stages can be tested in fake time.

Layout, in the order a message meets it:

- ``receiver``: messages off the socket (pyzmq, or tcp / nng framed by
  ``simstream.wire``), each stamped with its arrival time and size;
- ``decode`` (one message -> one batch in host memory), ``isolation`` (decoding in
  worker processes), ``parse`` (``Parser``: either of the two);
- ``q1``: the queue between parsing and inference (local, process or Ray shards);
- ``engine``, ``device``, ``pinned``, ``models``: N-way buffered inference on a
  device (torch);
- ``records``: the run directory (through ``simstream.records``);
- the stages: ``context`` (``StageContext``: config, records, Q1, clock, stop;
  ``Q1Item``), ``ingest`` (receive, parse in the receiver or not, random
  batches), ``fast_ingest`` (``layout: fast``: one socket and receiver thread per
  address, parsers putting straight into Q1), ``inference`` (the engine loop, progress and the starvation warning),
  ``summary`` (summary.json's run facts);
- the runners, composing the stages and not each other: ``local_consumer``
  (threads of one process) and ``ray_consumer`` (receiver, Q1 shard and inference
  actors); ``consumer.run_consumer`` picks one;
- ``config`` (the consumer's settings), ``cli`` (``simstream consume``).

The package imports from simstream only its contract (``records``, ``probe``,
``profile``, ``outdir``), ``codec``, ``wire``, ``errors`` and ``clock``;
simstream's CLI and runner are the layer above both (tests/test_architecture.py
checks it).
"""
