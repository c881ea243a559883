"""The emulator additions the operator tests rely on behave like a real API server."""
from __future__ import annotations

import json

import kubernetes

from tests.operator.helpers import NS, exists


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


def test_a_status_write_changes_only_the_status_and_a_spec_write_never_the_status(kube):
    """The status subresource (CRDs with `subresources.status`, and Jobs): spec ignored on /status,
    status ignored on the resource itself, generation bumped by spec changes only."""
    from asyncmtl.crd import GROUP, PLURAL, VERSION

    api = kubernetes.client.CustomObjectsApi(kube)
    stored = _create(kube, _run("s", training={"maxSteps": 500}) | {"status": {"phase": "Succeeded"}})
    assert "status" not in stored  # ignored on create
    api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "s", {
        "status": {"phase": "Running"}, "spec": {"training": {"maxSteps": 9}}})
    after = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "s")
    assert after["status"]["phase"] == "Running" and after["spec"]["training"]["maxSteps"] == 500
    assert after["metadata"]["generation"] == 1
    api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "s", {"status": {"phase": "Failed"},
                                                                       "metadata": {"labels": {"x": "y"}}})
    after = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "s")
    assert after["status"]["phase"] == "Running" and after["metadata"]["generation"] == 1
    api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "s", {"spec": {"training": {"maxSteps": 500}}})
    assert api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "s")["metadata"]["generation"] == 1  # no change
    api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "s", {"spec": {"training": {"maxSteps": 600}}})
    assert api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "s")["metadata"]["generation"] == 2

    batch = kubernetes.client.BatchV1Api(kube)
    batch.create_namespaced_job(NS, _job("j"))
    batch.patch_namespaced_job("j", NS, {"status": {"succeeded": 1}})
    assert not (kube.sanitize_for_serialization(batch.read_namespaced_job("j", NS)).get("status") or {}).get("succeeded")


def _job(name: str, account: str | None = None, **resources) -> dict:
    pod = {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox",
                                                     **({"resources": resources} if resources else {})}]}
    if account:
        pod["serviceAccountName"] = account
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {"template": {"spec": pod}}}


def _pod(name: str, account: str | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {**_job(name, account)["spec"]["template"]["spec"]}}


def test_a_pod_naming_a_service_account_its_namespace_lacks_is_refused(kube):
    """The ServiceAccount admission plugin: 403 naming namespace/account; `default` always exists."""
    import pytest

    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespaced_pod("team-a", _pod("p0"))  # the namespace's `default` account
    with pytest.raises(kubernetes.client.ApiException) as info:
        core.create_namespaced_pod("team-a", _pod("p1", "asyncmtl-workload"))
    assert info.value.status == 403
    assert json.loads(info.value.body)["message"] == (
        'pods "p1" is forbidden: error looking up service account team-a/asyncmtl-workload: '
        'serviceaccount "asyncmtl-workload" not found')
    core.create_namespaced_service_account("team-b", {"metadata": {"name": "asyncmtl-workload"}})
    with pytest.raises(kubernetes.client.ApiException):  # an account in another namespace does not count
        core.create_namespaced_pod("team-a", _pod("p1", "asyncmtl-workload"))
    core.create_namespaced_pod("team-b", _pod("p1", "asyncmtl-workload"))


def _post_job(cluster, job: dict, query: str = ""):
    """POST a Job as kubectl would, past the Python client's own model checks (the server's are tested)."""
    import requests

    return requests.post(f"{cluster.url}/apis/batch/v1/namespaces/{NS}/jobs{query}", json=job, timeout=10)


def test_pods_and_jobs_are_validated_against_the_kubernetes_schema_with_quantities_parsed(cluster, kube):
    ok = _post_job(cluster, _job("ok", limits={"nvidia.com/gpu": 1, "memory": "16Gi", "cpu": "500m"}))
    assert ok.status_code in (200, 201), ok.text
    bad = _post_job(cluster, _job("bad-q", limits={"nvidia.com/gpu": "one"}))
    assert bad.status_code == 422
    assert "spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]: Invalid value: 'one'" in bad.json()[
        "message"]
    wrong = _job("bad-field")
    wrong["spec"]["template"]["spec"]["affinity"] = 3
    bad = _post_job(cluster, wrong)
    assert bad.status_code == 422 and "spec.template.spec.affinity: Invalid value" in bad.json()["message"]
    unknown = _job("unknown-field")
    unknown["spec"]["template"]["spec"]["runtimeClass"] = "nvidia"  # the field is runtimeClassName
    bad = _post_job(cluster, unknown, "?fieldValidation=Strict")
    assert bad.status_code == 422 and "runtimeClass" in bad.json()["message"]
    assert not exists(kube, "Job", "bad-q") and not exists(kube, "Job", "unknown-field") and exists(kube, "Job", "ok")
    unknown["metadata"]["name"] = "warned"
    assert _post_job(cluster, unknown).status_code in (200, 201)  # fieldValidation=Warn, the default


def test_the_job_controller_creates_pods_through_admission_or_records_failed_create(tmp_path, monkeypatch):
    from tests.operator.emulator import EmulatedCluster

    with EmulatedCluster(jobs=True) as c:
        api = kubernetes.config.new_client_from_config(str(c.kubeconfig(tmp_path / "kc")))
        batch, core = kubernetes.client.BatchV1Api(api), kubernetes.client.CoreV1Api(api)
        batch.create_namespaced_job("team-a", _job("good"))
        batch.create_namespaced_job("team-a", _job("nosa", "asyncmtl-workload"))
        suspended = _job("held")
        suspended["spec"]["suspend"] = True
        batch.create_namespaced_job("team-a", suspended)

        def pods(job: str) -> list:
            return core.list_namespaced_pod("team-a", label_selector=f"job-name={job}").items

        assert len(pods("good")) == 1 and pods("good")[0].metadata.owner_references[0].name == "good"
        assert pods("nosa") == [] and pods("held") == []
        evs = [e for e in core.list_namespaced_event("team-a").items if e.involved_object.name == "nosa"]
        assert [e.reason for e in evs] == ["FailedCreate"] and 'serviceaccount "asyncmtl-workload" not found' \
            in evs[0].message
        batch.patch_namespaced_job("held", "team-a", {"spec": {"suspend": False}})  # admitted by Kueue
        assert len(pods("held")) == 1


def test_lists_honour_label_and_field_selectors(kube):
    """The operator finds its pods by label and its Events by involvedObject: both filtered server-side."""
    core = kubernetes.client.CoreV1Api(kube)
    for name, labels in (("a", {"run": "x", "role": "train"}), ("b", {"run": "x", "role": "infer"}), ("c", {})):
        core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": labels}})
    names = lambda sel: sorted(c.metadata.name for c in core.list_namespaced_config_map(NS, label_selector=sel).items)
    assert names("run=x,role=train") == ["a"] and names("run=x") == ["a", "b"] and names("role!=train") == ["b", "c"]
    assert names("!run") == ["c"] and names("run") == ["a", "b"]
    for name, obj in (("e1", "j1"), ("e2", "j2")):
        core.create_namespaced_event(NS, {"metadata": {"name": name}, "reason": "R",
                                          "involvedObject": {"kind": "Job", "name": obj, "namespace": NS}})
    evs = core.list_namespaced_event(NS, field_selector="involvedObject.kind=Job,involvedObject.name=j2").items
    assert [e.metadata.name for e in evs] == ["e2"]


def test_a_dry_run_is_validated_but_never_stored(cluster, kube):
    import requests

    url = f"{cluster.url}/apis/batch/v1/namespaces/{NS}/jobs?dryRun=All&fieldValidation=Strict"
    assert requests.post(url, json=_job("dry"), timeout=10).status_code == 201
    assert not exists(kube, "Job", "dry")
    bad = _job("dry-bad")
    bad["spec"]["template"]["spec"]["runtimeClass"] = "x"
    assert requests.post(url, json=bad, timeout=10).status_code == 422


def test_every_example_run_is_accepted_as_written(kube):
    """`kubectl apply -f manifests/examples/` against the harness: every AsyncMTLRun is stored, the
    GPU example's `nvidia.com/gpu: 1` (an integer, as everyone writes it) included."""
    import yaml

    from asyncmtl.crd import KIND
    from tests.conftest import REPO

    applied = {}
    for path in sorted((REPO / "manifests" / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == KIND:
                doc["metadata"]["namespace"] = NS
                applied[doc["metadata"]["name"]] = _create(kube, doc)
    assert len(applied) >= 3
    gpu = applied["tweeteval-joint-gpu"]["spec"]["cluster"]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu == 1 and isinstance(gpu, int)


def test_a_duplicate_task_name_is_refused_with_the_api_servers_words(kube):
    import pytest

    doc = _run("dup")
    doc["spec"]["tasks"][1]["name"] = doc["spec"]["tasks"][0]["name"]
    with pytest.raises(kubernetes.client.ApiException) as info:
        _create(kube, doc)
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert 'spec.tasks[1]: Duplicate value: map[string]interface {}{"name":"sentiment"}' in message  # the list-map
    assert "duplicate task name" not in message  # no CEL rule repeats it (a real server refuses its cost: asyncmtl/spec/run.py)
