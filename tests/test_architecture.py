"""The packages' structure, checked from the source (AST only, nothing imported):

- no import circles among the modules of simstream/ and pipeline/ (a circle is
  any cycle of module-level or function-level imports: a lazy import hides a
  circle from the interpreter, not from the structure; a package's ``__init__``
  counts as a module of its own, so a package whose ``__init__`` imports its
  submodules while they import names defined in it is a circle too);
- the consumer (pipeline/) depends one way on simstream: it imports nothing from
  the layers above it (simstream.cli, runner, diagnose, testbed, emitter);
- no function in pipeline/ or simstream/diagnose/ is longer than MAX_FUNCTION_LINES.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 80

#: simstream modules the consumer must not import: the CLI and tools layered above it
ABOVE_PIPELINE = ("simstream.cli", "simstream.runner", "simstream.diagnose",
                  "simstream.testbed", "simstream.emitter")
#: what the consumer may import from simstream: the contract (records, probe, the
#: profile's model, the run directory's checks in outdir), the codec, the wire
#: layer, the errors and the clock
PIPELINE_MAY_IMPORT = ("simstream.records", "simstream.probe", "simstream.profile",
                       "simstream.outdir", "simstream.codec", "simstream.wire",
                       "simstream.errors", "simstream.clock")


def _modules() -> dict[str, Path]:
    """Every module of simstream/ and pipeline/ by dotted name (pipeline/ as it is
    imported: simstream.pipeline); the simstream/pipeline link is not walked twice."""
    found: dict[str, Path] = {}
    for pkg, base in (("simstream", ROOT / "simstream"), ("simstream.pipeline", ROOT / "pipeline")):
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if pkg == "simstream" and rel.parts[0] == "pipeline":
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([pkg, *parts])] = path
    return found


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _owner(name: str) -> str | None:
    """The known module ``name`` is, or lives in (``a.b.C`` -> ``a.b``); None if outside."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Every project module ``module`` imports, at module level or inside functions.
    ``from pkg import name`` is an import of the module ``pkg.name`` when there is
    one, else of ``pkg`` (its ``__init__``, where ``name`` is defined). Imports under
    ``if TYPE_CHECKING:`` are left out: they never run."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                names.add(sub if sub in MODULES else target)
    return {o for n in names if (o := _owner(n)) is not None and o != module}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_circle_and_a_lazy_import() -> None:
    """The checker itself: a two-module circle is found, also through an import
    inside a function, and a one-way chain is not a circle."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    lazy = ast.parse("def f():\n    from simstream.pipeline import consumer\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(lazy))
    assert "simstream.pipeline.consumer" in GRAPH["simstream.pipeline.cli"]  # a lazy import


def test_the_module_graph_covers_both_packages() -> None:
    assert "simstream.pipeline.consumer" in MODULES
    assert "simstream.wire.nng" in MODULES
    assert "simstream.pipeline.receiver" in GRAPH["simstream.pipeline.ray_consumer"]


def test_no_import_circles_among_simstream_and_pipeline_modules() -> None:
    assert _cycles(GRAPH) == []


def _consumer_imports(keep: Callable[[str], bool]) -> dict[str, list[str]]:
    out = {m: sorted(t for t in deps if not t.startswith("simstream.pipeline") and keep(t))
           for m, deps in GRAPH.items() if m.startswith("simstream.pipeline")}
    return {m: d for m, d in out.items() if d}


def _within(prefixes: tuple[str, ...]) -> Callable[[str], bool]:
    return lambda t: any(t == p or t.startswith(p + ".") for p in prefixes)


def test_the_consumer_does_not_import_the_layers_above_it() -> None:
    assert _consumer_imports(_within(ABOVE_PIPELINE)) == {}


def test_the_consumer_imports_only_the_contract_codec_wire_errors_and_clock() -> None:
    allowed = _within(PIPELINE_MAY_IMPORT)
    assert _consumer_imports(lambda t: not allowed(t)) == {}
    # the check sees the consumer's imports of simstream at all
    assert _consumer_imports(allowed)


def _long_functions(base: Path) -> list[str]:
    out = []
    for path in sorted(base.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


@pytest.mark.parametrize("package", ["pipeline", "simstream/diagnose"])
def test_no_function_in_the_consumer_or_the_diagnosis_is_over_80_lines(package: str) -> None:
    assert _long_functions(ROOT / package) == []
