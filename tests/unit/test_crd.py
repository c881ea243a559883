"""The CRD is generated from the models, is structural, and accepts exactly what the models accept."""
from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml

from asyncmtl.crd import crd, render
from tests.conftest import REPO, builtin_task, run_doc
from tests.k8s_schema import to_jsonschema as _to_jsonschema

EXAMPLES = sorted((REPO / "manifests").rglob("*.yaml"))


@pytest.fixture(scope="module")
def validator():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(_to_jsonschema(schema))


def test_crd_file_matches_the_models():
    assert (REPO / "crds" / "asyncmtlrun.yaml").read_text() == render(), "run `asyncmtl crd > crds/asyncmtlrun.yaml`"


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_schema_is_structural():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if path.endswith(".properties") or path.endswith(".default"):
            continue
        int_or_string = node.get("x-kubernetes-int-or-string") is True  # the one anyOf a structural schema allows
        assert not int_or_string or node.get("anyOf", [{"type": "integer"}, {"type": "string"}]) == \
            [{"type": "integer"}, {"type": "string"}], path
        for bad in ("$ref", "anyOf", "oneOf", "allOf", "prefixItems", "title", "$defs", "const"):
            assert bad not in node or (bad == "anyOf" and int_or_string), f"{path} has {bad}"
        if "properties" in node or "items" in node:
            assert "type" in node, f"{path} has no type"
        assert node.get("additionalProperties") is not False, path


def test_printer_columns_and_names():
    v = crd()["spec"]["versions"][0]
    assert [c["name"] for c in v["additionalPrinterColumns"]] == ["Phase", "Setting", "Converged", "Step", "Age"]
    assert v["subresources"] == {"status": {}}
    assert crd()["spec"]["names"]["shortNames"] and crd()["spec"]["names"]["categories"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_example_validates_against_the_crd(path, validator):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "AsyncMTLRun":
            validator.validate(doc)


@pytest.mark.parametrize("mutate,where", [
    (lambda s: s["tasks"][0].update(patience=0), "patience"),
    (lambda s: s["tasks"][0].update(type="ranking"), "type"),
    (lambda s: s["tasks"][0].update(bogus=1), "bogus"),
    (lambda s: s.pop("model"), "model"),
    (lambda s: s["training"].update(batchSize=0), "batchSize"),
    (lambda s: s["distillation"].update(whilePending="Later"), "whilePending"),
    (lambda s: s["tasks"][0].update(name="Bad_Name"), "name"),
    (lambda s: s["distillation"].update(temperature=0), "temperature"),
])
def test_the_crd_rejects_what_the_models_reject(validator, mutate, where):
    doc = run_doc([builtin_task("sentiment")], training={"maxSteps": 1000}, distillation={})
    validator.validate(copy.deepcopy(doc))
    mutate(doc["spec"])
    errors = list(validator.iter_errors(doc))
    assert errors and any(where in (str(e.path) + e.message) for e in errors), [e.message for e in errors]


def test_conditions_are_a_list_map_keyed_by_type_with_observed_generation():
    cond = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert cond["x-kubernetes-list-type"] == "map" and cond["x-kubernetes-list-map-keys"] == ["type"]
    assert "observedGeneration" in cond["items"]["properties"]
