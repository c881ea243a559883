"""The operator acts on what is there, not on what it remembers (Kubernetes' level-triggered reconciliation):
a run applied again after being deleted is a new run, a child left by someone else is not adopted, and a
deleted child is made again."""
from __future__ import annotations

import kubernetes
import pytest
from kopf.testing import KopfRunner

from asyncmtl.artifacts import checkpoint_file, read_run_owner
from asyncmtl.storage_factory import open_run_storage
from tests.operator.conftest import wait_until
from tests.operator.helpers import NS, apply_run, events, exists, get_obj, get_run, make_run, operator_args
from tests.operator.test_failures import _run_exists, plateau_a

pytestmark = pytest.mark.slow


@pytest.fixture()
def quiet(monkeypatch):
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")


def test_a_run_deleted_and_applied_again_starts_anew(cluster, kube, s3, quiet):
    """Before: storage is keyed by namespace and name and the trainer starts with --resume, so the new run
    continued the deleted one's checkpoints, even with a changed spec."""
    endpoint, _ = s3
    custom = kubernetes.client.CustomObjectsApi(kube)
    storage = open_run_storage("s3://runs/exp", namespace=NS, run="again", endpoint_url=endpoint)
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, make_run("again", endpoint=endpoint))
        wait_until(lambda: get_run(kube, "again").get("status", {}).get("phase") == "Running", what="Running")
        first_uid = get_run(kube, "again")["metadata"]["uid"]
        storage.put_bytes(checkpoint_file(200, "state.json"), b"{}")  # what its trainer wrote
        custom.delete_namespaced_custom_object("asyncmtl.dev", "v1alpha1", NS, "asyncmtlruns", "again")
        wait_until(lambda: not _run_exists(custom, "again"), what="deleted")
        apply_run(kube, make_run("again", endpoint=endpoint, patience=5))  # a changed spec, the same name
        wait_until(lambda: get_run(kube, "again").get("status", {}).get("phase") in ("Running", "Pending"),
                   what="the new run started")
        second_uid = get_run(kube, "again")["metadata"]["uid"]
        wait_until(lambda: "PreviousRunReplaced" in [e["reason"] for e in events(kube, "again")], what="the Event")
    assert runner.exit_code == 0, runner.output
    assert first_uid != second_uid
    assert not storage.exists(checkpoint_file(200, "state.json"))
    assert read_run_owner(storage).uid == second_uid


def test_a_child_owned_by_another_object_is_not_adopted(cluster, kube, s3, quiet):
    """A 409 used to count as created: a quick re-apply could adopt children the garbage collector was deleting."""
    endpoint, _ = s3
    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "taken-control", "ownerReferences": [{
        "apiVersion": "asyncmtl.dev/v1alpha1", "kind": "AsyncMTLRun", "name": "taken", "uid": "0-deleted-run"}]},
        "data": {"control.json": "{}"}})
    with KopfRunner(operator_args(), timeout=90) as runner:
        apply_run(kube, make_run("taken", endpoint=endpoint))
        cond = wait_until(lambda: next((c for c in (get_run(kube, "taken").get("status") or {}).get("conditions", [])
                                        if c["type"] == "Ready" and c["status"] == "False"), None), what="Ready=False")
        assert not exists(kube, "Job", "taken-train")
        core.delete_namespaced_config_map("taken-control", NS)  # what the garbage collector finishes doing
        job = wait_until(lambda: get_obj(kube, "Job", "taken-train"), what="the training Job", timeout=60)
    assert runner.exit_code == 0, runner.output
    assert cond["reason"] == "AlreadyExists" and "0-deleted-run" in cond["message"]
    uid = get_run(kube, "taken")["metadata"]["uid"]
    assert get_obj(kube, "ConfigMap", "taken-control")["metadata"]["ownerReferences"][0]["uid"] == uid
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid


def test_deleted_children_are_made_again(setup_trainer):
    """Before: a deleted training Job failed the run, and a deleted control ConfigMap gave a 404 at every write."""
    kube, endpoint, trainer, prom = setup_trainer
    batch, core = kubernetes.client.BatchV1Api(kube), kubernetes.client.CoreV1Api(kube)
    with KopfRunner(operator_args(), timeout=90) as runner:
        apply_run(kube, make_run("f", endpoint=endpoint))
        wait_until(lambda: get_run(kube, "f").get("status", {}).get("phase") == "Running", what="Running")
        first = get_obj(kube, "Job", "f-train")["metadata"]["uid"]
        batch.delete_namespaced_job("f-train", NS)
        wait_until(lambda: exists(kube, "Job", "f-train") and get_obj(kube, "Job", "f-train")["metadata"]["uid"] != first,
                   what="the training Job made again")
        core.delete_namespaced_config_map("f-control", NS)
        plateau_a(trainer, prom)  # a converges: a control write
        cm = wait_until(lambda: exists(kube, "ConfigMap", "f-control") and get_obj(kube, "ConfigMap", "f-control"),
                        what="the control ConfigMap made again")
        st = get_run(kube, "f")["status"]
    assert runner.exit_code == 0, runner.output
    assert st["phase"] == "Running"
    assert '"converged"' in cm["data"]["control.json"] and "run.yaml" in cm["data"]
    reasons = [e["reason"] for e in events(kube, "f")]
    assert "TrainingJobRecreated" in reasons and "ControlRecreated" in reasons


@pytest.fixture()
def setup_trainer(driven_operator):
    return driven_operator("f")

