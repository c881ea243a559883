"""`asyncmtl.spec` as a package: every name that `asyncmtl/spec.py` made public is still importable from
`asyncmtl.spec`, as the very object its new module defines, and no module of the package imports a
runtime, the trainer, the operator, torch, kopf or boto3 (pyproject's import-linter contracts check the
import graph; this also catches imports inside functions and what an import drags in at run time)."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import asyncmtl.spec
from tests.conftest import REPO

# every public name of asyncmtl/spec.py before it became a package -> the module that now holds it
PUBLIC = {
    "asyncmtl.spec.run": [
        "API_VERSION", "KIND", "MINILM_PACKAGE", "ModelSpec", "TrainingSpec", "DistillationSpec", "KeepCheckpoints",
        "StorageSpec", "MetricsSpec", "WeightingSpec", "RunSpec", "Metadata", "AsyncMTLRun",
    ],
    "asyncmtl.spec.task": [
        "TaskType", "Metric", "CLASSIFICATION_METRICS", "REGRESSION_METRICS", "DEFAULT_METRIC", "DataFormat",
        "DataSpec", "TaskSpec",
    ],
    "asyncmtl.spec.cluster": [
        "Toleration", "VolumeSpec", "Quantity", "ResourceRequirements", "RESERVED_VOLUMES", "MAIN_CONTAINER",
        "RESTRICTED_VOLUME_TYPES", "restricted_violations", "PodTemplateMetadata", "PodTemplateOverlay",
        "ClusterSpec",
    ],
    "asyncmtl.spec.errors": ["SpecIssue", "SpecError", "format_path", "issues_from_validation_error"],
    "asyncmtl.spec.loading": [
        "parse_run", "load_run_file", "load_spec_file", "MAX_SPEC_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "MAX_INT_DIGITS",
    ],
    # spec.py imported these from their home and so exported them too
    "asyncmtl.method": ["METHODS", "Method", "MethodName"],
}
NAMES = [(module, name) for module, names in PUBLIC.items() for name in names]

FORBIDDEN = ("asyncmtl.local", "asyncmtl.core", "asyncmtl.driver", "asyncmtl.storage", "asyncmtl_trainer",
             "asyncmtl_operator", "torch", "kopf", "kubernetes", "boto3", "botocore")


def _modules() -> list[str]:
    return ["asyncmtl.spec"] + [f"asyncmtl.spec.{m.name}" for m in pkgutil.iter_modules(asyncmtl.spec.__path__)]


@pytest.mark.parametrize("module,name", NAMES, ids=[n for _, n in NAMES])
def test_a_public_name_is_importable_from_asyncmtl_spec_as_its_module_s_object(module, name):
    home = importlib.import_module(module)
    assert getattr(asyncmtl.spec, name) is getattr(home, name)
    assert name in asyncmtl.spec.__all__
    obj = getattr(home, name)
    if module.startswith("asyncmtl.spec.") and (isinstance(obj, type) or inspect.isfunction(obj)):
        assert obj.__module__ == module, f"{name} is defined in {obj.__module__}, not {module}"


def test_all_lists_exactly_the_public_names():
    assert sorted(asyncmtl.spec.__all__) == sorted(name for _, name in NAMES)
    namespace: dict = {}
    exec("from asyncmtl.spec import *", namespace)
    assert {n for n in namespace if n != "__builtins__"} == set(asyncmtl.spec.__all__)


def test_the_package_s_modules_are_the_documented_ones():
    assert sorted(_modules()) == sorted(["asyncmtl.spec", "asyncmtl.spec.base", "asyncmtl.spec.cluster",
                                         "asyncmtl.spec.errors", "asyncmtl.spec.loading", "asyncmtl.spec.run",
                                         "asyncmtl.spec.task"])


@pytest.mark.parametrize("module", _modules())
def test_no_module_of_the_package_imports_a_runtime_torch_kopf_or_boto3(module):
    """Every import statement, at the top or inside a function."""
    mod = importlib.import_module(module)
    tree = ast.parse(open(mod.__file__, encoding="utf-8").read())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level]
    assert not any(n.level for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)), "use absolute imports"
    bad = [m for m in imported if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad, f"{module} imports {bad}"


def test_importing_the_package_loads_no_runtime_torch_kopf_or_boto3():
    """In a fresh interpreter: the package and all it imports at import time, transitively."""
    code = ("import sys\n" + "".join(f"import {m}\n" for m in _modules()) +
            f"print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {FORBIDDEN!r})))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]"


def test_the_models_still_validate_through_the_package():
    """The models, split over modules, still resolve their annotations (no model_rebuild needed) and
    `RunSpec`'s sections are the classes the package exports."""
    fields = asyncmtl.spec.RunSpec.model_fields
    assert fields["cluster"].annotation is asyncmtl.spec.ClusterSpec
    assert fields["tasks"].annotation == list[asyncmtl.spec.TaskSpec]
    assert asyncmtl.spec.AsyncMTLRun.model_fields["spec"].annotation is asyncmtl.spec.RunSpec
    for model in (asyncmtl.spec.AsyncMTLRun, asyncmtl.spec.RunSpec, asyncmtl.spec.ClusterSpec, asyncmtl.spec.TaskSpec):
        assert model.__pydantic_complete__, model
