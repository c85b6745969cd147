"""Layers, read from the source: ground-floor utilities (``output``) import no higher layer, ``heads``/``scale``/
``experiments`` never import ``report`` (not even inside a function), only ``cli`` imports ``cli``, and
``load_head`` sits beside the head registry so that ``heads/base.py`` does not import ``heads/registry.py``."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import neuros.plugins.cv as cv

PKG = Path(cv.__file__).parent
ROOT = "neuros.plugins.cv"


def _module(path: Path) -> str:
    parts = path.relative_to(PKG).with_suffix("").parts
    return ".".join((ROOT, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (function bodies too), as absolute names.

    ``from .x import y`` counts as importing ``x`` and ``x.y`` (``y`` may be a submodule).
    """
    package = _module(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _files(*subpackages: str) -> list[Path]:
    return sorted(p for s in subpackages for p in (PKG / s).rglob("*.py"))


def _offenders(files: list[Path], forbidden: str) -> dict[str, list[str]]:
    hits = {}
    for f in files:
        bad = sorted(m for m in _imports(f) if m == forbidden or m.startswith(forbidden + "."))
        if bad:
            hits[str(f.relative_to(PKG))] = bad
    return hits


def test_the_import_reader_sees_relative_and_function_level_imports():
    # The reader itself: relative imports at top level and inside functions resolve to absolute names.
    assert f"{ROOT}.report.real_tables" in _imports(PKG / "cli" / "_bench_real.py")
    assert f"{ROOT}.output.atomic_output_dir" in _imports(PKG / "heads" / "base.py")
    assert f"{ROOT}.experiments.suite" in _imports(PKG / "cli" / "notebook.py")
    assert f"{ROOT}.output.check_output_file" in _imports(PKG / "cli" / "register.py")  # inside run()


def test_output_is_on_the_ground_floor_and_report_output_is_gone():
    assert importlib.util.find_spec(f"{ROOT}.report.output") is None  # moved, no shim left behind
    inside = {m for m in _imports(PKG / "output.py") if m.startswith(ROOT + ".")}
    # Only the package's version string (read inside a function, once the package is loaded).
    assert inside <= {f"{ROOT}.__version__"}, inside


@pytest.mark.parametrize("layer", ["heads", "scale", "experiments", "backbones", "datasets"])
def test_lower_layers_never_import_report(layer):
    assert _offenders(_files(layer), f"{ROOT}.report") == {}


def test_ground_floor_modules_import_neither_report_nor_experiments():
    ground = sorted(PKG.glob("*.py"))
    ground = [p for p in ground if p.name != "__init__.py"]
    assert {p.name for p in ground} >= {"output.py", "labels.py", "features.py"}
    assert _offenders(ground, f"{ROOT}.report") == {}
    assert _offenders(ground, f"{ROOT}.experiments") == {}


def test_only_the_cli_imports_the_cli():
    others = [p for p in PKG.rglob("*.py") if "cli" not in p.relative_to(PKG).parts]
    assert _offenders(others, f"{ROOT}.cli") == {}


def test_report_modules_do_not_run_experiments_to_make_tables():
    # The real suite's tables are built in report/real_tables.py from records: no experiments import there,
    # and experiments/real_suite.py no longer builds tables.
    assert _offenders([PKG / "report" / "real_tables.py", PKG / "report" / "notebook.py"], f"{ROOT}.experiments") == {}
    from neuros.plugins.cv.experiments import real_suite

    assert not hasattr(real_suite, "real_tables") and not hasattr(real_suite, "real_markdown")


def test_load_head_sits_beside_the_registry_without_an_import_circle():
    from neuros.plugins.cv import heads
    from neuros.plugins.cv.heads import registry

    assert heads.load_head is registry.load_head
    assert _offenders([PKG / "heads" / "base.py"], f"{ROOT}.heads.registry") == {}
    assert f"{ROOT}.heads.base" in _imports(PKG / "heads" / "registry.py")
