"""End to end on the real control plane: the operator as shipped (tests/cluster/operator_process.py), the
trainer and inference pods run by the node agent (tests/cluster/node_agent.py) from the trainer image's
environment, a tiny random BERT, moto's S3 and a real Prometheus scraping the trainer. Each scenario is
one a user meets on a cluster: a run goes to Complete and `kubectl wait` returns; inference that cannot be
scheduled while the paused trainer holds the only GPU does not deadlock the run."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane, wait_for
from tests.cluster.operator_process import OperatorProcess, events_of, render_chart
from tests.conftest import REPO, builtin_task, moto_server, run_doc
from tests.images.image_env import ImageEnv

pytestmark = pytest.mark.slow
NS = "scenarios"
RUNS = f"/apis/asyncmtl.dev/v1alpha1/namespaces/{NS}/asyncmtlruns"


@pytest.fixture(scope="module")
def world(control_plane: ControlPlane, tmp_path_factory, prometheus_binary_path):
    """CRD, a namespace with the storage Secret, moto S3, Prometheus scraping 127.0.0.1:9400 (where the node
    agent's trainer pod serves its metrics) with prometheus-operator's namespace label, and the operator."""
    import boto3

    from tests.operator.prometheus_server import PrometheusServer

    cp = control_plane
    cp.kubectl("apply", "-f", str(REPO / "crds" / "asyncmtlrun.yaml"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/asyncmtlruns.asyncmtl.dev")
    if not cp.get(f"/api/v1/namespaces/{NS}", missing_ok=True):
        cp.create_namespace(NS)
    cp.kubectl("create", "secret", "generic", "s3", "-n", NS, "--from-literal=AWS_ACCESS_KEY_ID=k",
               "--from-literal=AWS_SECRET_ACCESS_KEY=s")
    work = tmp_path_factory.mktemp("scenarios")
    with moto_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                     region_name="us-east-1").create_bucket(Bucket="runs")
        (work / "prom").mkdir()
        prom = PrometheusServer(prometheus_binary_path, work / "prom", ["127.0.0.1:9400"], {"namespace": NS}).start()
        operator = OperatorProcess(cp, ImageEnv("operator", REPO / "operator" / "Dockerfile", REPO).build(),
                                   work / "operator", env={"PROMETHEUS_URL": prom.url, "ASYNCMTL_TIMER_INTERVAL": "1"})
        try:
            with operator:
                yield {"endpoint": endpoint, "prometheus": prom, "operator": operator, "finished": {}}
        finally:
            prom.stop()


@pytest.fixture(scope="module")
def prometheus_binary_path() -> str:
    from tests.operator.prometheus_server import find_prometheus

    binary = find_prometheus()
    if binary is None:
        pytest.skip("Prometheus missing: run `make tools`")
    return binary


@pytest.fixture(scope="module")
def trainer_image() -> ImageEnv:
    return ImageEnv("trainer", REPO / "trainer_image" / "Dockerfile", REPO).build()


def chart_trainer_image() -> str:
    """The trainer image the chart's defaults give every run (what the node agent must know)."""
    dep = next(o for o in render_chart() if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    return json.loads(env["ASYNCMTL_TRAINER_DEFAULTS"])["image"]


def small_run(name: str, endpoint: str, model, **spec) -> dict:
    # sentiment may converge early (patience 1: then rewind, inference, KD); sarcasm trains on to maxSteps
    tasks = [builtin_task("sentiment", patience=1), builtin_task("sarcasm", patience=50)]
    for t in tasks:
        t["data"].update(maxTrainExamples=96, maxValidationExamples=32, maxTestExamples=32)
    fields = {"training": {"batchSize": 8, "learningRate": 1e-3, "maxSteps": 80, "validationInterval": 10},
              "storage": {"uri": "s3://runs/exp", "endpointUrl": endpoint, "credentialsSecret": "s3"},
              "distillation": {"shards": 1}, "cluster": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}}
    fields.update(spec)
    doc = run_doc(tasks, model=str(model), name=name, **fields)
    doc["metadata"]["namespace"] = NS
    return doc


def wait_complete(cp: ControlPlane, name: str, namespace: str = NS, timeout: float = 420.0):
    """Wait until the run has ended (Succeeded or Failed: a failed run ends the wait at once), then
    `kubectl wait --for=condition=Complete` as a user's script would (it returns 0 only on Complete)."""
    deadline = time.monotonic() + timeout
    path = f"/apis/asyncmtl.dev/v1alpha1/namespaces/{namespace}/asyncmtlruns/{name}"
    while time.monotonic() < deadline and (cp.get(path).get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
        time.sleep(1.0)
    return cp.kubectl("wait", "--for=condition=Complete", f"asyncmtlrun/{name}", "-n", namespace, "--timeout=10s",
                      check=False)


def status_of(cp: ControlPlane, name: str) -> dict:
    return cp.get(f"{RUNS}/{name}").get("status") or {}


def test_a_run_applied_with_kubectl_completes_and_kubectl_wait_returns(control_plane, world, trainer_image, tiny_model,
                                                                       node_agent):
    cp = control_plane
    agent = node_agent({chart_trainer_image(): trainer_image})
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(small_run("e2e", world["endpoint"], tiny_model)))
    try:
        done = wait_complete(cp, "e2e")
    finally:
        st = status_of(cp, "e2e")
    diagnosis = (f"\nstatus: {json.dumps(st)[:3000]}\noperator:\n{world['operator'].tail(40)}\n"
                 f"trainer:\n{_trainer_log(agent, cp, 'e2e')}")
    assert done.returncode == 0, done.stderr + diagnosis
    assert st["phase"] == "Succeeded", diagnosis
    world["finished"]["e2e"] = st
    kd = [t for t, ts in st["tasks"].items() if ts["phase"] == "KD"]
    assert kd == ["sentiment"], diagnosis
    assert all(st["tasks"][t]["softLabelsUri"].startswith("s3://runs/exp/scenarios/e2e/softlabels/") for t in kd)
    import boto3

    s3 = boto3.client("s3", endpoint_url=world["endpoint"], aws_access_key_id="k", aws_secret_access_key="s",
                      region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="runs", Prefix="exp/scenarios/e2e/")["Contents"]}
    assert any(k.endswith("manifest.json") for k in keys) and "exp/scenarios/e2e/reports/report.json" in keys
    job = cp.get(f"/apis/batch/v1/namespaces/{NS}/jobs/e2e-train")
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"])
    reasons = [e["reason"] for e in events_of(cp, NS, "e2e")]
    for r in ("Started", "TaskConverged", "InferenceLaunched", "SoftLabelsReady", "Succeeded"):
        assert r in reasons, reasons


def _trainer_log(agent, cp: ControlPlane, run: str) -> str:
    pods = cp.get(f"/api/v1/namespaces/{NS}/pods?labelSelector=asyncmtl.dev%2Frun%3D{run}")["items"]
    out = []
    for p in pods:
        try:
            out.append(f"--- {p['metadata']['name']}\n" + "\n".join(agent.log(NS, p["metadata"]["name"]).splitlines()[-15:]))
        except Exception as exc:  # not started by the agent
            out.append(f"--- {p['metadata']['name']}: {exc}")
    return "\n".join(out)



def test_inference_that_cannot_be_scheduled_while_the_paused_trainer_holds_the_only_gpu_does_not_deadlock(
        control_plane, world, trainer_image, tiny_model, node_agent):
    """One GPU node; the trainer takes its GPU and pauses while soft labels are computed (whilePending: Pause, the
    paper's); the inference pod needs a GPU too, so the real scheduler leaves it Unschedulable. The Job controller
    counts that Pending pod as active. After pendingTimeoutSeconds the attempt fails, the task is frozen, the
    trainer goes on and the run completes, Degraded."""
    cp = control_plane
    agent = node_agent({chart_trainer_image(): trainer_image}, gpus=1)
    gpu = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": "1"}}
    doc = small_run("onegpu", world["endpoint"], tiny_model, cluster={"resources": gpu, "inferenceResources": gpu},
                    distillation={"shards": 1, "maxAttempts": 1, "pendingTimeoutSeconds": 8, "whilePending": "Pause"})
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    done = wait_complete(cp, "onegpu")
    st = status_of(cp, "onegpu")
    diagnosis = (f"\nstatus: {json.dumps(st)[:3000]}\noperator:\n{world['operator'].tail(40)}\n"
                 f"trainer:\n{_trainer_log(agent, cp, 'onegpu')}")
    assert done.returncode == 0, done.stderr + diagnosis
    assert st["phase"] == "Succeeded" and st["tasks"]["sentiment"]["phase"] == "Frozen", diagnosis
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "pendingTimeoutSeconds" in degraded["message"]
    unschedulable = [e for e in cp.get(f"/api/v1/namespaces/{NS}/events")["items"]
                     if e["reason"] == "FailedScheduling" and e["involvedObject"]["name"].startswith("onegpu-infer-")]
    assert unschedulable and "nvidia.com/gpu" in unschedulable[0]["message"]  # the real scheduler's words


def test_an_invalid_spec_fails_and_kubectl_wait_for_failed_returns(control_plane, world):
    doc = small_run("bad", world["endpoint"], "unused", weighting={"weights": {"nope": 2.0}})
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    r = control_plane.kubectl("wait", "--for=condition=Failed", "asyncmtlrun/bad", "-n", NS, "--timeout=60s", check=False)
    assert r.returncode == 0, r.stderr + world["operator"].tail(20)
    st = status_of(control_plane, "bad")
    assert st["phase"] == "Failed" and "spec.weighting.weights" in st["message"]
    assert not control_plane.get(f"/apis/batch/v1/namespaces/{NS}/jobs/bad-train", missing_ok=True)


def test_a_resource_quota_refusal_is_named_in_the_runs_status(control_plane, world, namespace):
    """The ResourceQuota admission plugin refuses the trainer pod; the Job controller records FailedCreate; the run
    says why it is not running (Ready=False, QuotaExceeded, the API server's words)."""
    cp = control_plane
    cp.kubectl("create", "quota", "no-gpus", "-n", namespace, "--hard=requests.nvidia.com/gpu=0")
    cp.kubectl("create", "secret", "generic", "s3", "-n", namespace, "--from-literal=AWS_ACCESS_KEY_ID=k",
               "--from-literal=AWS_SECRET_ACCESS_KEY=s")
    doc = small_run("quota", world["endpoint"], "unused", cluster={"resources": {"limits": {"nvidia.com/gpu": "1"}}})
    doc["metadata"]["namespace"] = namespace
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    runs = f"/apis/asyncmtl.dev/v1alpha1/namespaces/{namespace}/asyncmtlruns/quota"
    cond = wait_for("Ready=False QuotaExceeded", lambda: next(
        (c for c in (cp.get(runs).get("status") or {}).get("conditions", [])
         if c["type"] == "Ready" and c["reason"] == "QuotaExceeded"), None), 90,
        on_timeout=lambda: "\n" + world["operator"].tail(30))
    assert "exceeded quota: no-gpus" in cond["message"]


def test_a_two_node_run_gets_an_indexed_job_whose_pods_have_stable_dns_names(control_plane, world, namespace):
    cp = control_plane
    for i in range(2):
        cp.add_fake_node(f"gpu-{namespace}-{i}", gpus=1)
    try:
        cp.kubectl("create", "secret", "generic", "s3", "-n", namespace, "--from-literal=AWS_ACCESS_KEY_ID=k",
                   "--from-literal=AWS_SECRET_ACCESS_KEY=s")
        doc = small_run("multi", world["endpoint"], "unused",
                        cluster={"nodes": 2, "gpusPerNode": 1, "resources": {"requests": {"cpu": "1"}},
                                 "image": "registry.invalid/not-here:0"})
        doc["metadata"]["namespace"] = namespace
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
        pods = wait_for("both trainer pods, scheduled", lambda: (lambda items: len(items) == 2 and all(
            p["spec"].get("nodeName") for p in items) and items)(cp.get(
                f"/api/v1/namespaces/{namespace}/pods?labelSelector=asyncmtl.dev%2Frole%3Dtrain")["items"]), 90,
            on_timeout=lambda: "\n" + world["operator"].tail(30))
        svc = cp.get(f"/api/v1/namespaces/{namespace}/services/multi-ranks")
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
        by_index = {p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]: p for p in pods}
        assert sorted(by_index) == ["0", "1"]
        for index, pod in by_index.items():
            # the Job controller names each pod's host after its index; the subdomain is the headless Service
            assert pod["spec"]["hostname"] == f"multi-train-{index}" and pod["spec"]["subdomain"] == "multi-ranks"
            args = pod["spec"]["containers"][0]["args"]
            assert f"--rdzv-endpoint=multi-train-0.multi-ranks.{namespace}.svc:29400" in args
            assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["spec"]["containers"][0]["volumeMounts"]
        assert len({p["spec"]["nodeName"] for p in pods}) == 2  # one GPU each: one pod per node
    finally:
        for i in range(2):
            cp.remove_fake_node(f"gpu-{namespace}-{i}")


def test_a_run_deleted_and_applied_again_on_a_real_cluster_completes_as_a_new_run(
        control_plane, world, trainer_image, tiny_model, node_agent):
    """The garbage collector deletes the old run's children in the background while the new run creates its own:
    the operator must neither adopt them (409) nor resume the old run's checkpoints."""
    cp = control_plane
    agent = node_agent({chart_trainer_image(): trainer_image})
    doc = small_run("again", world["endpoint"], tiny_model)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    wait_for("the first trainer running", lambda: any(
        (p.get("status") or {}).get("phase") == "Running" for p in cp.get(
            f"/api/v1/namespaces/{NS}/pods?labelSelector=asyncmtl.dev%2Frun%3Dagain")["items"]), 120)
    first = cp.get(f"{RUNS}/again")["metadata"]["uid"]
    cp.kubectl("delete", "asyncmtlrun", "again", "-n", NS, "--wait=true", "--timeout=60s")
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    done = wait_complete(cp, "again")
    st = status_of(cp, "again")
    assert done.returncode == 0, done.stderr + f"\n{json.dumps(st)[:2000]}\n{world['operator'].tail(40)}\n" + \
        _trainer_log(agent, cp, "again")
    second = cp.get(f"{RUNS}/again")["metadata"]["uid"]
    import boto3

    s3 = boto3.client("s3", endpoint_url=world["endpoint"], aws_access_key_id="k", aws_secret_access_key="s",
                      region_name="us-east-1")
    owner = json.loads(s3.get_object(Bucket="runs", Key=f"exp/{NS}/again/run.json")["Body"].read())
    assert first != second and owner["uid"] == second
    job = cp.get(f"/apis/batch/v1/namespaces/{NS}/jobs/again-train")
    assert job["metadata"]["ownerReferences"][0]["uid"] == second


def _decisions(status: dict) -> dict:
    """What the method decided for each task: its final phase, the step it converged at and the checkpoint its soft
    labels came from (a task still training has none: its best so far is only what the last poll saw)."""
    return {t: (ts["phase"], ts.get("convergedAtStep"), ts.get("bestStep") if ts.get("convergedAtStep") else None)
            for t, ts in status["tasks"].items()}


def test_an_operator_restarted_mid_run_finishes_the_run_with_the_same_decisions(control_plane, world, trainer_image,
                                                                               tiny_model, node_agent):
    """The operator is stopped once the first decision is out, and started again: the run completes, and decides
    what the same spec decided with the operator running throughout (the trainer holds at a decision until the
    next control generation, so timing cannot change decisions; DEVELOPERS.md, Determinism)."""
    if "e2e" not in world["finished"]:
        pytest.skip("compares with test_a_run_applied_with_kubectl_completes_and_kubectl_wait_returns (run it too)")
    cp, operator = control_plane, world["operator"]
    node_agent({chart_trainer_image(): trainer_image})
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(small_run("restart", world["endpoint"], tiny_model)))
    wait_for("the first decision", lambda: any(ts["phase"] != "Training" for ts in status_of(cp, "restart").get(
        "tasks", {}).values()), 300, on_timeout=lambda: "\n" + operator.tail(30))
    operator.stop()
    time.sleep(5)  # the trainer goes on (or holds) with no operator
    operator.start()
    done = wait_complete(cp, "restart")
    st = status_of(cp, "restart")
    assert done.returncode == 0, done.stderr + f"\n{json.dumps(st)[:2000]}\n{operator.tail(40)}"
    assert _decisions(st) == _decisions(world["finished"]["e2e"])
    sent = [(s["kind"], s.get("task")) for s in st["operatorState"]["control"]["signals"]]
    assert len(sent) == len(set(sent)), sent  # the restart sent no signal twice


def test_a_pod_template_asking_for_the_host_is_refused_where_no_pod_security_is_enforced(control_plane, world, namespace):
    """The namespace enforces no Pod Security level, so only the operator stands between a run's author and a
    privileged pod made with the operator's rights (the confused deputy)."""
    cp = control_plane
    labels = cp.get(f"/api/v1/namespaces/{namespace}")["metadata"].get("labels") or {}
    assert not any(k.startswith("pod-security.kubernetes.io/enforce") for k in labels)
    cp.kubectl("create", "secret", "generic", "s3", "-n", namespace, "--from-literal=AWS_ACCESS_KEY_ID=k",
               "--from-literal=AWS_SECRET_ACCESS_KEY=s")
    doc = small_run("hostile", world["endpoint"], "unused", cluster={"podTemplate": {"spec": {
        "hostPID": True, "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}})
    doc["metadata"]["namespace"] = namespace
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    r = cp.kubectl("wait", "--for=condition=Failed", "asyncmtlrun/hostile", "-n", namespace, "--timeout=60s", check=False)
    assert r.returncode == 0, r.stderr + world["operator"].tail(20)
    st = cp.get(f"/apis/asyncmtl.dev/v1alpha1/namespaces/{namespace}/asyncmtlruns/hostile")["status"]
    assert "spec.hostPID" in st["message"] and "spec.volumes[0].hostPath" in st["message"]
    assert not cp.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    assert not cp.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/hostile-train", missing_ok=True)


def test_a_deleted_training_job_is_made_again_and_the_run_goes_on(control_plane, world, namespace):
    """Level-triggered: the garbage collector removes the deleted Job's pods, the operator creates the Job again
    (its trainer would resume from the latest checkpoint); before, the run failed ("the training Job is gone")."""
    cp = control_plane
    cp.kubectl("create", "secret", "generic", "s3", "-n", namespace, "--from-literal=AWS_ACCESS_KEY_ID=k",
               "--from-literal=AWS_SECRET_ACCESS_KEY=s")
    doc = small_run("lost", world["endpoint"], "unused", cluster={"image": "registry.invalid/not-here:0",
                                                                 "resources": {"requests": {"cpu": "100m"}}})
    doc["metadata"]["namespace"] = namespace
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs/lost-train"
    first = wait_for("the training Job", lambda: cp.get(jobs, missing_ok=True), 60)["metadata"]["uid"]
    cp.kubectl("delete", "job", "lost-train", "-n", namespace, "--cascade=background")
    again = wait_for("the training Job made again", lambda: (lambda j: j and j["metadata"]["uid"] != first and j)(
        cp.get(jobs, missing_ok=True)), 60, on_timeout=lambda: "\n" + world["operator"].tail(30))
    run = f"/apis/asyncmtl.dev/v1alpha1/namespaces/{namespace}/asyncmtlruns/lost"
    assert again["metadata"]["ownerReferences"][0]["uid"] == cp.get(run)["metadata"]["uid"]
    assert "TrainingJobRecreated" in [e["reason"] for e in events_of(cp, namespace, "lost")]
    assert (cp.get(run).get("status") or {}).get("phase") != "Failed"
