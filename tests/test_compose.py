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
from simstream.profile import find_profile, load_profile, split_url

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


# the packages of pyproject's optional extras (consumer, report, capture, ray)
OPTIONAL_PACKAGES = frozenset({"torch", "zmq", "pynng", "matplotlib", "scapy", "ray"})


def _compose() -> dict[str, Any]:
    """The compose file with ${VAR:-default} replaced by its default, as compose does
    when VAR is unset."""
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", COMPOSE.read_text())
    return yaml.safe_load(text)  # type: ignore[no-any-return]


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
        # only a missing optional extra is a skip; a broken import of our own is a failure
        if (e.name or "").split(".")[0] not in OPTIONAL_PACKAGES:
            raise
        pytest.skip(f"`simstream {sub}` needs the optional package {e.name}, which is not installed")
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


EMITTERS = ("emitter-0", "emitter-1")


def test_compose_structure() -> None:
    c = _compose()
    svc = c["services"]
    assert {"consumer", *EMITTERS, "diagnose"} <= set(svc)
    assert "runs" in c["volumes"]
    for name in ("consumer", *EMITTERS, "diagnose"):
        assert "runs:/runs" in svc[name]["volumes"], name
        assert svc[name]["image"] == "simstream:latest"
    for rank, name in enumerate(EMITTERS):
        cmd = svc[name]["command"]
        assert svc[name]["cap_add"] == ["NET_ADMIN"]
        # each emitter its own rank and its own emit log, which the kernel timeline follows
        assert cmd[cmd.index("--rank-offset") + 1] == str(rank)
        log = f"/runs/testbed/emit-rank{rank}.jsonl"
        assert cmd[cmd.index("--log") + 1] == log == cmd[cmd.index("--sync-log") + 1]
        assert svc["diagnose"]["depends_on"][name]["condition"] == \
            "service_completed_successfully"
    # the consumer is reachable inside the compose network only
    assert "ports" not in svc["consumer"]
    text = COMPOSE.read_text()
    assert "# deploy:" in text and "capabilities: [gpu]" in text  # GPU block documented


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


@pytest.mark.parametrize("service", ["consumer", *EMITTERS, "diagnose"])
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


def test_profiles_are_bundled_and_ports_agree() -> None:
    svc = _services()
    for s in svc.values():
        cmd = s["command"]
        if "--profile" in cmd:
            load_profile(find_profile(cmd[cmd.index("--profile") + 1]))  # a valid bundled one
    cons = svc["consumer"]["command"]
    bind = cons[cons.index("--bind") + 1]
    out = cons[cons.index("--out") + 1]
    bind_host, bind_port = split_url(bind)
    assert bind_host == "0.0.0.0"
    assert str(bind_port) in svc["consumer"]["expose"]
    for name in EMITTERS:
        emit = svc[name]["command"]
        url_host, url_port = split_url(emit[emit.index("--url") + 1])
        assert url_port == bind_port == 12321 and url_host == "consumer"
        assert emit[emit.index("--log") + 1].startswith(out + "/")
    diag = svc["diagnose"]["command"]
    assert out in diag  # one run directory for all


def test_dockerfile_defaults_to_slim_cpu_with_a_cuda_build_arg() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=?(.*)$", text, flags=re.M))
    assert args["BASE_IMAGE"].endswith("-slim")
    assert text.index("ARG BASE_IMAGE") < text.index("FROM ${BASE_IMAGE}")
    assert args["TORCH_INDEX"].endswith("/whl/cpu")
    assert "nvidia/cuda" in text  # the CUDA build is documented
    assert "iproute2" in text
    # no registry: the wheelhouse `make image` fills, installed with --no-index
    assert "COPY docker/wheelhouse /wheelhouse" in text
    assert 'pip install --no-compile --no-index --find-links /wheelhouse "simstream[${EXTRAS}]"' in text
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
