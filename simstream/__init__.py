"""simstream: a testbed for data starvation in streaming ML inference.

Layout (where a change belongs):
- ``profile``      the YAML profile contract: models, loading, error messages.
- ``payload``      LCLStreamer-faithful batches (peaks, random, constant, replay).
- ``codec``        HDF5/npz encode and decode, byte-compatible with the real
                   serializer and fast (fixed-layout HDF5 writer, zero-copy reader).
- ``lclstreamer``  maps a real LCLStreamer YAML configuration onto a profile.
- ``wire``         sans-IO framing: ZMTP 3.x, nng SP over TCP, length-prefixed TCP.
                   No I/O in it: bytes in, events out.
- ``timing``       pure timing maths: token bucket, jitter draws, the schedule.
- ``faults``       one fault per module and a registry by name.
- ``emitter``      the trio I/O around the above: ``simstream emit``.
- ``diagnose``     verdicts, reports, plots and traces from a run directory.
- ``cli``          the ``simstream`` command; thin, delegates to the modules.

The consumer side (receiver, parse, Q1, GPU executor) is ``simstream.pipeline``
(the repository's top-level ``pipeline/``); it needs the ``consumer`` extra
(torch, pyzmq, pynng), the producer side does not. The bundled profiles are
package data under ``simstream/profiles`` (the repository's ``profiles/``).
"""

__version__ = "0.1.0"
