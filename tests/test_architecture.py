"""The import graph of ``src/``: no circle, and no import from a lower layer to a higher one.

Layers, lowest first (docs/architecture.md): utilities on the ground floor; backbones and readers; heads and
matching; registration; experiments and scale; report; the CLI. Every import counts, also one inside a function
(a lazy import that closes a circle is still a circle); only ``if TYPE_CHECKING:`` blocks are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "neuros" / "plugins" / "cv"
PKG = "neuros.plugins.cv"

# First matching prefix wins (module names relative to the package, "" = the package itself).
LAYERS: list[tuple[str, int]] = [
    ("cli", 7),
    ("napari_plugin", 7),  # the napari plugin: an edge beside the CLI
    ("report", 6),
    ("experiments", 5),
    ("scale", 5),
    ("registration", 4),
    ("registration_models", 4),
    ("heads", 3),
    ("adapt", 3),
    ("feature_matching", 3),
    ("backbones", 2),
    ("datasets", 2),
    ("", 1),  # ground floor: _validation, output, features, dense, labels, metrics, instances, preprocess, …
]


def _layer(module: str) -> int:
    if module == "":  # the package __init__ re-exports the public API: above everything it re-exports
        return 8
    for prefix, rank in LAYERS:
        if prefix and (module == prefix or module.startswith(prefix + ".")):
            return rank
    return 1


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if module else []
    if not is_pkg:
        base = base[:-1]
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name if name in known else ("" if name == "" else None)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    anchor = base[: len(base) - (child.level - 1)] if child.level > 1 else base
                    target = ".".join([*anchor, *(child.module.split(".") if child.module else [])])
                elif child.module and child.module.startswith(PKG):
                    target = child.module[len(PKG):].lstrip(".")
                else:
                    target = None
                if target is not None:
                    for alias in child.names:  # `from . import x` may import a submodule
                        full = f"{target}.{alias.name}" if target else alias.name
                        hit = full if full in known else resolve(target)
                        if hit is not None and hit != module:
                            found.add(hit)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith(PKG + "."):
                        hit = resolve(alias.name[len(PKG) + 1:])
                        if hit is not None and hit != module:
                            found.add(hit)
            visit(child)

    visit(tree)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Modules of a subpackage may import each other; between packages and top-level modules, no circle."""
    def unit(m: str) -> str:
        return m.split(".")[0] if m else ""

    g: dict[str, set[str]] = {}
    for m, deps in graph.items():
        if m == "":
            continue
        g.setdefault(unit(m), set()).update(unit(d) for d in deps if d and unit(d) != unit(m))
    return g


def test_the_import_graph_is_read(graph):
    assert "backbones.base" in graph and "cli" in graph and len(graph) > 40
    assert "features" in graph["backbones.base"] or any("features" in d for d in graph.values())


def test_no_import_circle_between_modules(graph):
    assert _cycles(graph) == []


def test_no_import_circle_between_packages(graph):
    assert _cycles(_package_graph(graph)) == []


def test_no_import_from_a_lower_layer_to_a_higher_one(graph):
    upward = sorted(f"{m} ({_layer(m)}) imports {d} ({_layer(d)})" for m, deps in graph.items()
                    for d in deps if d and _layer(d) > _layer(m))
    assert upward == []
