"""``python -m simstream``: the same as the ``simstream`` command."""

from simstream.cli import main

main()
