"""Every public module of the three packages (asyncmtl/, trainer_image/asyncmtl_trainer/,
operator/asyncmtl_operator/; no leading underscore in its path, so not __init__ or __main__) is imported by at
least one test module (tests/**/test_*.py), read with `ast` (nothing is imported here).

A test module imports module `m` when it has
- `import m` (or `import m as x`);
- `from m import ...`;
- `from pkg import m` (`m` = `pkg.<name>`, e.g. `from asyncmtl import termination`);
- `from pkg import Name` where the package `pkg`'s __init__ takes `Name` from `m` at its top level (a package
  that re-exports its modules' names: `from asyncmtl.spec import parse_run` exercises asyncmtl.spec.loading);
- `importlib.import_module` with `m` spelled out as a string constant somewhere in that test module (tests that
  parametrize over module names; any constant that names a module counts there, a deliberate leniency).
Modules exercised only another way are in ALLOWED, each with its reason.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = {"asyncmtl": REPO / "asyncmtl", "asyncmtl_trainer": REPO / "trainer_image" / "asyncmtl_trainer",
            "asyncmtl_operator": REPO / "operator" / "asyncmtl_operator"}

# Public modules that no test module imports, and why that is enough. Keep it short: a module that gains a test
# module must leave this list (a test below checks).
ALLOWED = {
    # the shared base of the scalarizing weightings (FAMO, uncertainty weighting): exercised through them in
    # test_weighting_torchjd.py and in test_weighting_contract.py, which runs every registered method
    "asyncmtl_trainer.weighting.scalarized",
}


def public_modules() -> dict[str, Path]:
    """Dotted name -> file of every public module of the three packages."""
    out = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if not any(p.startswith("_") for p in parts):
                out[".".join((package, *parts))] = path
    return out


def package_inits() -> dict[str, Path]:
    """Dotted name -> __init__.py of every package and subpackage."""
    return {".".join((package, *path.relative_to(root).parent.parts)): path
            for package, root in PACKAGES.items() for path in root.rglob("__init__.py")}


def reexports(init_source: str, package: str) -> dict[str, str]:
    """Name -> module it comes from, for the top-level `from M import Name` of a package's __init__."""
    out = {}
    for node in ast.parse(init_source).body:
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else None
            module = node.module if not node.level else ".".join(p for p in (base, node.module) if p)
            if module:
                for a in node.names:
                    out[a.asname or a.name] = module
    return out


def imported_by(source: str, inits: dict[str, dict[str, str]]) -> set[str]:
    """Dotted names a test module imports by the rules of the module docstring (`inits`: package -> its
    re-exports). Names that are not modules are harmless: only known modules are looked up."""
    tree = ast.parse(source)
    out: set[str] = set()
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            for a in node.names:
                out.add(f"{node.module}.{a.name}")
                if a.name in inits.get(node.module, {}):
                    out.add(inits[node.module][a.name])
        elif isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == "import_module") or \
                    (isinstance(f, ast.Name) and f.id == "import_module"):
                dynamic = True
    if dynamic:
        out.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return out


def coverage() -> dict[str, list[str]]:
    """Public module -> the test modules that import it."""
    inits = {pkg: reexports(p.read_text(encoding="utf-8"), pkg) for pkg, p in package_inits().items()}
    modules = public_modules()
    out: dict[str, list[str]] = {m: [] for m in modules}
    for test in sorted((REPO / "tests").rglob("test_*.py")):
        for name in imported_by(test.read_text(encoding="utf-8"), inits) & modules.keys():
            out[name].append(str(test.relative_to(REPO)))
    return out


def test_the_packages_and_their_tests_are_found():
    modules = public_modules()
    assert len(modules) > 60
    assert {"asyncmtl.cli", "asyncmtl.spec.loading", "asyncmtl_trainer.train", "asyncmtl_trainer.weighting.base",
            "asyncmtl_operator.handlers"} <= modules.keys()
    assert not any(part.startswith("_") for m in modules for part in m.split("."))
    assert len(list((REPO / "tests").rglob("test_*.py"))) > 50


def test_every_public_module_is_imported_by_a_test_module():
    missing = sorted(m for m, tests in coverage().items() if not tests and m not in ALLOWED)
    assert not missing, ("public modules no test module imports (add tests/<unit|trainer|operator>/test_<module>.py, "
                         f"or an entry with its reason in ALLOWED): {missing}")


def test_the_allow_list_names_only_modules_that_exist_and_no_test_imports():
    cov = coverage()
    assert ALLOWED <= cov.keys(), f"not modules (any more): {sorted(ALLOWED - cov.keys())}"
    tested = sorted(m for m in ALLOWED if cov[m])
    assert not tested, f"imported by a test module now: drop them from ALLOWED: {tested}"


# ---- the reader itself ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    ("import asyncmtl.logs", {"asyncmtl.logs"}),
    ("import asyncmtl.logs as L", {"asyncmtl.logs"}),
    ("from asyncmtl.logs import run_logger", {"asyncmtl.logs"}),
    ("from asyncmtl import termination as T", {"asyncmtl.termination"}),
    ("def f():\n    from asyncmtl_trainer.model import build_model", {"asyncmtl_trainer.model"}),
    ("from asyncmtl.data import load_split", {"asyncmtl.data.examples"}),  # re-exported by asyncmtl/data
    ("import importlib\nMODS = ['asyncmtl.crd']\nimportlib.import_module(MODS[0])", {"asyncmtl.crd"}),
    ("MODS = ['asyncmtl.crd']", set()),  # a string alone is not an import
    ("import json\nfrom . import asyncmtl", set()),
])
def test_the_reader_counts_the_documented_import_forms(source, expected):
    inits = {pkg: reexports(p.read_text(encoding="utf-8"), pkg) for pkg, p in package_inits().items()}
    assert imported_by(source, inits) & public_modules().keys() == expected


def test_relative_re_exports_resolve_against_the_package():
    assert reexports("from .a import X\nfrom ..b import Y as Z\nfrom c.d import W", "p.q") == {
        "X": "p.q.a", "Z": "p.b", "W": "c.d"}
