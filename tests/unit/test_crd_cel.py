"""The CRD's CEL rules (`x-kubernetes-validations`, generated from the spec models) refuse at apply what
the models refuse, with the field path, and never refuse a spec the models accept (cel-python)."""
from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncmtl.crd import crd
from asyncmtl.spec import SpecError, parse_run
from tests.conftest import REPO
from tests.k8s_schema import apply_structural_defaults, cel_violations

SCHEMA = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
EXAMPLES = [p for p in sorted((REPO / "manifests" / "examples").rglob("*.yaml"))
            if yaml.safe_load(p.read_text()).get("kind") == "AsyncMTLRun"]


def _apply(doc: dict) -> list[str]:
    """What the API server's CEL rules say about `doc` (after its defaulting)."""
    return cel_violations(SCHEMA, apply_structural_defaults(SCHEMA, copy.deepcopy(doc)))


def _quickstart() -> dict:
    return yaml.safe_load((REPO / "manifests" / "examples" / "quickstart.yaml").read_text())


def test_the_crd_has_rules_on_the_spec_and_on_each_task():
    spec = SCHEMA["properties"]["spec"]
    assert len(spec["x-kubernetes-validations"]) >= 8
    assert len(spec["properties"]["tasks"]["items"]["x-kubernetes-validations"]) >= 5
    assert spec["properties"]["tasks"]["x-kubernetes-list-map-keys"] == ["name"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_the_rules(path):
    assert _apply(yaml.safe_load(path.read_text())) == []


def _set(doc: dict, dotted: str, value) -> dict:
    node = doc["spec"]
    *parents, last = dotted.split(".")
    for k in parents:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return doc


_DELETE = object()

REFUSED = [
    ({"tasks.0.numLabels": 3}, "spec.tasks[0].numLabels: numLabels must be 2 for a binary task"),
    ({"tasks.1.numLabels": _DELETE}, "spec.tasks[1].numLabels: numLabels is required"),
    ({"tasks.1.numLabels": 1}, "spec.tasks[1].numLabels: numLabels must be >= 2 for a multiclass task"),
    ({"tasks.3.numLabels": 2}, "spec.tasks[3].numLabels: numLabels must be 1 for a regression task"),
    ({"tasks.0.labelRange": [0, 1]}, "spec.tasks[0].labelRange: labelRange only applies to a regression task"),
    ({"tasks.3.labelRange": [5, 1]}, "spec.tasks[3].labelRange: labelRange: max must be greater than min"),
    ({"tasks.1.name": "sentiment"}, "spec.tasks[1]: Duplicate value"),
    ({"tasks.3.name": "sentiment"}, "spec.tasks[3]: Duplicate value"),
    ({"method": "bam"}, "spec.teacherRun: teacherRun is required for method: bam"),
    ({"teacherRun": "uniform"}, "spec.teacherRun: teacherRun only applies to method: bam"),
    ({"setting": "sequential"}, "spec.order: order is required for setting: sequential"),
    ({"order": "smallest-first"}, "spec.setting: order, taskOrder and orderFromRun only apply to setting: sequential"),
    ({"setting": "sequential", "order": "easiest-first"}, "spec.orderFromRun: orderFromRun is required"),
    ({"method": "continual"}, "spec.method: continual applies to setting: sequential"),
    ({"setting": "sequential", "order": "smallest-first", "method": "fixedSteps"},
     "spec.method: fixedSteps and bam apply to setting: joint"),
    ({"training.warmup": 600}, "spec.training.warmup: training.warmup must be smaller than training.maxSteps"),
    ({"training.validationInterval": 700}, "spec.training.validationInterval: training.validationInterval must be <="),
]


@pytest.mark.parametrize("changes, message", REFUSED, ids=[m.split(":")[0] + "-" + str(i) for i, (_, m) in enumerate(REFUSED)])
def test_kubectl_apply_refuses_what_the_models_refuse_with_the_path(changes, message):
    doc = _quickstart()
    for k, v in changes.items():
        _set(doc, k, v)
    with pytest.raises(SpecError):
        parse_run(copy.deepcopy(doc))  # the models refuse it
    said = _apply(doc)
    assert any(m.startswith(message) for m in said), said


_FIELDS = {
    "tasks.0.type": st.sampled_from(["binary", "multiclass", "multilabel", "regression"]),
    "tasks.0.numLabels": st.one_of(st.integers(1, 5), st.just(_DELETE)),
    "tasks.0.labelRange": st.one_of(st.just(_DELETE), st.lists(st.integers(0, 5), min_size=2, max_size=2)),
    "setting": st.sampled_from(["joint", "sequential"]),
    "order": st.one_of(st.just(_DELETE), st.sampled_from(["smallest-first", "largest-first", "easiest-first"])),
    "orderFromRun": st.one_of(st.just(_DELETE), st.just("other-run")),
    "method": st.sampled_from(["asyncKD", "fixedSteps", "continual", "bam"]),
    "teacherRun": st.one_of(st.just(_DELETE), st.just("uniform")),
    "training.warmup": st.integers(0, 700),
    "training.validationInterval": st.integers(1, 700),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_rules_never_refuse_a_spec_the_models_accept(data):
    doc = _quickstart()
    for field in data.draw(st.lists(st.sampled_from(sorted(_FIELDS)), min_size=1, max_size=5, unique=True)):
        _set(doc, field, data.draw(_FIELDS[field], label=field))
    try:
        parse_run(copy.deepcopy(doc))
    except SpecError:
        return  # refused by the models; the CRD may or may not see it (the operator catches the rest)
    assert _apply(doc) == []
