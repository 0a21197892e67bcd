"""The package's import graph, read with ``ast`` (function-local imports included): no cycles,
and the low layers never reach up into phases, callbacks, the CLI or data."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "brainstacks_pl"

LOW_LEVEL = ("brainstacks_pl.layers", "brainstacks_pl.storage", "brainstacks_pl.nullspace", "brainstacks_pl.losses")
HIGH_LEVEL = (
    "brainstacks_pl.modules",
    "brainstacks_pl.callbacks",
    "brainstacks_pl.cli",
    "brainstacks_pl.commands",
    "brainstacks_pl.data",
    "brainstacks_pl.driver",
    "brainstacks_pl.phase",
    "brainstacks_pl.inference_cli",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every brainstacks_pl module that ``name`` imports, at any depth of its code."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # A module's own enclosing packages are initialised before it anyway: not an edge.
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    # The package __init__ only re-exports lazily (strings), so it is not an edge source here.
    return {name: imports_of(name, path, known) - {"brainstacks_pl"} for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "brainstacks_pl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "a.py").write_text("def f():\n    from brainstacks_pl.b import g\n")
    (pkg / "sub" / "c.py").write_text("from . import a\nfrom ..b import g\nfrom brainstacks_pl.sub import a as again\n")
    known = {"brainstacks_pl.sub.a", "brainstacks_pl.b", "brainstacks_pl.sub.c", "brainstacks_pl.sub", "brainstacks_pl"}
    assert imports_of("brainstacks_pl.sub.a", pkg / "sub" / "a.py", known) == {"brainstacks_pl.b"}
    assert imports_of("brainstacks_pl.sub.c", pkg / "sub" / "c.py", known) == {
        "brainstacks_pl.sub.a",
        "brainstacks_pl.b",
    }
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("low", LOW_LEVEL)
def test_low_level_modules_import_nothing_from_phases_callbacks_cli_or_data(low):
    graph = import_graph()
    offenders = {
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name == low or name.startswith(low + ".")
        for target in targets
        if target.startswith(HIGH_LEVEL)
    }
    assert not offenders, sorted(offenders)
