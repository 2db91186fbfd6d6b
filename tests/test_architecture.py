"""The import graph of ``fhirimg/`` has no cycle, function-level (lazy) imports included.

Imports point downward (sources -> records -> mapping -> bundles -> outputs); a cycle hidden by a
lazy import still ties two layers together and breaks as soon as someone hoists the import. So the
graph is built from the AST of every module, not from what happens to be imported at run time.

How edges are counted:

* Every ``import`` / ``from ... import`` anywhere in a module counts: module level, inside
  functions and methods, under ``try``, and under ``if TYPE_CHECKING:`` (a type-only dependency
  still points from one layer to another).
* Relative imports are resolved against the importing module's package.
* ``from pkg import name`` points at the submodule ``pkg.name`` when there is one, otherwise at
  ``pkg`` itself (its ``__init__``: ``name`` is defined or re-exported there).
* Importing ``fhirimg.a.b`` also runs ``fhirimg/a/__init__.py`` first, so it adds an edge to each
  package on the way (``fhirimg.a``) *unless the importing module is inside that package*: inside
  ``fhirimg.a`` the package is already being initialised, so its ``__init__`` does not run again.
  Hence a package ``__init__`` that re-exports from its own submodules does not by itself make a
  cycle with them, while ``fhirimg.a.b`` doing ``from fhirimg.a import name`` (needing the
  ``__init__`` to have finished) while that ``__init__`` imports ``fhirimg.a.b`` is a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = "fhirimg"


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``where`` (path:line, for the failure message)."""

    source: str
    target: str
    where: str


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root / package``."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imported(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path]
) -> Iterator[str]:
    """The modules of the package that one import statement names (before ancestor edges)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            # ``import a.b.c`` binds ``a`` but runs a.b.c: the deepest module that exists.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                yield name
        return
    if node.level:
        # Relative: level 1 is the current package (the module itself for an __init__).
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if target not in modules:
        return
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        yield sub if sub in modules else target


def import_edges(root: Path, package: str) -> list[Edge]:
    """Every import edge between modules of ``package`` (see the module docstring)."""
    modules = module_names(root, package)
    edges: list[Edge] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            for target in _imported(node, module, _is_package(path), modules):
                own = module.split(".") if _is_package(path) else module.split(".")[:-1]
                parts = target.split(".")
                # Packages that importing ``target`` initialises first, outside our own.
                for depth in range(1, len(parts)):
                    ancestor = ".".join(parts[:depth])
                    if parts[:depth] != own[:depth] and ancestor in modules:
                        edges.append(Edge(module, ancestor, where))
                if target != module:
                    edges.append(Edge(module, target, where))
    return edges


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component that has one (Tarjan)."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
        graph.setdefault(edge.target, {})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)

    cycles = []
    for component in sorted(components):
        members = set(component)
        # Shortest way back to the component's first module: a breadth-first search inside it.
        start = component[0]
        came_from: dict[str, Edge] = {}
        frontier = [start]
        while frontier and start not in came_from:
            following = []
            for node in frontier:
                for nxt, edge in sorted(graph[node].items()):
                    if nxt in members and nxt not in came_from:
                        came_from[nxt] = edge
                        following.append(nxt)
            frontier = following
        path = [came_from[start]]
        while path[-1].source != start:
            path.append(came_from[path[-1].source])
        cycles.append(path[::-1])
    return cycles


def describe(cycle: list[Edge]) -> str:
    """``a -> b -> a`` with where each import is."""
    chain = " -> ".join([cycle[0].source, *(e.target for e in cycle)])
    return chain + "\n" + "\n".join(f"    {e.source} -> {e.target} ({e.where})" for e in cycle)


# --------------------------------------------------------------------------- the walker itself
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_lazy_import_cycle_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": "def f():\n    from pkg.high import g\n    return g\n",
            "pkg/high.py": "from . import low\n",
            "pkg/other.py": "import pkg.low\n",
        },
    )
    cycles = find_cycles(import_edges(tmp_path, "pkg"))
    assert [describe(c).splitlines()[0] for c in cycles] == ["pkg.high -> pkg.low -> pkg.high"]
    assert "pkg/low.py:2" in describe(cycles[0])


def test_package_reexports_are_not_a_cycle(tmp_path: Path) -> None:
    """An ``__init__`` re-exporting its submodules, which import each other and the root's
    other modules, is no cycle; a submodule needing its own package's ``__init__`` is one."""
    files = {
        "pkg/__init__.py": "from pkg.sub import api\n",
        "pkg/base.py": "",
        "pkg/sub/__init__.py": "from .api import run\nfrom .impl import helper\n",
        "pkg/sub/api.py": "from pkg.sub.impl import helper\nfrom pkg import base\n",
        "pkg/sub/impl.py": "import pkg.base\n",
    }
    _write(tmp_path, files)
    edges = import_edges(tmp_path, "pkg")
    assert Edge("pkg.sub.api", "pkg.sub.impl", "pkg/sub/api.py:1") in edges
    assert find_cycles(edges) == []

    _write(tmp_path, {"pkg/sub/impl.py": "from pkg.sub import run\n"})
    cycles = find_cycles(import_edges(tmp_path, "pkg"))
    assert [describe(c).splitlines()[0] for c in cycles] == ["pkg.sub -> pkg.sub.impl -> pkg.sub"]


def test_importing_a_subpackage_runs_its_init(tmp_path: Path) -> None:
    """``import pkg.b.leaf`` from outside ``pkg.b`` runs ``pkg/b/__init__.py``: a cycle through
    that ``__init__`` counts even when ``leaf`` itself imports nothing."""
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def f():\n    import pkg.b.leaf\n",
            "pkg/b/__init__.py": "from pkg.b.mid import x\n",
            "pkg/b/mid.py": "from pkg.a import f\nx = 1\n",
            "pkg/b/leaf.py": "",
        },
    )
    cycles = find_cycles(import_edges(tmp_path, "pkg"))
    assert [describe(c).splitlines()[0] for c in cycles] == ["pkg.a -> pkg.b -> pkg.b.mid -> pkg.a"]


# --------------------------------------------------------------------------- the real package
def test_fhirimg_edges_are_found() -> None:
    """The walk sees the package (so an empty graph cannot pass the cycle test below)."""
    edges = import_edges(REPO, PACKAGE)
    sources = {e.source for e in edges}
    assert "fhirimg.convert" in sources
    assert any(e.source == "fhirimg.convert" and e.target == "fhirimg.bundle" for e in edges)


def test_no_import_cycle_in_fhirimg() -> None:
    cycles = find_cycles(import_edges(REPO, PACKAGE))
    if cycles:
        pytest.fail(
            f"{len(cycles)} import cycle(s) in fhirimg/ (lazy imports count):\n"
            + "\n".join(describe(c) for c in cycles)
        )
