"""``simstream doctor``: one line per thing the testbed, the transports and the
consumer need, with what to do when it is missing. Always exits 0: it reports,
it does not judge (a machine without netem or CUDA is still useful)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click

from simstream.testbed.detect import KINDS, probe

Check = Callable[[], tuple[bool, str]]


def _privileges() -> tuple[bool, str]:
    o = probe()
    if o.root:
        return True, "root"
    if o.cap_net_admin:
        return True, "CAP_NET_ADMIN"
    return False, "neither root nor CAP_NET_ADMIN: kernel shaping unavailable, use user-space shaping"


def _namespaces() -> tuple[bool, str]:
    o = probe()
    if o.missing_tools():
        return False, f"{', '.join(o.missing_tools())} not found: install iproute2"
    if o.netns_ok:
        return True, "ip netns add/del works"
    return False, o.netns_detail


def _qdiscs() -> tuple[bool, str]:
    o = probe()
    if not o.qdiscs:
        return False, f"not probed ({o.netns_detail or 'no namespaces'})"
    parts = []
    for kind in KINDS:
        p = o.qdiscs.get(kind)
        if p is None:
            continue
        parts.append(f"{kind} yes" if p.ok else f"{kind} NO ({p.detail})")
    hint = ""
    if "netem" in o.qdiscs and not o.qdiscs["netem"].ok:
        hint = "; load sch_netem for latency/jitter/loss (rate caps still work with tbf/htb)"
    dist = f"; netem tables: {', '.join(o.dist_tables)}" if o.dist_tables else ""
    return all(p.ok for p in o.qdiscs.values()), ", ".join(parts) + hint + dist


def _module_version(name: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(name)
    except ImportError as e:
        return False, f"not installed ({e}); pip install {name}"
    return True, str(getattr(mod, "__version__", "installed"))


def _pyzmq() -> tuple[bool, str]:
    ok, ver = _module_version("zmq")
    if not ok:
        return ok, ver
    import zmq

    return True, f"pyzmq {ver}, libzmq {zmq.zmq_version()}"


def _pynng() -> tuple[bool, str]:
    ok, ver = _module_version("pynng")
    return ok, (f"pynng {ver}" if ok else ver)


def _cuda() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch not installed (the consumer extra installs it)"
    ver = torch.__version__
    if not torch.cuda.is_available():
        return False, f"torch {ver}: no CUDA device (the consumer runs on the CPU)"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return True, f"torch {ver}, CUDA {torch.version.cuda}: {', '.join(names)}"


def _hdf5plugin() -> tuple[bool, str]:
    try:
        import hdf5plugin
    except ImportError as e:
        return False, f"not installed ({e}); pip install hdf5plugin"
    import h5py

    wanted = {"bshuf": "bitshuffle (lz4, zstd)", "zfp": "zfp", "zstd": "zstd", "lz4": "lz4"}
    present = set(getattr(hdf5plugin, "FILTERS", {}))
    parts = []
    ok = True
    for key, label in wanted.items():
        fid = hdf5plugin.FILTERS.get(key) if key in present else None
        avail = fid is not None and h5py.h5z.filter_avail(fid)
        ok &= bool(avail) or key not in ("bshuf",)
        parts.append(f"{label} {'yes' if avail else 'NO'}")
    return ok, f"hdf5plugin {hdf5plugin.version}: " + ", ".join(parts)


CHECKS: list[tuple[str, Check]] = [
    ("privileges", _privileges),
    ("namespaces", _namespaces),
    ("qdiscs", _qdiscs),
    ("pyzmq", _pyzmq),
    ("pynng", _pynng),
    ("cuda", _cuda),
    ("hdf5plugin", _hdf5plugin),
]


@click.command("doctor")
def doctor() -> None:
    """What this machine offers: privileges, namespaces, qdiscs, transports, CUDA, filters."""
    for name, check in CHECKS:
        try:
            ok, detail = check()
        except Exception as e:  # a broken install must not hide the other lines
            ok, detail = False, f"check failed: {type(e).__name__}: {e}"
        click.echo(f"{name:11s} {'ok ' if ok else 'no '} {detail}")
