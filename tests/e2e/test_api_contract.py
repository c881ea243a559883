"""What tests/operator/emulator.py claims about the API server, checked on a real one. Skipped unless
KUBECONFIG is set (a throwaway cluster: the test installs the CRD and creates a namespace). Each check
is one the emulator tests make (tests/operator/test_emulator.py)."""
from __future__ import annotations

import json
import os
import uuid

import pytest


pytestmark = pytest.mark.e2e
if not os.environ.get("KUBECONFIG"):
    pytest.skip("real-cluster API contract: set KUBECONFIG", allow_module_level=True)


@pytest.fixture(scope="module")
def real():
    import kubernetes

    from tests.e2e.cluster import connect_and_install_crd

    api = connect_and_install_crd()
    core = kubernetes.client.CoreV1Api(api)
    ns = f"asyncmtl-contract-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        yield api, ns
    finally:
        core.delete_namespace(ns)


def _run(name: str, ns: str, **spec) -> dict:
    from tests.conftest import builtin_task, run_doc

    doc = run_doc([builtin_task("sentiment"), builtin_task("sarcasm")], name=name, storage={"uri": "s3://runs/x"},
                  **spec)
    doc["metadata"]["namespace"] = ns
    return doc


def test_duplicate_task_names_are_refused_and_integer_gpus_stored(real):
    import kubernetes

    from asyncmtl.crd import GROUP, PLURAL, VERSION

    api, ns = real
    custom = kubernetes.client.CustomObjectsApi(api)
    doc = _run("dup", ns)
    doc["spec"]["tasks"][1]["name"] = doc["spec"]["tasks"][0]["name"]
    with pytest.raises(kubernetes.client.ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)
    assert info.value.status == 422 and "spec.tasks[1]: Duplicate value" in info.value.body
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL,
                                           _run("gpu", ns, cluster={"resources": {"limits": {"nvidia.com/gpu": 1}}}))
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "gpu")
    assert stored["spec"]["cluster"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "cluster" in stored["spec"] and "image" not in stored["spec"]["cluster"]  # no CRD default there


def test_status_subresource_rules(real):
    import kubernetes

    from asyncmtl.crd import GROUP, PLURAL, VERSION

    api, ns = real
    custom = kubernetes.client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _run("s", ns, training={"maxSteps": 500}))
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, "s", {
        "status": {"phase": "Running"}, "spec": {"training": {"maxSteps": 9}}})
    after = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "s")
    assert after["status"]["phase"] == "Running" and after["spec"]["training"]["maxSteps"] == 500
    assert after["metadata"]["generation"] == 1
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "s", {"status": {"phase": "Failed"}})
    after = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "s")
    assert after["status"]["phase"] == "Running" and after["metadata"]["generation"] == 1


def test_service_account_admission_and_strict_dry_runs(real):
    import kubernetes

    api, ns = real
    core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"serviceAccountName": "asyncmtl-workload", "containers": [{"name": "c", "image": "busybox"}]}}
    with pytest.raises(kubernetes.client.ApiException) as info:
        core.create_namespaced_pod(ns, pod, dry_run="All")
    # the API server's message, read from its JSON Status (the raw body escapes the quotes)
    assert info.value.status == 403 and 'serviceaccount "asyncmtl-workload" not found' in json.loads(info.value.body)["message"]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "runtimeClass": "nvidia", "containers": [{"name": "c", "image": "busybox"}]}}}}
    with pytest.raises((kubernetes.client.ApiException, ValueError)) as refused:
        batch.create_namespaced_job(ns, job, dry_run="All", field_validation="Strict")
    assert "runtimeClass" in str(getattr(refused.value, "body", refused.value))


def test_the_operators_jobs_with_a_pod_template_pass_a_real_dry_run(real):
    from asyncmtl.spec import parse_run
    from asyncmtl_operator import children
    from asyncmtl_operator.kube import Kube

    api, ns = real
    doc = _run("tpl", ns, cluster={"podTemplate": {"spec": {
        "runtimeClassName": "nvidia", "affinity": {"podAntiAffinity": {}},
        "volumes": [{"name": "hf", "secret": {"secretName": "hf"}}],
        "containers": [{"name": "trainer", "volumeMounts": [{"name": "hf", "mountPath": "/var/run/hf"}]},
                       {"name": "logs", "image": "busybox"}]}}})
    run = parse_run(json.loads(json.dumps(doc)))
    kube = Kube(api)
    kube.dry_run_job(children.training_job(run, ns), ns)
    kube.dry_run_job(children.inference_job(run, ns, "sentiment", 200, 2), ns)
