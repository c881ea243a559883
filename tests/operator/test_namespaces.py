"""A run applied in a namespace other than the operator's, with the chart's default values: its training
pod starts (the emulated Job controller creates it through the ServiceAccount admission plugin)."""
from __future__ import annotations

import json

import kubernetes
import pytest
from kopf.testing import KopfRunner

from asyncmtl.crd import GROUP, PLURAL, VERSION
from tests.operator.conftest import wait_until
from tests.operator.emulator import EmulatedCluster
from tests.operator.helpers import make_run

pytestmark = pytest.mark.slow  # processes, servers or training: `make test-fast` skips it

TEAM = "team-x"  # not the release namespace (asyncmtl-system), not the tests' default


@pytest.fixture()
def jobs_cluster(tmp_path, monkeypatch):
    with EmulatedCluster(jobs=True) as c:
        monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig(tmp_path / "kubeconfig")))
        kubernetes.config.load_kube_config(config_file=str(tmp_path / "kubeconfig"))
        yield kubernetes.client.ApiClient()


def _chart_operator(values: dict) -> tuple[list[str], dict[str, str]]:
    """The operator container's kopf arguments and environment as the chart renders them."""
    chart = pytest.importorskip("tests.unit.test_chart")
    dep = next(o for o in chart.render(values) if o["kind"] == "Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    args = [a for a in container["args"] if not a.startswith("--liveness")]
    return args, {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _start(kube, s3, monkeypatch, trainer_defaults: dict | None = None):
    args, env = _chart_operator({})
    assert "--all-namespaces" in args  # the default install is cluster-wide
    if trainer_defaults is not None:
        env["ASYNCMTL_TRAINER_DEFAULTS"] = json.dumps(trainer_defaults)
    monkeypatch.setenv("ASYNCMTL_TRAINER_DEFAULTS", env["ASYNCMTL_TRAINER_DEFAULTS"])
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    doc = make_run("far", endpoint=s3[0])
    doc["metadata"]["namespace"] = TEAM
    return args, doc


def _pods(kube) -> list:
    return kubernetes.client.CoreV1Api(kube).list_namespaced_pod(TEAM, label_selector="job-name=far-train").items


def test_with_the_charts_defaults_a_run_in_another_namespace_starts_its_training_pod(jobs_cluster, s3, monkeypatch):
    kube = jobs_cluster
    args, doc = _start(kube, s3, monkeypatch)
    with KopfRunner(args, timeout=60) as runner:
        kubernetes.client.CustomObjectsApi(kube).create_namespaced_custom_object(GROUP, VERSION, TEAM, PLURAL, doc)
        (pod,) = wait_until(lambda: _pods(kube), what="training pod in team-x")
    assert runner.exit_code == 0, runner.output
    assert pod.spec.containers[0].image == "asyncmtl/trainer:0.1.0"  # the chart's trainer image
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"


def test_a_pod_naming_an_account_its_namespace_lacks_is_shown_as_blocked(jobs_cluster, s3, monkeypatch):
    """What the chart rendered before the fix (a cluster-wide install naming a ServiceAccount made only in
    the release namespace): no pod, and the run says why."""
    kube = jobs_cluster
    args, doc = _start(kube, s3, monkeypatch, trainer_defaults={
        "image": "asyncmtl/trainer:0.1.0", "serviceAccountName": "asyncmtl-workload"})
    custom = kubernetes.client.CustomObjectsApi(kube)
    with KopfRunner(args, timeout=60) as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, TEAM, PLURAL, doc)
        ready = wait_until(lambda: next((c for c in (custom.get_namespaced_custom_object(
            GROUP, VERSION, TEAM, PLURAL, "far").get("status") or {}).get("conditions", [])
            if c["type"] == "Ready" and c.get("reason") == "FailedCreate"), None), what="Ready=False FailedCreate")
    assert runner.exit_code == 0, runner.output
    assert _pods(kube) == []
    assert 'serviceaccount "asyncmtl-workload" not found' in ready["message"]
