"""The public surface holds: every name a module's ``__all__`` promises is there, and no module reads
another module's private names.

Who may use a private name (one leading underscore, not a dunder):

- a private name ``_x`` defined in a module belongs to that module alone: no other module imports it
  (``from a.b import _x``) or reads it through the module (``import a.b`` then ``a.b._x``). That
  holds inside a package too, its ``__init__`` included: a name another module needs is public
  (in a shared module if need be), and an ``__init__`` re-exports public names only.
- a private module ``a/_m.py`` belongs to its package ``a``: the modules of ``a`` (its
  ``__init__``, its siblings, its subpackages) import it and its public names, no module outside.

Checked on the product packages (pyproject's import-linter roots) and ``bench/``; the tests are
free to reach in. Attributes of instances (``obj._field``) are out of a static check's reach.
"""

from __future__ import annotations

import ast
import importlib
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["importlinter"]["root_packages"]
SCANNED = [*PACKAGES, "bench"]


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(packages: list[str]) -> dict[str, Path]:
    return {_name(p): p for package in packages for p in sorted((ROOT / package).rglob("*.py"))
            if "node_modules" not in p.parts}


MODULES = _files(SCANNED)
IMPORTABLE = sorted(m for m in _files(PACKAGES) if not m.endswith("__main__"))  # __main__ runs the command


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("module", IMPORTABLE)
def test_all_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    promised = getattr(mod, "__all__", [])
    assert len(set(promised)) == len(promised), f"{module}.__all__ lists a name twice"
    assert [n for n in promised if not hasattr(mod, n)] == []


@dataclass(frozen=True)
class Use:
    line: int
    what: str
    """The dotted name read, e.g. ``memory.store._where``."""


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _uses(module: str, path: Path) -> Iterator[Use]:
    """Every dotted name of another module that ``module`` imports or reads through an imported module."""
    tree = ast.parse(path.read_text("utf-8"))
    bound: dict[str, str] = {}  # a local name -> the module it is
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Use(node.lineno, alias.name)
                bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = _package_of(module, path).split(".")
                source = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                yield Use(node.lineno, f"{source}.{alias.name}")
                if f"{source}.{alias.name}" in MODULES:
                    bound[alias.asname or alias.name] = f"{source}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain: list[str] = []
            inner: ast.expr = node
            while isinstance(inner, ast.Attribute):
                chain.insert(0, inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in bound and any(_private(c) for c in chain):
                yield Use(node.lineno, ".".join([bound[inner.id], *chain]))


def _refusal(module: str, path: Path, use: Use) -> str | None:
    """Why ``module`` may not read ``use.what``, or None if it may."""
    parts = use.what.split(".")
    for i, part in enumerate(parts):
        if not _private(part):
            continue
        owner = ".".join(parts[:i])
        if ".".join(parts[: i + 1]) in MODULES:  # a private module: its package's own
            if not (module == owner or module.startswith(owner + ".")):
                return f"{module}:{use.line} imports {use.what}, private to package {owner}"
        elif owner != module:  # a private name: its module's own
            return f"{module}:{use.line} reads {use.what}, private to {owner}"
        return None
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_reads_another_modules_private_names(module: str) -> None:
    path = MODULES[module]
    refused = sorted({why for use in _uses(module, path) if (why := _refusal(module, path, use)) is not None})
    assert not refused, "\n".join(refused)


def test_the_check_sees_what_it_forbids(tmp_path: Path) -> None:
    """Not vacuous: a planted ``from x import _y``, ``import a.b`` then ``a.b._y``, and a private
    module used from outside its package are each refused; its own package may use it."""
    planted = tmp_path / "planted.py"
    planted.write_text("import memory.store\nfrom ledger.book import _aware\nfrom ledger._db import metadata\n"
                       "memory.store._where(('fact', None, None))\n")
    refused = sorted(why for use in _uses("tools.planted", planted) if (why := _refusal("tools.planted", planted, use)))
    assert refused == [
        "tools.planted:2 reads ledger.book._aware, private to ledger.book",
        "tools.planted:3 imports ledger._db.metadata, private to package ledger",
        "tools.planted:4 reads memory.store._where, private to memory.store",
    ]
    inside = Use(1, "ledger._db.metadata")
    assert _refusal("ledger.book", MODULES["ledger.book"], inside) is None
