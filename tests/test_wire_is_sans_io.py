"""The wire modules do no I/O: they import nothing that could (checked on the source and
in a fresh interpreter)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import simstream.wire

FORBIDDEN = {"trio", "socket", "asyncio", "select", "selectors", "ssl", "anyio", "threading"}
WIRE_DIR = pathlib.Path(simstream.wire.__file__).parent
MODULES = sorted(WIRE_DIR.glob("*.py"))


def imported_roots(path: pathlib.Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            roots.add("__import__")  # dynamic imports would dodge this check
    return roots


def test_all_wire_modules_are_checked() -> None:
    names = {p.stem for p in MODULES}
    assert {"__init__", "errors", "zmtp", "nng", "lenprefix"} <= names


def test_wire_modules_import_no_io() -> None:
    for path in MODULES:
        bad = imported_roots(path) & (FORBIDDEN | {"__import__", "importlib"})
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_ast_check_catches_an_io_import(tmp_path: pathlib.Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from trio import socket as s\nimport os, select\n")
    assert imported_roots(sneaky) & FORBIDDEN == {"trio", "select"}


def test_importing_the_wire_loads_no_io_module() -> None:
    code = (
        "import sys\n"
        "import simstream.wire, simstream.wire.zmtp, simstream.wire.nng, simstream.wire.lenprefix\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == ""
