"""Run directories and log files: checked before anything starts.

``consume --out``, ``run --out`` and ``emit --log`` call these before opening a
socket or starting a child, so a read-only, missing or occupied place is one
clear line and exit status 2 (``UsageError``), not a traceback half-way through a
run. A run directory holds one run only: a non-empty one is refused unless
``force``, and then its earlier contents are removed wholly (never mixed with the
new run's files). ``force`` removes only what looks like a run directory.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from simstream.errors import UsageError

__all__ = ["RUN_MARKERS", "check_log_file", "prepare_run_dir"]

# files one of simstream's run directories holds (any one marks it as such)
RUN_MARKERS = ("summary.json", "messages.csv", "batches.csv", "profile.yaml", "emit.jsonl",
               "consumer.log", "report.md", "quarantine")


def _why(e: OSError) -> str:
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    return e.strerror or str(e)


def _probe_writable(d: Path, flag: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".simstream-probe-", dir=d)
    except OSError as e:
        raise UsageError(f"{flag} {d}: cannot write there ({_why(e)})") from None
    os.close(fd)
    os.unlink(name)


def prepare_run_dir(path: str | Path, *, force: bool = False, flag: str = "--out") -> Path:
    """Make ``path`` an empty, writable run directory, or raise UsageError.

    Refuses a non-empty directory unless ``force``; with ``force`` its contents go
    (only if it holds one of ``RUN_MARKERS``: an unrelated folder is never emptied).
    """
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise UsageError(f"{flag} {d}: exists and is not a directory")
    if d.is_dir():
        entries = sorted(d.iterdir())
        if entries:
            if not force:
                raise UsageError(
                    f"{flag} {d}: the directory is not empty ({len(entries)} entries, e.g. "
                    f"{entries[0].name}); give a new or empty directory, or --force to replace "
                    f"an earlier run's files")
            if not any((d / m).exists() for m in RUN_MARKERS):
                raise UsageError(
                    f"{flag} {d}: not empty and not a simstream run directory; "
                    f"--force replaces only a run directory's files")
            for e in entries:
                try:
                    if e.is_dir() and not e.is_symlink():
                        shutil.rmtree(e)
                    else:
                        e.unlink()
                except OSError as err:
                    raise UsageError(f"{flag} {d}: cannot remove {e.name} ({_why(err)})") from None
    else:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{flag} {d}: cannot create the directory ({_why(e)})") from None
    _probe_writable(d, flag)
    return d


def check_log_file(path: str | Path, *, flag: str = "--log") -> Path:
    """A log file about to be written: its folder must exist and be writable, and
    the path must not be a directory. Raises UsageError."""
    p = Path(path)
    parent = p.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {p}: folder {parent} does not exist")
    if p.is_dir():
        raise UsageError(f"{flag} {p}: is a directory")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{flag} {p}: cannot write there (permission denied)")
    _probe_writable(parent, flag)
    return p
