"""The operator as shipped (its image's environment, the chart's RBAC, its ServiceAccount's token) on the
real control plane: a run applied with kubectl gets its children through real RBAC and admission
(OwnerReferencesPermissionEnforcement among the plugins), and what the API server refuses reaches the
run's status and Events."""
from __future__ import annotations

import json
import uuid

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane, wait_for
from tests.cluster.operator_process import OperatorProcess, events_of, render_chart
from tests.conftest import REPO, builtin_task, moto_server, run_doc
from tests.images.image_env import ImageEnv

pytestmark = pytest.mark.slow
RUNS = "/apis/asyncmtl.dev/v1alpha1/namespaces/{ns}/asyncmtlruns"


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "-f", str(REPO / "crds" / "asyncmtlrun.yaml"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/asyncmtlruns.asyncmtl.dev")


@pytest.fixture(scope="module")
def operator_image() -> ImageEnv:
    return ImageEnv("operator", REPO / "operator" / "Dockerfile", REPO).build()


@pytest.fixture(scope="module")
def s3_endpoint():
    import boto3

    with moto_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                     region_name="us-east-1").create_bucket(Bucket="runs")
        yield endpoint


@pytest.fixture(scope="module")
def operator(control_plane, crd, operator_image, tmp_path_factory):
    op = OperatorProcess(control_plane, operator_image, tmp_path_factory.mktemp("operator"),
                         env={"PROMETHEUS_URL": "http://127.0.0.1:9", "ASYNCMTL_TIMER_INTERVAL": "1"})
    with op:
        yield op


def apply_run(cp: ControlPlane, namespace: str, endpoint: str, name: str) -> None:
    cp.kubectl("create", "secret", "generic", f"{name}-s3", "-n", namespace,
               "--from-literal=AWS_ACCESS_KEY_ID=k", "--from-literal=AWS_SECRET_ACCESS_KEY=s")
    doc = run_doc([builtin_task("sentiment"), builtin_task("sarcasm")], name=name,
                  storage={"uri": "s3://runs/exp", "endpointUrl": endpoint, "credentialsSecret": f"{name}-s3"},
                  cluster={"image": "asyncmtl/trainer:test"})
    doc["metadata"]["namespace"] = namespace
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))


def test_a_run_applied_with_kubectl_gets_its_children_under_the_charts_rbac(control_plane, namespace, operator,
                                                                            s3_endpoint):
    cp = control_plane
    apply_run(cp, namespace, s3_endpoint, "r1")
    job = wait_for("the training Job", lambda: cp.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/r1-train",
                                                       missing_ok=True), 60, on_timeout=lambda: "\n" + operator.tail())
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner["kind"] == "AsyncMTLRun" and owner["name"] == "r1" and owner["blockOwnerDeletion"] is True
    assert cp.get(f"/api/v1/namespaces/{namespace}/configmaps/r1-control")["data"]["control.json"]
    run = wait_for("the run's phase", lambda: (cp.get(f"{RUNS.format(ns=namespace)}/r1").get("status") or {}).get(
        "phase") and cp.get(f"{RUNS.format(ns=namespace)}/r1"), 60)
    assert run["status"]["phase"] in ("Pending", "Running"), json.dumps(run["status"])[:2000]


def test_what_the_api_server_refuses_is_in_the_runs_status_and_events(control_plane, namespace, operator, s3_endpoint):
    """Without `update` on asyncmtlruns/finalizers (the chart before this fix), OwnerReferencesPermissionEnforcement
    refuses every child that blocks its owner's deletion: 403. The run says so (before: blank phase, no Event)."""
    cp = control_plane
    role = next(o for o in render_chart() if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "asyncmtl")
    narrowed = {**role, "rules": [r for r in role["rules"] if "asyncmtlruns/finalizers" not in r["resources"]]}
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(narrowed))
    try:
        name = f"r-{uuid.uuid4().hex[:5]}"
        apply_run(cp, namespace, s3_endpoint, name)
        status = wait_for("Ready=False on the run", lambda: next(
            (c for c in (cp.get(f"{RUNS.format(ns=namespace)}/{name}").get("status") or {}).get("conditions", [])
             if c["type"] == "Ready" and c["status"] == "False"), None), 60, on_timeout=lambda: "\n" + operator.tail())
        assert status["reason"] == "Forbidden" and "finalizers" in status["message"], status
        assert cp.get(f"{RUNS.format(ns=namespace)}/{name}")["status"]["phase"] == "Pending"
        assert any(e["type"] == "Warning" and e["reason"] == "Forbidden" for e in events_of(cp, namespace, name))
        assert not cp.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}-train", missing_ok=True)
    finally:
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(role))


def test_a_missing_credentials_secret_is_in_the_runs_status(control_plane, namespace, operator, s3_endpoint):
    cp = control_plane
    doc = run_doc([builtin_task("sentiment")], name="nosecret",
                  storage={"uri": "s3://runs/exp", "endpointUrl": s3_endpoint, "credentialsSecret": "absent"})
    doc["metadata"]["namespace"] = namespace
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    cond = wait_for("Ready=False on the run", lambda: next(
        (c for c in (cp.get(f"{RUNS.format(ns=namespace)}/nosecret").get("status") or {}).get("conditions", [])
         if c["type"] == "Ready" and c["status"] == "False"), None), 60, on_timeout=lambda: "\n" + operator.tail())
    assert cond["reason"] == "StorageUnavailable" and "no Secret 'absent'" in cond["message"], cond
    assert any(e["reason"] == "StorageUnavailable" for e in events_of(cp, namespace, "nosecret"))
