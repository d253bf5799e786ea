"""simstream as users install it: the sdist and the wheel built from this checkout,
installed (not editable) into fresh virtual environments outside the checkout, and
the README's commands run from another directory by bundled profile name.

Offline and quick: the build uses this environment's setuptools (no isolation,
nothing downloaded) and each fresh environment sees only the already-installed
distributions its requirements need (the closure of the wheel's own requirements,
linked into one folder on its path), so pip resolves the real requirements and
extras with ``--no-index`` and installs simstream alone. Two environments: the
producer alone (no extra: no torch, no pyzmq) and the ``consumer`` extra.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted(p.relative_to(ROOT / "profiles").with_suffix("").as_posix()
                 for p in (ROOT / "profiles").rglob("*.yaml"))

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _run(cmd: list[str], *, cwd: Path, timeout: float = 120,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    return cp


def _ok(cp: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert cp.returncode == 0, f"{cp.args}\n--- stdout\n{cp.stdout}\n--- stderr\n{cp.stderr}"
    return cp


def _copy_checkout(dest: Path) -> None:
    """The files git would ship (tracked, or new and not ignored), links kept as links."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout to list the project's files")
    out = _ok(_run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                   cwd=ROOT)).stdout
    for rel in sorted(set(filter(None, out.split("\0")))):
        src = ROOT / rel
        if not os.path.lexists(src):
            continue  # deleted in the work tree
        dst = dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


def _build(tmp: Path) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist from a copy of the checkout, the wheel from the sdist."""
    src, dist = tmp / "src", tmp / "dist"
    src.mkdir()
    dist.mkdir()
    _copy_checkout(src)
    code = "import sys; from setuptools import build_meta as b; print(b.{}(sys.argv[1]))"
    sdist = dist / _ok(_run([sys.executable, "-c", code.format("build_sdist"), str(dist)],
                            cwd=src)).stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel = dist / _ok(_run([sys.executable, "-c", code.format("build_wheel"), str(dist)],
                            cwd=unpacked)).stdout.strip().splitlines()[-1]
    return sdist, wheel


def _closure(requirements: list[str], extras: set[str]) -> list[metadata.Distribution]:
    """The installed distributions these requirements need, transitively."""
    from packaging.requirements import Requirement

    seen: dict[str, metadata.Distribution] = {}
    todo = [(r, extras) for r in requirements]
    while todo:
        text, active = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in (active or {""})):
            continue
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{req.name} is not installed here (needed by {text!r})")
        seen[key] = dist
        todo += [(r, set(req.extras)) for r in dist.requires or []]
    return list(seen.values())


def _venv(tmp: Path, name: str, wheel: Path, extras: set[str]) -> Path:
    """A fresh environment with the wheel installed by pip; returns its bin folder."""
    meta = email.parser.Parser().parsestr(
        zipfile.ZipFile(wheel).read(f"simstream-{_version(wheel)}.dist-info/METADATA").decode())
    view = tmp / f"{name}-deps"
    view.mkdir()
    for dist in _closure(meta.get_all("Requires-Dist") or [], extras):
        if dist.files is None:
            pytest.skip(f"{dist.metadata['Name']} has no file list (RECORD)")
        site = Path(str(dist.locate_file("")))
        for top in {f.parts[0] for f in dist.files if f.parts and f.parts[0] != ".."}:
            if top != "__pycache__" and not (view / top).exists() and (site / top).exists():
                (view / top).symlink_to(site / top)
    env_dir = tmp / name
    env = _clean_env()
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=tmp, env=env))
    py = env_dir / "bin" / "python"
    purelib = _ok(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       cwd=tmp, env=env)).stdout.strip()
    (Path(purelib) / "_simstream_test_deps.pth").write_text(f"{view}\n")
    spec = f"simstream[{','.join(sorted(extras))}]" if extras else "simstream"
    _ok(_run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
              "--no-index", "--find-links", str(wheel.parent), "--no-build-isolation", spec],
             cwd=tmp, timeout=180, env=env))
    return env_dir / "bin"


def _version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SIMSTREAM_"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("wheel")
    sdist, wheel = _build(tmp)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    yield {"tmp": tmp, "sdist": sdist, "wheel": wheel, "cwd": elsewhere}


def test_wheel_and_sdist_carry_the_profiles_and_one_top_level_package(
        built: dict[str, Path]) -> None:
    names = zipfile.ZipFile(built["wheel"]).namelist()
    for prof in BUNDLED:
        assert f"simstream/profiles/{prof}.yaml" in names
    assert "simstream/py.typed" in names
    assert "simstream/pipeline/consumer.py" in names
    assert "simstream/testbed/docker-compose.yml" in names
    dist_info = f"simstream-{_version(built['wheel'])}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert {n.split("/")[0] for n in names} == {"simstream", dist_info}
    with tarfile.open(built["sdist"]) as tf:
        sdist_names = {n.split("/", 1)[-1] for n in tf.getnames()}
    assert "simstream/profiles/hypotheses/network-bound.yaml" in sdist_names
    assert "LICENSE" in sdist_names


def test_producer_alone_from_another_directory(built: dict[str, Path]) -> None:
    bin_dir = _venv(built["tmp"], "producer", built["wheel"], set())
    cwd, env = built["cwd"], _clean_env()
    sim = str(bin_dir / "simstream")

    def simstream(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run([sim, *args], cwd=cwd, env=env, timeout=timeout)

    assert _ok(simstream("--version")).stdout.strip() == f"simstream {_version(built['wheel'])}"
    listed = [line.split()[0] for line in _ok(simstream("profiles", "list")).stdout.splitlines()]
    assert sorted(listed) == BUNDLED
    assert _ok(simstream("profiles", "show", "hypotheses/network-bound")).stdout.startswith(
        "name: network-bound")
    dry = _ok(simstream("emit", "--profile", "bursty.yaml", "--dry-run", "--count", "4")).stdout
    assert "4 planned attempts" in dry
    # installed, not linked to the checkout; no generic top-level package; no consumer packages
    probe = _run([str(bin_dir / "python"), "-c",
                  "import simstream, importlib.util as u; print(simstream.__file__); "
                  "print([m for m in ('pipeline', 'zmq', 'torch') if u.find_spec(m)])"],
                 cwd=cwd, env=env)
    where, found = _ok(probe).stdout.splitlines()
    assert not Path(where).resolve().is_relative_to(ROOT) and found == "[]"
    assert "No broken requirements" in _ok(_run(
        [sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "check"],
        cwd=cwd, env=env)).stdout

    # into a listening socket this test owns (length-prefixed TCP, parsed here)
    got: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(60)
        port = srv.getsockname()[1]

        def serve() -> None:
            conn, _ = srv.accept()
            conn.settimeout(60)
            buf = b""
            with conn:
                while chunk := conn.recv(1 << 20):
                    buf += chunk
                    while len(buf) >= 8 and len(buf) >= 8 + struct.unpack(">Q", buf[:8])[0]:
                        n = struct.unpack(">Q", buf[:8])[0]
                        got.append(n)
                        buf = buf[8 + n:]

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        cp = _ok(simstream("emit", "--profile", "steady", "--transport", "tcp",
                           "--url", f"tcp://127.0.0.1:{port}", "--count", "3"))
        th.join(30)
    assert not th.is_alive()
    assert len(got) == 3 and min(got) > 0, (got, cp.stdout)
    assert "delivered 3, cut 0, lost 0" in cp.stdout + cp.stderr

    loop = _ok(simstream("emit", "--profile", "steady", "--loopback", "--count", "2"))
    assert "received 2 messages" in loop.stdout
    consume = simstream("consume", "--mode", "random", "--duration", "1")
    assert consume.returncode == 1 and "pip install 'simstream[consumer]'" in consume.stderr


def test_consumer_extra_runs_a_bundled_profile(built: dict[str, Path]) -> None:
    bin_dir = _venv(built["tmp"], "consumer", built["wheel"], {"consumer"})
    out = built["tmp"] / "run"
    cp = _ok(_run([str(bin_dir / "simstream"), "run", "--profile", "bursty", "--duration", "2",
                   "--out", str(out)], cwd=built["cwd"], env=_clean_env(), timeout=180))
    assert "verdict" in cp.stdout.lower(), cp.stdout
    assert (out / "summary.json").is_file()
