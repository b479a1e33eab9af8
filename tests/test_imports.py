"""The package has no import cycle: the module-level imports of ``dede/`` form a DAG, and every
module imports alone in a fresh interpreter (the slow test)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PKG = ROOT / "dede"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PKG.rglob("*.py"))


def module_level_imports(path: Path) -> set[str]:
    """The ``dede`` modules that ``path`` imports when it is imported (imports inside functions
    run later and are not counted; ``from pkg import name`` counts ``pkg.name`` if it is a module)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.If):  # TYPE_CHECKING blocks do not run
            continue
        out |= {n for n in names if n in MODULES}
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for p in PKG.rglob("*.py"):
        name = module_name(p)
        # (a package's __init__ importing its own modules is not a cycle: Python has already
        # registered the package when they run)
        graph[name] = module_level_imports(p) - {name}
    return graph


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "dede.victims.factory" in graph and "dede.attacks.badencoder" in graph
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_victim_making_sits_above_the_attacks_with_no_deferred_imports_back():
    """The cache and `obtain_victim` name attack makers only through the configs' ``_target_``;
    the attacks never import the factory, not even inside a function."""
    assert not any(m.startswith("dede.attacks") for m in import_graph()["dede.victims.factory"])
    for p in (PKG / "attacks").glob("*.py"):
        assert "dede.victims.factory" not in p.read_text(), p.name


@pytest.mark.slow
def test_each_module_imports_alone_in_a_fresh_interpreter():
    code = "import importlib, sys\nimportlib.import_module(sys.argv[1])"
    failed = {}
    for m in MODULES:
        r = subprocess.run([sys.executable, "-c", code, m], cwd=ROOT, capture_output=True, text=True, timeout=300)
        if r.returncode:
            failed[m] = r.stderr.strip().splitlines()[-1]
    assert not failed, failed
