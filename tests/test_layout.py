"""The consumer is installed under simstream's own namespace, not as a top-level
``pipeline`` package another distribution could overwrite."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_files():
    for top in ("simstream", "pipeline", "tests", "bench", "examples"):
        base = ROOT / top
        if not base.is_dir() or base.is_symlink():
            continue
        yield from base.rglob("*.py")


def test_consumer_is_simstream_pipeline():
    import simstream.pipeline as consumer_pkg

    assert pathlib.Path(consumer_pkg.__file__).resolve().parent == ROOT / "pipeline"


def test_nothing_imports_the_top_level_name():
    offenders = []
    for path in _python_files():
        if "simstream/pipeline" in path.as_posix():
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {n}"
                for n in names
                if n == "pipeline" or n.startswith("pipeline.")
            ]
    assert not offenders, "import simstream.pipeline instead:\n" + "\n".join(offenders)


def test_wheel_packages_only_simstream():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = cfg["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["simstream*"]
