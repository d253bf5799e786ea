"""``simstream emit``: the fake LCLStreamer.

Layout: ``engine`` (trio tasks per rank: scheduler -> SNDHWM channel -> writer),
``log`` (the emit log, docs/formats.md), ``progress`` (live display and
summary), ``cli`` (the click command), ``sink`` (a small pyzmq PULL
receiver for the loopback demo), ``split`` (ranks and an aggregate cap over
several processes; pure), ``processes`` (``--processes``: child emitters, signal
forwarding) and ``merge`` (their part logs into one emit log). The maths it runs on lives in
``simstream.timing`` and ``simstream.schedule``; the faults in
``simstream.faults``.
"""

from simstream.emitter.engine import EmitResult, RankStats, run_emitter
from simstream.emitter.log import EmitLog, read_log

__all__ = ["EmitLog", "EmitResult", "RankStats", "read_log", "run_emitter"]
