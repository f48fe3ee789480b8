"""The layers hold: the import contract in pyproject.toml is kept, it fails on a wrong import (so it
is not vacuous), and no module of ours imports itself back through another, ``TYPE_CHECKING``
imports included (a cycle hidden behind one is still a cycle to a reader)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "ledger", "machines", "pricing", "memory", "hub", "prompts", "tools", "agents", "market", "evals", "server", "tamc")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=where, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"})


def test_the_contract_is_kept() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_planted_wrong_import_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
    (tmp_path / "tools" / "planted.py").write_text("from agents.node import MachineNode  # tools must not import agents\n")
    (tmp_path / "agents" / "node" / "book.py").write_text(
        (ROOT / "agents" / "node" / "book.py").read_text() + "\nfrom agents.node.workshop import Workshop  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "TAMC layers BROKEN" in result.stdout and "machine node parts BROKEN" in result.stdout
    assert "tools.planted -> agents.node" in result.stdout


def cycles(nodes: list[str], imports: Callable[[str], set[str]]) -> list[list[str]]:
    """The import cycles among ``nodes`` (Tarjan's strongly connected components of more than one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in imports(node):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back() -> None:
    graph = grimp.build_graph(*PACKAGES)
    modules = sorted(graph.modules)
    assert cycles(modules, lambda m: {i for i in graph.find_modules_directly_imported_by(m) if i in graph.modules}) == []


def test_no_package_imports_itself_back() -> None:
    """Sibling subpackages and modules of each package, taken as wholes (``agents.node`` with every
    module in it), import one way too."""
    graph = grimp.build_graph(*PACKAGES)
    for package in sorted(m for m in graph.modules if graph.find_children(m)):
        children = sorted(graph.find_children(package))

        def imports(child: str, siblings: list[str] = children) -> set[str]:
            return {other for other in siblings if other != child
                    and graph.direct_import_exists(importer=child, imported=other, as_packages=True)}

        assert cycles(children, imports) == [], package
