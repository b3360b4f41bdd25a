"""alignlab's modules import each other as a graph without cycles, lazy imports inside functions included:
a cycle hidden in a function body still ties two modules together (issue 26: pipeline <-> publish,
utils.errors -> utils.hydra -> utils.config -> utils.errors)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "alignlab").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _target(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the alignlab modules it imports anywhere in its body (``from a.b import c`` is a.b.c
    when that is a module, else a.b)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("alignlab")
            ):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("alignlab")]
            for name in names:
                target = _target(name, mods)
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    colour = dict.fromkeys(graph, 0)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == 0 and (found := visit(nxt)):
                return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0 and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # alignlab.utils.app imports the Hydra glue inside hydra_app(): a lazy import is an edge
    assert "alignlab.utils.hydra" in graph["alignlab.utils.app"]
    assert "alignlab.utils.errors" in graph["alignlab.utils.io"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + " (move the shared piece to a lower module)"


def test_the_error_classes_import_nothing_of_alignlab():
    # every module may raise a UserError: its module sits at the bottom of the graph
    assert import_graph()["alignlab.utils.errors"] == set()
    assert import_graph()["alignlab.utils.paths"] == set()
