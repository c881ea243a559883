"""End to end on the real control plane: the operator as shipped (tests/cluster/operator_process.py), the
trainer and inference pods run by the node agent (tests/cluster/node_agent.py) from the trainer image's
environment, a tiny random BERT, moto's S3 and a real Prometheus scraping the trainer. Each scenario is
one a user meets on a cluster: a run goes to Complete and `kubectl wait` returns; inference that cannot be
scheduled while the paused trainer holds the only GPU does not deadlock the run."""
from __future__ import annotations

import json

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
                yield {"endpoint": endpoint, "prometheus": prom, "operator": operator}
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


def status_of(cp: ControlPlane, name: str) -> dict:
    return cp.get(f"{RUNS}/{name}").get("status") or {}


def test_a_run_applied_with_kubectl_completes_and_kubectl_wait_returns(control_plane, world, trainer_image, tiny_model,
                                                                       node_agent):
    cp = control_plane
    agent = node_agent({chart_trainer_image(): trainer_image})
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(small_run("e2e", world["endpoint"], tiny_model)))
    try:
        done = cp.kubectl("wait", "--for=condition=Complete", f"asyncmtlrun/e2e", "-n", NS, "--timeout=420s",
                          check=False, timeout=450)
    finally:
        st = status_of(cp, "e2e")
    diagnosis = (f"\nstatus: {json.dumps(st)[:3000]}\noperator:\n{world['operator'].tail(40)}\n"
                 f"trainer:\n{_trainer_log(agent, cp, 'e2e')}")
    assert done.returncode == 0, done.stderr + diagnosis
    assert st["phase"] == "Succeeded", diagnosis
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

