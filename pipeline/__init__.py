"""pipeline: the measured consumer (receive -> parse -> Q1 -> N-way buffered inference).

Needs the ``consumer`` extra (torch, pyzmq). Every stage records its times on the
same clock as the emit log (Unix time in seconds, float), so both ends of a run
can be laid on one timeline.
"""
