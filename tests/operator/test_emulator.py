"""The emulator additions the operator tests rely on behave like a real API server."""
from __future__ import annotations

import kubernetes

from tests.operator.helpers import NS


def test_server_set_metadata(kube):
    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "x"}, "data": {"k": "1"}})
    cm = kube.sanitize_for_serialization(core.read_namespaced_config_map("x", NS))
    meta = cm["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["namespace"] == NS and meta["generation"] == 1
    rv = int(meta["resourceVersion"])
    core.patch_namespaced_config_map("x", NS, {"data": {"k": "2"}})
    meta2 = kube.sanitize_for_serialization(core.read_namespaced_config_map("x", NS))["metadata"]
    assert int(meta2["resourceVersion"]) > rv and meta2["uid"] == meta["uid"]


def test_generation_bumps_on_spec_changes_only(kube):
    batch = kubernetes.client.BatchV1Api(kube)
    batch.create_namespaced_job(NS, {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": []}}}})
    batch.patch_namespaced_job_status("j", NS, {"status": {"succeeded": 1}})
    assert batch.read_namespaced_job("j", NS).metadata.generation == 1
    batch.patch_namespaced_job("j", NS, {"spec": {"parallelism": 2}})
    assert batch.read_namespaced_job("j", NS).metadata.generation == 2


def test_generate_name(kube):
    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespaced_config_map(NS, {"metadata": {"generateName": "ev-"}})
    core.create_namespaced_config_map(NS, {"metadata": {"generateName": "ev-"}})
    names = [c.metadata.name for c in core.list_namespaced_config_map(NS).items]
    assert len(names) == 2 and len(set(names)) == 2 and all(n.startswith("ev-") for n in names)


def _run(name: str, **spec_over) -> dict:
    from tests.conftest import builtin_task, run_doc

    doc = run_doc([builtin_task("sentiment"), builtin_task("sarcasm")], name=name,
                  storage={"uri": "s3://runs/x"}, **spec_over)
    doc["metadata"]["namespace"] = NS
    return doc


def _create(kube, doc: dict):
    from asyncmtl.crd import GROUP, PLURAL, VERSION

    api = kubernetes.client.CustomObjectsApi(kube)
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, doc)
    return api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, doc["metadata"]["name"])


def test_an_asyncmtlrun_is_defaulted_and_pruned_as_the_api_server_does(kube):
    doc = _run("d", training={"maxSteps": 500})
    doc["spec"]["bogus"] = 1
    stored = _create(kube, doc)
    assert "bogus" not in stored["spec"]
    assert stored["spec"]["training"]["validationInterval"] == 200  # a CRD default
    assert stored["spec"]["setting"] == "joint" and stored["spec"]["tasks"][0]["patience"] == 3
    assert "cluster" not in stored["spec"]  # no defaults there: the chart's trainer defaults fill it


def test_a_bad_run_is_refused_at_apply_with_every_path(kube):
    import pytest

    doc = _run("bad", training={"maxSteps": 100, "warmup": 200})
    doc["spec"]["tasks"][1]["name"] = "sentiment"
    doc["spec"]["tasks"][0]["numLabels"] = 3
    with pytest.raises(kubernetes.client.ApiException) as info:
        _create(kube, doc)
    assert info.value.status == 422
    body = info.value.body
    for path in ("spec.tasks[1]: Duplicate value", "spec.tasks[0].numLabels: numLabels must be 2 for a binary task",
                 "spec.training.warmup: training.warmup must be smaller than training.maxSteps"):
        assert path in body, body


def test_an_integer_gpu_request_is_stored(kube):
    doc = _run("gpu", cluster={"resources": {"limits": {"nvidia.com/gpu": 1}}})
    assert _create(kube, doc)["spec"]["cluster"]["resources"]["limits"]["nvidia.com/gpu"] == 1
