"""The operator under failure: invalid spec, restart mid-run, Prometheus outage, failing inference,
a trainer pod that cannot start. Same real components as the lifecycle test."""
from __future__ import annotations

import time

import kubernetes
import pytest
from kopf.testing import KopfRunner

from tests.operator.conftest import TIMER, FakeTrainer, wait_until
from tests.operator.helpers import (NS, apply_run, events, exists, fail_job, get_obj, get_run, make_run, operator_args,
                                    signals)
from tests.operator.prometheus_server import PrometheusServer

pytestmark = pytest.mark.slow  # processes, servers or training: `make test-fast` skips it


@pytest.fixture()
def setup(driven_operator):
    return driven_operator("f")


def plateau_a(trainer: FakeTrainer, prom: PrometheusServer, steps=(100, 200, 300, 400)) -> None:
    values = {100: 50.0, 200: 60.0, 300: 59.0, 400: 58.0}
    for step in steps:
        trainer.validate(step, {"a": values[step], "b": step / 10})
        prom.wait_for(f'asyncmtl_validation_last_step{{task="a"}} == {step}')
        time.sleep(TIMER)


def converge_a_with_inference_pending(kube, endpoint: str, trainer: FakeTrainer, prom: PrometheusServer,
                                      distillation: dict) -> None:
    """Run f applied with `distillation`; task a converges (best at 200), its first inference Job exists, and the
    trainer has rewound and acknowledged."""
    apply_run(kube, make_run("f", endpoint=endpoint, distillation=distillation))
    wait_until(lambda: get_run(kube, "f").get("status", {}).get("phase") == "Running", what="Running")
    plateau_a(trainer, prom)
    wait_until(lambda: exists(kube, "Job", "f-infer-a-200"), what="first inference Job")
    trainer.rewind(200, {"a": 60.0, "b": 20.0})
    trainer.ack(1, 200)


def test_invalid_spec_fails_with_the_path_and_starts_nothing(cluster, kube, s3, monkeypatch):
    """A rule the CRD cannot express (weights naming no task) is the operator's to refuse."""
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    doc = make_run("bad", endpoint=s3[0], weighting={"weights": {"zz": 2.0}})
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, doc)
        st = wait_until(lambda: get_run(kube, "bad").get("status", {}).get("phase") == "Failed"
                        and get_run(kube, "bad")["status"], what="Failed")
        time.sleep(2 * TIMER)
    assert runner.exit_code == 0, runner.output
    (ready,) = [c for c in st["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.weighting.weights: unknown task(s) ['zz']" in ready["message"]
    # terminal, so `kubectl wait --for=condition=Failed` returns (before: no Failed condition, the wait hung)
    (failed,) = [c for c in st["conditions"] if c["type"] == "Failed"]
    assert failed["status"] == "True" and failed["reason"] == "InvalidSpec" and failed["observedGeneration"] == 1
    assert not exists(kube, "Job", "bad-train") and not exists(kube, "ConfigMap", "bad-control")
    assert "InvalidSpec" in [e["reason"] for e in events(kube, "bad")]


def test_a_duplicate_task_name_is_refused_at_apply_with_its_path(cluster, kube, s3):
    """The CRD's list-map keys: the API server refuses the run; nothing is created."""
    with pytest.raises(kubernetes.client.ApiException) as info:
        apply_run(kube, make_run("dup", endpoint=s3[0], tasks=("a", "a")))
    assert info.value.status == 422 and "spec.tasks[1]: Duplicate value" in info.value.body
    with pytest.raises(kubernetes.client.ApiException) as gone:
        get_run(kube, "dup")
    assert gone.value.status == 404


def test_restart_mid_run_duplicates_nothing(setup):
    kube, endpoint, trainer, prom = setup
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, make_run("f", endpoint=endpoint))
        wait_until(lambda: get_run(kube, "f").get("status", {}).get("phase") == "Running", what="Running")
        plateau_a(trainer, prom)
        wait_until(lambda: exists(kube, "Job", "f-infer-a-200"), what="inference Job")
    assert runner.exit_code == 0, runner.output
    before = get_run(kube, "f")["status"]
    # a new operator process picks the run up from its status
    with KopfRunner(operator_args(), timeout=60) as runner:
        trainer.rewind(200, {"a": 60.0, "b": 20.0})
        trainer.ack(1, 200)
        wait_until(lambda: get_run(kube, "f")["status"]["operatorState"]["acknowledgedGeneration"] == 1, what="ack seen")
        time.sleep(3 * TIMER)
    assert runner.exit_code == 0, runner.output
    after = get_run(kube, "f")["status"]
    assert [s["task"] for s in signals(kube, "f", "converged")] == ["a"]  # no signal issued twice
    assert after["operatorState"]["control"]["generation"] == before["operatorState"]["control"]["generation"] == 1
    jobs = kubernetes.client.BatchV1Api(kube).list_namespaced_job(NS).items
    assert sorted(j.metadata.name for j in jobs) == ["f-infer-a-200", "f-train"]
    assert after["tasks"]["a"]["phase"] == "AwaitingSoftLabels"


def test_prometheus_outage_blocks_decisions_until_it_is_back(setup, prometheus_binary, tmp_path):
    kube, endpoint, trainer, prom = setup
    with KopfRunner(operator_args(), timeout=90) as runner:
        apply_run(kube, make_run("f", endpoint=endpoint))
        wait_until(lambda: get_run(kube, "f").get("status", {}).get("phase") == "Running", what="Running")
        plateau_a(trainer, prom, steps=(100, 200, 300))
        prom.stop()
        trainer.validate(400, {"a": 58.0, "b": 40.0})  # the deciding point, while nobody can see it
        cond = wait_until(lambda: next((c for c in get_run(kube, "f")["status"]["conditions"]
                                        if c["type"] == "MetricsAvailable" and c["status"] == "False"), None),
                          what="MetricsAvailable=False")
        assert "Prometheus unreachable" in cond["message"]
        time.sleep(3 * TIMER)
        assert not signals(kube, "f", "converged")  # nothing decided without metrics
        # Prometheus comes back (fresh storage, same address): the decision follows from the sampling-proof series
        (tmp_path / "prom2").mkdir()
        back = PrometheusServer(prometheus_binary, tmp_path / "prom2", [trainer.target], {"namespace": NS})
        back.port, back.url = prom.port, prom.url
        back.start()
        try:
            conv = wait_until(lambda: signals(kube, "f", "converged"), timeout=30, what="decision after recovery")
            assert (conv[0]["task"], conv[0]["bestStep"]) == ("a", 200)
            wait_until(lambda: any(c["type"] == "MetricsAvailable" and c["status"] == "True"
                                   for c in get_run(kube, "f")["status"]["conditions"]), what="MetricsAvailable=True")
        finally:
            back.stop()
    assert runner.exit_code == 0, runner.output


def test_failing_inference_is_retried_then_the_run_is_degraded(setup, monkeypatch):
    kube, endpoint, trainer, prom = setup
    with KopfRunner(operator_args(), timeout=90) as runner:
        apply_run(kube, make_run("f", endpoint=endpoint, distillation={"shards": 2, "maxAttempts": 2}))
        wait_until(lambda: get_run(kube, "f").get("status", {}).get("phase") == "Running", what="Running")
        plateau_a(trainer, prom)
        wait_until(lambda: exists(kube, "Job", "f-infer-a-200"), what="first inference Job")
        trainer.rewind(200, {"a": 60.0, "b": 20.0})
        trainer.ack(1, 200)
        fail_job(kube, "f-infer-a-200")
        wait_until(lambda: exists(kube, "Job", "f-infer-a-200-r2"), what="retry Job")
        fail_job(kube, "f-infer-a-200-r2")
        st = wait_until(lambda: get_run(kube, "f")["status"]["tasks"]["a"]["phase"] == "Frozen" and get_run(kube, "f")["status"],
                        what="Frozen")
    assert runner.exit_code == 0, runner.output
    deg = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert deg["status"] == "True" and deg["reason"] == "InferenceFailed" and "BackoffLimitExceeded" in deg["message"]
    assert [s["task"] for s in signals(kube, "f", "skipDistillation")] == ["a"]
    assert st["phase"] == "Running"  # b keeps training
    reasons = [e["reason"] for e in events(kube, "f")]
    assert "InferenceRetried" in reasons and "InferenceFailed" in reasons


def test_a_trainer_pod_that_cannot_pull_its_image_is_named_in_the_status(setup):
    kube, endpoint, trainer, prom = setup
    core = kubernetes.client.CoreV1Api(kube)
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, make_run("f", endpoint=endpoint))
        wait_until(lambda: get_run(kube, "f").get("status", {}).get("phase") == "Running", what="Running")
        # what the Job controller and kubelet would report for the trainer pod
        core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "f-train-x1", "labels": {"asyncmtl.dev/run": "f", "asyncmtl.dev/role": "train"}},
            "spec": {"containers": [{"name": "trainer", "image": "asyncmtl/trainer:nope"}]}})
        core.patch_namespaced_pod_status("f-train-x1", NS, {"status": {"phase": "Pending", "containerStatuses": [{
            "name": "trainer", "ready": False, "restartCount": 0, "image": "asyncmtl/trainer:nope", "imageID": "",
            "state": {"waiting": {"reason": "ImagePullBackOff",
                                  "message": "Back-off pulling image \"asyncmtl/trainer:nope\""}}}]}})
        ready = wait_until(lambda: next((c for c in get_run(kube, "f")["status"]["conditions"]
                                         if c["type"] == "Ready" and c["status"] == "False"), None), what="Ready=False")
    assert runner.exit_code == 0, runner.output
    assert ready["reason"] == "ImagePullBackOff" and "asyncmtl/trainer:nope" in ready["message"]
    assert "TrainerBlocked" in [e["reason"] for e in events(kube, "f")]


def test_a_quota_refusal_is_named_in_the_status(setup):
    kube, endpoint, trainer, prom = setup
    core = kubernetes.client.CoreV1Api(kube)
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, make_run("f", endpoint=endpoint))
        wait_until(lambda: get_run(kube, "f").get("status", {}).get("phase") == "Running", what="Running")
        # what the Job controller reports when a ResourceQuota refuses the pod
        core.create_namespaced_event(NS, {"metadata": {"name": "f-train.quota"}, "type": "Warning", "reason": "FailedCreate",
                                          "involvedObject": {"kind": "Job", "name": "f-train", "namespace": NS},
                                          "message": 'Error creating: pods "f-train-x" is forbidden: exceeded quota: gpu, '
                                                     "requested: requests.nvidia.com/gpu=1, used: 4, limited: 4"})
        ready = wait_until(lambda: next((c for c in get_run(kube, "f")["status"]["conditions"]
                                         if c["type"] == "Ready" and c["status"] == "False"), None), what="Ready=False")
    assert runner.exit_code == 0, runner.output
    assert ready["reason"] == "QuotaExceeded" and "requests.nvidia.com/gpu" in ready["message"]


def test_unreachable_storage_starts_no_pod(cluster, kube, s3, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    doc = make_run("nobucket", endpoint=s3[0], storage={"uri": "s3://no-such-bucket/x", "endpointUrl": s3[0]})
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, doc)
        cond = wait_until(lambda: next((c for c in (get_run(kube, "nobucket").get("status") or {}).get("conditions", [])
                                        if c["reason"] == "StorageUnavailable"), None), what="StorageUnavailable")
        time.sleep(2 * TIMER)
        assert not exists(kube, "Job", "nobucket-train") and not exists(kube, "ConfigMap", "nobucket-control")
    assert runner.exit_code == 0, runner.output
    assert "no-such-bucket" in cond["message"]


def test_delete_keeps_artifacts_unless_cleanup_is_asked(cluster, kube, s3, monkeypatch):
    from asyncmtl.storage_factory import open_run_storage

    endpoint, _ = s3
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    custom = kubernetes.client.CustomObjectsApi(kube)
    stores = {}
    with KopfRunner(operator_args(), timeout=60) as runner:
        for name, cleanup in (("keep", False), ("clean", True)):
            doc = make_run(name, endpoint=endpoint, storage={"uri": "s3://runs/exp", "endpointUrl": endpoint,
                                                             "cleanupOnDelete": cleanup})
            apply_run(kube, doc)
            wait_until(lambda: get_run(kube, name).get("status", {}).get("phase") == "Running", what=f"{name} Running")
            stores[name] = open_run_storage("s3://runs/exp", namespace=NS, run=name, endpoint_url=endpoint)
            stores[name].put_bytes("reports/report.json", b"{}")
            custom.delete_namespaced_custom_object("asyncmtl.dev", "v1alpha1", NS, "asyncmtlruns", name)
        for name in stores:
            wait_until(lambda: not _run_exists(custom, name), what=f"{name} deleted")
    assert runner.exit_code == 0, runner.output
    assert stores["keep"].exists("reports/report.json")
    assert not stores["clean"].exists("reports/report.json")


def _run_exists(custom, name: str) -> bool:
    try:
        custom.get_namespaced_custom_object("asyncmtl.dev", "v1alpha1", NS, "asyncmtlruns", name)
        return True
    except kubernetes.client.exceptions.ApiException as exc:
        if exc.status == 404:
            return False
        raise


def test_a_suspended_training_job_shows_queued_not_broken_then_runs_when_admitted(setup):
    """Kueue suspends a Job until its queue admits it: the run is Queued (Ready=False, reason Queued,
    the printer column says so), no MetricsAvailable=False and no stale-metrics series meanwhile;
    unsuspended, it runs."""
    kube, endpoint, trainer, prom = setup
    batch = kubernetes.client.BatchV1Api(kube)
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, make_run("f", endpoint=endpoint))
        wait_until(lambda: exists(kube, "Job", "f-train"), what="training Job")
        batch.patch_namespaced_job("f-train", NS, {"spec": {"suspend": True}})  # what Kueue does
        queued = wait_until(lambda: get_run(kube, "f").get("status", {}).get("phase") == "Queued"
                            and get_run(kube, "f"), what="Queued")
        conds = {c["type"]: c for c in queued["status"]["conditions"]}
        assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "Queued"
        assert conds.get("MetricsAvailable", {}).get("status") != "False"
        assert "Queued" in [e["reason"] for e in events(kube, "f")]
        batch.patch_namespaced_job("f-train", NS, {"spec": {"suspend": False}})  # admitted
        wait_until(lambda: get_run(kube, "f").get("status", {}).get("phase") == "Running", what="Running again")
    assert runner.exit_code == 0, runner.output
    assert "Admitted" in [e["reason"] for e in events(kube, "f")]


def test_a_spec_edited_after_the_start_is_reported_not_half_applied(setup):
    """The pods read the spec once: an edit (here a's patience 2 -> 50) would change the operator's
    decisions but not the trainer. The run goes on with the spec it started with, observedGeneration
    stays at that generation, and a Warning Event says why."""
    kube, endpoint, trainer, prom = setup
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, make_run("f", endpoint=endpoint))
        wait_until(lambda: get_run(kube, "f").get("status", {}).get("phase") == "Running", what="Running")
        tasks = get_run(kube, "f")["spec"]["tasks"]
        tasks[0]["patience"] = 50
        kubernetes.client.CustomObjectsApi(kube).patch_namespaced_custom_object(
            "asyncmtl.dev", "v1alpha1", NS, "asyncmtlruns", "f", {"spec": {"tasks": tasks}})
        assert get_run(kube, "f")["metadata"]["generation"] == 2
        wait_until(lambda: "SpecChangeIgnored" in [e["reason"] for e in events(kube, "f")], what="SpecChangeIgnored")
        plateau_a(trainer, prom)  # a: best at 200, no better at 300 and 400: converged under patience 2
        converged = wait_until(lambda: signals(kube, "f", "converged"), what="a converged (the started spec)")
        st = get_run(kube, "f")["status"]
    assert runner.exit_code == 0, runner.output
    assert converged[0]["task"] == "a" and converged[0]["bestStep"] == 200
    assert st["observedGeneration"] == 1 and all(c["observedGeneration"] == 1 for c in st["conditions"])


def test_an_inference_job_that_never_gets_a_pod_cannot_deadlock_the_run(setup):
    """Under a GPU quota of exactly the trainer's GPUs, a paused trainer holds them and the inference Job's
    pod is never admitted. After distillation.pendingTimeoutSeconds without a pod an attempt counts as
    failed; after maxAttempts the task is frozen with Degraded=True and the run goes on."""
    kube, endpoint, trainer, prom = setup
    with KopfRunner(operator_args(), timeout=90) as runner:
        converge_a_with_inference_pending(kube, endpoint, trainer, prom,
                                          {"shards": 2, "maxAttempts": 2, "pendingTimeoutSeconds": 2})
        # no pod ever runs (the emulator runs no Job controller: the quota refusal's effect)
        st = wait_until(lambda: get_run(kube, "f")["status"]["tasks"]["a"]["phase"] == "Frozen"
                        and get_run(kube, "f")["status"], what="Frozen", timeout=60)
    assert runner.exit_code == 0, runner.output
    assert [e["reason"] for e in events(kube, "f")].count("InferenceRetried") == 1  # retried once
    assert not exists(kube, "Job", "f-infer-a-200") and not exists(kube, "Job", "f-infer-a-200-r2")  # stuck: deleted
    deg = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert deg["status"] == "True" and "pendingTimeoutSeconds" in deg["message"]
    assert st["phase"] == "Running"  # b keeps training


def test_a_pod_template_the_kubernetes_schema_refuses_fails_the_run_before_any_child(cluster, kube, s3, monkeypatch):
    """`runtimeClass` (for runtimeClassName) passes the CRD (the overlay's spec is free-form) but not the
    API server's PodSpec schema: a server-side dry run of the training Job refuses it with its path."""
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    endpoint, _ = s3
    good = make_run("tpl", endpoint=endpoint, cluster={"podTemplate": {"spec": {
        "runtimeClassName": "nvidia", "affinity": {"podAntiAffinity": {}}}}})
    bad = make_run("typo", endpoint=endpoint, cluster={"podTemplate": {"spec": {"runtimeClass": "nvidia"}}})
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, bad)
        apply_run(kube, good)
        st = wait_until(lambda: get_run(kube, "typo").get("status", {}).get("phase") == "Failed"
                        and get_run(kube, "typo")["status"], what="typo Failed")
        job = wait_until(lambda: get_obj(kube, "Job", "tpl-train"), what="tpl training Job")
        time.sleep(TIMER)
        assert not exists(kube, "Job", "typo-train") and not exists(kube, "ConfigMap", "typo-control")
    assert runner.exit_code == 0, runner.output
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec" and "spec.cluster.podTemplate" in ready["message"]
    assert "runtimeClass" in ready["message"] and "InvalidSpec" in [e["reason"] for e in events(kube, "typo")]
    assert job["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


def test_inference_pods_that_stay_pending_cannot_deadlock_the_run(setup):
    """The Job controller counts Pending pods as `active`: unschedulable inference pods (a paused trainer holds the
    only GPU) or pods that cannot pull their image made a Job that looked alive forever. After
    distillation.pendingTimeoutSeconds with no pod run, the attempt fails, its Job is deleted, and it is retried."""
    kube, endpoint, trainer, prom = setup
    core = kubernetes.client.CoreV1Api(kube)
    with KopfRunner(operator_args(), timeout=90) as runner:
        converge_a_with_inference_pending(kube, endpoint, trainer, prom,
                                          {"shards": 1, "maxAttempts": 2, "pendingTimeoutSeconds": 3})
        # what the Job controller and the scheduler report: one pod, Pending, Unschedulable; the Job active
        core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "f-infer-a-200-0-x1", "labels": {"batch.kubernetes.io/job-name": "f-infer-a-200",
                                                     "asyncmtl.dev/run": "f", "asyncmtl.dev/role": "infer"}},
            "spec": {"containers": [{"name": "infer", "image": "asyncmtl/trainer:0.1.0"}]}})
        core.patch_namespaced_pod_status("f-infer-a-200-0-x1", NS, {"status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}})
        kubernetes.client.BatchV1Api(kube).patch_namespaced_job_status("f-infer-a-200", NS, {"status": {"active": 1}})
        wait_until(lambda: exists(kube, "Job", "f-infer-a-200-r2"), what="the retry's Job", timeout=30)
        wait_until(lambda: not exists(kube, "Job", "f-infer-a-200"), what="the stuck Job deleted", timeout=10)
    assert runner.exit_code == 0, runner.output
    retried = [e["message"] for e in events(kube, "f") if e["reason"] == "InferenceRetried"]
    assert retried and "pendingTimeoutSeconds" in retried[0]
