"""The operator creates a run's children with owner references (emulated API server over HTTP)."""
from __future__ import annotations

import pytest
from kopf.testing import KopfRunner

from tests.operator.conftest import wait_until
from tests.operator.helpers import apply_run, exists, get_obj, make_run, operator_args

pytestmark = pytest.mark.slow  # processes, servers or training: `make test-fast` skips it


def test_apply_creates_children(cluster, kube, s3, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")  # nothing listens: MetricsAvailable=False
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    endpoint, _ = s3
    with KopfRunner(operator_args(), timeout=60) as runner:
        cr = apply_run(kube, make_run("smoke", endpoint=endpoint))
        cm = wait_until(lambda: get_obj(kube, "ConfigMap", "smoke-control"), what="ConfigMap")
        job = wait_until(lambda: get_obj(kube, "Job", "smoke-train"), what="training Job")
        svc = wait_until(lambda: get_obj(kube, "Service", "smoke-metrics"), what="Service")
    assert runner.exit_code == 0, runner.output
    for obj in (cm, job, svc):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == cr["metadata"]["uid"] and ref["kind"] == "AsyncMTLRun" and ref["controller"] is True


def test_a_local_spec_applies_unchanged_with_the_operators_default_storage(cluster, kube, s3, monkeypatch):
    import yaml

    from tests.conftest import REPO
    from tests.operator.helpers import NS, get_run

    endpoint, _ = s3
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("ASYNCMTL_DEFAULT_STORAGE_URI", "s3://runs/team")
    monkeypatch.setenv("ASYNCMTL_DEFAULT_STORAGE_ENDPOINT", endpoint)
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "quickstart.yaml").read_text())
    assert doc["spec"]["storage"]["uri"].startswith("file://")
    doc["metadata"]["namespace"] = NS
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, doc)
        cm = wait_until(lambda: get_obj(kube, "ConfigMap", "quickstart-control"), what="ConfigMap")
        job = wait_until(lambda: get_obj(kube, "Job", "quickstart-train"), what="Job")
    assert runner.exit_code == 0, runner.output
    effective = yaml.safe_load(cm["data"]["run.yaml"])["spec"]["storage"]
    assert effective["uri"] == "s3://runs/team" and effective["endpointUrl"] == endpoint
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ENDPOINT_URL"] == endpoint
    assert get_run(kube, "quickstart")["status"]["phase"] == "Running"


def test_file_storage_without_a_default_is_rejected_with_the_path(cluster, kube, s3, monkeypatch):
    from tests.operator.helpers import get_run

    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    monkeypatch.delenv("ASYNCMTL_DEFAULT_STORAGE_URI", raising=False)
    doc = make_run("local", endpoint=s3[0], storage={"uri": "file://./runs"})
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, doc)
        st = wait_until(lambda: get_run(kube, "local").get("status", {}).get("phase") == "Failed"
                        and get_run(kube, "local")["status"], what="Failed")
    assert runner.exit_code == 0, runner.output
    assert "spec.storage.uri: file:// storage is local to one pod" in st["message"]


def test_trainer_defaults_fill_only_what_the_run_leaves_unset(cluster, kube, s3, monkeypatch):
    import json

    endpoint, _ = s3
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("ASYNCMTL_TRAINER_DEFAULTS", json.dumps({
        "image": "registry.example/asyncmtl/trainer:1.2", "nodeSelector": {"gpu": "a100"},
        "labels": {"kueue.x-k8s.io/queue-name": "team-a"}, "priorityClassName": "batch"}))
    doc = make_run("dflt", endpoint=endpoint, cluster={"priorityClassName": "urgent"})
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, doc)
        job = wait_until(lambda: get_obj(kube, "Job", "dflt-train"), what="Job")
    assert runner.exit_code == 0, runner.output
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/asyncmtl/trainer:1.2"
    assert pod["nodeSelector"] == {"gpu": "a100"} and pod["priorityClassName"] == "urgent"  # the run's own wins
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_data_volumes_and_env_reach_every_pod(cluster, kube, s3, monkeypatch):
    endpoint, _ = s3
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    doc = make_run("vol", endpoint=endpoint, cluster={
        "volumes": [{"name": "tweeteval", "claimName": "tweeteval", "mountPath": "/data/tweeteval"}],
        "env": {"TWEETEVAL_DIR": "/data/tweeteval"}})
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, doc)
        job = wait_until(lambda: get_obj(kube, "Job", "vol-train"), what="Job")
    assert runner.exit_code == 0, runner.output
    pod = job["spec"]["template"]["spec"]
    assert {"name": "tweeteval", "persistentVolumeClaim": {"claimName": "tweeteval", "readOnly": True}} in pod["volumes"]
    c = pod["containers"][0]
    assert {"name": "tweeteval", "mountPath": "/data/tweeteval", "readOnly": True} in c["volumeMounts"]
    assert {"name": "TWEETEVAL_DIR", "value": "/data/tweeteval"} in c["env"]


def _sequential_easiest_first(name: str, endpoint: str, from_run: str) -> dict:
    return make_run(name, endpoint=endpoint, tasks=("a", "b", "c"), setting="sequential",
                    order="easiest-first", orderFromRun=from_run)


def test_easiest_first_takes_its_order_from_the_named_runs_history_in_storage(cluster, kube, s3, prometheus_binary,
                                                                              tmp_path, monkeypatch):
    """The order reaches the decision core as an observation, read once from the reference run's history
    in storage; the spec the pods read is not changed; a missing reference run is refused before any pod."""
    import json

    import yaml

    from asyncmtl.artifacts import HISTORY
    from asyncmtl.storage_factory import open_run_storage
    from tests.operator.conftest import FakeTrainer, start_prometheus
    from tests.operator.helpers import NS, get_run

    endpoint, _ = s3
    trainer = FakeTrainer("seq", ["a", "b", "c"])
    prom = start_prometheus(prometheus_binary, tmp_path / "prom", [trainer.target])
    monkeypatch.setenv("PROMETHEUS_URL", prom.url)
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    # a finished joint run in the same namespace and storage: c converged first, then a; b never did
    done = open_run_storage("s3://runs/exp", namespace=NS, run="joint-done", endpoint_url=endpoint)
    records = [{"task": "a", "step": 100, "value": 70.0}, {"event": "converged", "task": "c", "step": 300},
               {"event": "kd", "task": "c", "step": 300}, {"event": "converged", "task": "a", "step": 500},
               {"task": "b", "step": 600, "value": 61.0}]  # a was Frozen: no KD switch, but it converged
    done.put_bytes(HISTORY, "".join(json.dumps(r) + "\n" for r in records).encode())
    try:
        with KopfRunner(operator_args(), timeout=60) as runner:
            apply_run(kube, _sequential_easiest_first("seq", endpoint, "joint-done"))
            trainer.exporter.global_step.labels("seq").set(0)
            seq_status = wait_until(lambda: (get_run(kube, "seq").get("status") or {}).get("operatorState", {}).get(
                "taskOrder") and get_run(kube, "seq")["status"]["operatorState"], what="seq's task order")
            cm = get_obj(kube, "ConfigMap", "seq-control")
            apply_run(kube, _sequential_easiest_first("seq-orphan", endpoint, "never-ran"))
            st = wait_until(lambda: get_run(kube, "seq-orphan").get("status", {}).get("phase") == "Failed"
                            and get_run(kube, "seq-orphan")["status"], what="Failed")
    finally:
        prom.stop()
        trainer.close()
    assert runner.exit_code == 0, runner.output
    assert seq_status["taskOrder"] == ["c", "a", "b"]
    assert [s["task"] for s in json.loads(cm["data"]["control.json"])["signals"] if s["kind"] == "startTask"] == ["c"]
    assert "taskOrder" not in yaml.safe_load(cm["data"]["run.yaml"])["spec"]  # the spec is never changed
    assert st["message"].startswith("invalid spec: spec.orderFromRun: no finished run 'never-ran' in s3://runs/exp/default/never-ran")
    assert not exists(kube, "Job", "seq-orphan-train")
