"""The ``simstream`` command. Thin: each subcommand lives beside the code it drives
and is imported only when used, so ``simstream profiles`` works on a node
without torch."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from typing import Any

import click

from simstream import __version__
from simstream.errors import UsageError
from simstream.profile import (
    ProfileError,
    bundled_profiles,
    dump_profile,
    find_profile,
    load_profile,
    profile_schema,
)

# subcommand name -> "module:attribute"; imported lazily
_LAZY = {
    "emit": "simstream.emitter.cli:emit",
    "consume": "simstream.pipeline.cli:consume",
    "run": "simstream.runner.cli:run",
    "investigate": "simstream.runner.cli:investigate",
    "diagnose": "simstream.diagnose.cli:diagnose",
    "codec": "simstream.codec_cli:codec",
    "testbed": "simstream.testbed.cli:testbed",
    "doctor": "simstream.testbed.doctor:doctor",
    "capture": "simstream.testbed.capture:capture",
    "verify": "simstream.testbed.verify:verify",
}

# the long-running programs that allocate one buffer per message (simstream.memory)
_STREAMING = frozenset({"emit", "consume"})


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        for name, target in _LAZY.items():
            if importlib.util.find_spec(target.split(":")[0]) is not None:
                names.add(name)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in _LAZY:
            return cmd
        module, attr = _LAZY[cmd_name].split(":")
        if cmd_name in _STREAMING:
            from simstream.memory import Trimmer

            Trimmer().start()  # a daemon thread: it ends with the program
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (e.name == module or module.startswith(e.name + ".")):
                return None
            raise click.ClickException(
                f"'{cmd_name}' needs the Python package {e.name!r}; install it "
                f"(e.g. pip install 'simstream[consumer]')"
            ) from None
        lazy: click.Command = getattr(mod, attr)
        return lazy


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="simstream",
                      message="%(prog)s %(version)s")
def cli() -> None:
    """A fake LCLStreamer and a measured GPU consumer, to find why inference starves."""


@cli.group()
def profiles() -> None:
    """List, show, validate profiles; print their JSON Schema."""


@profiles.command("list")
def profiles_list() -> None:
    """The bundled profiles, one line each."""
    for name, path in bundled_profiles().items():
        try:
            desc = load_profile(path).description
        except ProfileError as e:
            desc = f"INVALID: {e.problems[0]}"
        click.echo(f"{name:28s} {desc}")


@profiles.command("show")
@click.argument("name")
def profiles_show(name: str) -> None:
    """A profile with every default written out (NAME: bundled name or path)."""
    click.echo(dump_profile(load_profile(find_profile(name))), nl=False)


@profiles.command("validate")
@click.argument("files", nargs=-1, required=True)
def profiles_validate(files: tuple[str, ...]) -> None:
    """Validate profile FILES; exit 2 if any is invalid."""
    bad = 0
    for f in files:
        try:
            load_profile(find_profile(f))
        except ProfileError as e:
            bad += 1
            click.echo(str(e), err=True)
        else:
            click.echo(f"{f}: ok")
    if bad:
        sys.exit(2)


@profiles.command("schema")
def profiles_schema() -> None:
    """The profile's JSON Schema, for editors."""
    click.echo(json.dumps(profile_schema(), indent=2))


# optional packages -> the extra that installs them
_EXTRAS = {"torch": "consumer", "zmq": "consumer", "pynng": "consumer", "matplotlib": "report",
           "scapy": "capture", "ray": "ray"}


def main(argv: list[str] | None = None) -> Any:
    from simstream.runner.procs import die_with_parent_from_env

    die_with_parent_from_env()
    try:
        return cli.main(args=argv, prog_name="simstream", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (ProfileError, UsageError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root not in _EXTRAS:
            raise
        click.echo(f"error: this needs the Python package {root!r}, which is not installed: "
                   f"pip install 'simstream[{_EXTRAS[root]}]'", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
