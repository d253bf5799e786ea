"""docker-compose.yml and Dockerfile, validated without a Docker engine: YAML
structure, every service command parsed by the real click commands, mounted
paths present, ports agreeing, and ``docker compose config`` where a client
with the compose plugin exists."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from simstream.cli import _LAZY
from simstream.profile import load_profile, split_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# subcommands defined beside the testbed; the top-level CLI maps them lazily too
_OWN = {
    "testbed": "simstream.testbed.cli:testbed",
    "doctor": "simstream.testbed.doctor:doctor",
    "capture": "simstream.testbed.capture:capture",
    "verify": "simstream.testbed.verify:verify",
}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]  # type: ignore[no-any-return]


def _command_target(sub: str) -> str:
    target = {**_LAZY, **_OWN}.get(sub)
    assert target, f"`simstream {sub}` is not a known subcommand"
    return target


def _click_command(sub: str) -> click.Command:
    target = _command_target(sub)
    module, attr = target.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        pytest.skip(f"`simstream {sub}` is not available in this tree yet ({e.name} missing)")
    return getattr(mod, attr)  # type: ignore[no-any-return]


def _simstream_invocations(argv: list[str]) -> list[list[str]]:
    """The simstream command lines in a service command (a `testbed up ... -- CMD` holds two)."""
    assert argv[0] == "simstream", argv
    if "--" in argv:
        i = argv.index("--")
        return [argv[:i], *_simstream_invocations(argv[i + 1:])]
    return [argv]


def _host_path(container_path: str, volumes: list[str]) -> Path | None:
    for v in volumes:
        src, dst = v.split(":")[:2]
        if src.startswith(".") and (container_path == dst or container_path.startswith(dst + "/")):
            return ROOT / src / container_path[len(dst):].lstrip("/")
    return None


def test_compose_structure() -> None:
    c = _compose()
    svc = c["services"]
    assert {"consumer", "emitter", "diagnose"} <= set(svc)
    assert "runs" in c["volumes"]
    for name in ("consumer", "emitter", "diagnose"):
        assert "runs:/runs" in svc[name]["volumes"], name
        assert svc[name]["image"] == "simstream:latest"
    assert svc["emitter"]["cap_add"] == ["NET_ADMIN"]
    # the consumer is reachable inside the compose network only
    assert "ports" not in svc["consumer"]
    assert svc["diagnose"]["depends_on"]["emitter"]["condition"] == \
        "service_completed_successfully"
    text = COMPOSE.read_text()
    assert "# deploy:" in text and "capabilities: [gpu]" in text  # GPU block documented
    assert "--scale emitter=" in text  # scaling documented


def _on_host(args: list[str], volumes: list[str], scratch: Path) -> list[str]:
    """Container paths made host paths: bind mounts to the tree, named volumes to scratch."""
    out = []
    for a in args:
        host = _host_path(a, volumes) if a.startswith("/") else None
        if host is None and a.startswith("/runs/"):
            host = scratch / a.removeprefix("/runs/")
            host.parent.mkdir(parents=True, exist_ok=True)
        out.append(str(host) if host is not None else a)
    return out


@pytest.mark.parametrize("service", ["consumer", "emitter", "diagnose"])
def test_service_commands_parse_with_the_real_click_commands(service: str,
                                                             tmp_path: Path) -> None:
    argv = _services()[service]["command"]
    volumes = _services()[service]["volumes"]
    for inv in _simstream_invocations(argv):
        sub = inv[1]
        cmd = _click_command(sub)
        args = inv[2:]
        if isinstance(cmd, click.Group):
            sub2 = cmd.get_command(click.Context(cmd), args[0])
            assert sub2 is not None, f"simstream {sub} {args[0]}: no such command"
            cmd, args = sub2, args[1:]
        # parses (types, choices, required options) without running anything
        ctx = cmd.make_context(f"simstream {sub}", list(args), resilient_parsing=False)
        assert ctx.params is not None
        if any(p.name == "dry_run" for p in cmd.params):
            # and runs, as far as a dry run goes, with the mounted files
            res = CliRunner().invoke(cmd, [*_on_host(list(args), volumes, tmp_path),
                                           "--dry-run"])
            assert res.exit_code == 0, (inv, res.output, res.exception)
            assert "dry run:" in res.output


def test_mounted_paths_exist_and_ports_agree() -> None:
    svc = _services()
    for name, s in svc.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name}: {src} does not exist"
        for arg in s["command"]:
            if arg.startswith("/profiles/"):
                host = _host_path(arg, s["volumes"])
                assert host is not None and host.exists(), f"{name}: {arg} -> {host}"
                load_profile(host)  # and it is a valid profile
    cons = svc["consumer"]["command"]
    bind = cons[cons.index("--bind") + 1]
    emit = svc["emitter"]["command"]
    url = emit[emit.index("--url") + 1]
    bind_host, bind_port = split_url(bind)
    url_host, url_port = split_url(url)
    assert bind_host == "0.0.0.0"
    assert url_port == bind_port == 12321
    assert url_host == "consumer"
    assert str(bind_port) in svc["consumer"]["expose"]
    out = cons[cons.index("--out") + 1]
    log = emit[emit.index("--log") + 1]
    diag = svc["diagnose"]["command"]
    assert log.startswith(out + "/") and diag[-1] == out  # one run directory for all three


def test_dockerfile_defaults_to_slim_cpu_with_a_cuda_build_arg() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=?(.*)$", text, flags=re.M))
    assert args["BASE_IMAGE"].endswith("-slim")
    assert text.index("ARG BASE_IMAGE") < text.index("FROM ${BASE_IMAGE}")
    assert args["TORCH_INDEX"].endswith("/whl/cpu")
    assert "nvidia/cuda" in text  # the CUDA build is documented
    assert "iproute2" in text
    assert 'pip install ".[consumer,capture,report]"' in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "runs", "*.pcap"} <= set(ignore)
    # compose builds with the same arguments the Dockerfile declares
    build_args = _compose()["x-simstream"]["build"]["args"]
    assert set(build_args) <= set(args)


def _compose_clients() -> list[list[str]]:
    """The compose validators on this machine: `docker compose` (the v2 plugin)
    and the standalone `docker-compose` (Debian's package, installed by
    `make system-deps`); both parse and validate without a Docker engine."""
    found = []
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                               timeout=30)
        if probe.returncode == 0:
            found.append([docker, "compose"])
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        found.append([legacy])
    return found


def test_docker_compose_config_where_a_client_can() -> None:
    clients = _compose_clients()
    if not clients:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    for client in clients:
        cp = subprocess.run([*client, "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert cp.returncode == 0, (client, cp.stderr)
