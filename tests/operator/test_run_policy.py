"""The run policy on a cluster: the behaviours the local runtime has (tests/unit/test_local_policy.py),
through the operator's port. Before the policy was one (asyncmtl.driver), the operator trusted soft
labels' own row counts, started BAM runs from teachers without checkpoints and wrote no report."""
from __future__ import annotations

import json
import time

import pytest
from kopf.testing import KopfRunner

from asyncmtl.artifacts import FINAL, REPORT_JSON
from asyncmtl.storage_factory import open_run_storage
from tests.operator.conftest import TIMER, FakeTrainer, wait_until
from tests.operator.helpers import (NS, TRAIN_SIZE, apply_run, complete_job, events, exists, get_run, make_run,
                                    operator_args, signals, write_soft_labels)

pytestmark = pytest.mark.slow  # processes and servers: `make test-fast` skips it


@pytest.fixture()
def setup(driven_operator):
    return driven_operator("p")


def plateau(trainer: FakeTrainer, prom, tasks: dict[str, dict[int, float]]) -> None:
    for step in sorted(next(iter(tasks.values()))):
        trainer.validate(step, {t: v[step] for t, v in tasks.items()})
        prom.wait_for(f'asyncmtl_validation_last_step{{task="a"}} == {step}')
        time.sleep(TIMER)


A_PLATEAU = {100: 50.0, 200: 60.0, 300: 59.0, 400: 58.0}  # best at 200, converged at 400 (patience 2)


def test_soft_labels_that_do_not_add_up_to_the_trainers_split_are_a_failed_attempt(setup):
    kube, endpoint, trainer, prom = setup
    for task in ("a", "b"):
        trainer.exporter.train_size.labels("p", task).set(TRAIN_SIZE + 2)  # the trainer's split: 12 rows
    with KopfRunner(operator_args(), timeout=90) as runner:
        apply_run(kube, make_run("p", endpoint=endpoint, distillation={"shards": 2, "maxAttempts": 2}))
        wait_until(lambda: get_run(kube, "p").get("status", {}).get("phase") == "Running", what="Running")
        plateau(trainer, prom, {"a": A_PLATEAU, "b": {s: s / 10 for s in A_PLATEAU}})
        wait_until(lambda: exists(kube, "Job", "p-infer-a-200"), what="inference Job")
        trainer.rewind(200, {"a": 60.0, "b": 20.0})
        trainer.ack(1, 200)
        write_soft_labels(endpoint, "p", "a", 200, 2)  # 10 rows, made for a split of 10
        complete_job(kube, "p-infer-a-200", succeeded=2)
        wait_until(lambda: exists(kube, "Job", "p-infer-a-200-r2"), what="the retry's Job")
    assert runner.exit_code == 0, runner.output
    assert signals(kube, "p", "softLabelsReady") == []
    retried = [e["message"] for e in events(kube, "p") if e["reason"] == "InferenceRetried"]
    assert retried and "made for 10 examples, not 12" in retried[0]


def test_a_bam_teacher_without_its_best_checkpoints_is_refused_before_any_child(cluster, kube, s3, monkeypatch):
    endpoint, _ = s3
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    # a teacher name of this test's own: moto's S3 keeps its objects for the whole process (test_bam's teacher has them)
    teacher = open_run_storage("s3://runs/exp", namespace=NS, run="uniform-no-ckpt", endpoint_url=endpoint)
    teacher.put_bytes(FINAL, json.dumps({"step": 900, "tasks": {"a": {"bestCheckpoint": {"step": 300}},
                                                                "b": {"bestCheckpoint": {"step": 500}}}}).encode())
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, make_run("bam", endpoint=endpoint, method="bam", teacherRun="uniform-no-ckpt"))
        st = wait_until(lambda: get_run(kube, "bam").get("status", {}).get("phase") == "Failed"
                        and get_run(kube, "bam")["status"], what="Failed", timeout=90)
    assert runner.exit_code == 0, runner.output
    assert st["message"].startswith(
        "invalid spec: spec.teacherRun: no best checkpoint of task a in s3://runs/exp/default/uniform-no-ckpt")
    assert not exists(kube, "Job", "bam-train") and not exists(kube, "Job", "bam-infer-a-300")


def test_a_finished_run_has_its_report_and_a_retention_failure_is_an_event(setup, monkeypatch):
    from asyncmtl.storage import StorageError

    kube, endpoint, trainer, prom = setup

    def refuse(*_a, **_k):  # the operator runs in this process (KopfRunner): S3 refusing the deletes
        raise StorageError("AccessDenied: DeleteObject")

    monkeypatch.setattr("asyncmtl.driver.retain_after_run", refuse)
    with KopfRunner(operator_args(), timeout=90) as runner:
        apply_run(kube, make_run("p", endpoint=endpoint, tasks=("a",)))
        wait_until(lambda: get_run(kube, "p").get("status", {}).get("phase") == "Running", what="Running")
        plateau(trainer, prom, {"a": A_PLATEAU})
        wait_until(lambda: signals(kube, "p", "stop"), what="stop signal")
        trainer.rewind(200, {"a": 60.0})
        trainer.ack(1, 200)
        complete_job(kube, "p-train", succeeded=1)
        wait_until(lambda: get_run(kube, "p")["status"].get("phase") == "Succeeded", what="Succeeded")
    assert runner.exit_code == 0, runner.output
    storage = open_run_storage("s3://runs/exp", namespace=NS, run="p", endpoint_url=endpoint)
    report = json.loads(storage.get_bytes(REPORT_JSON))
    assert report["run"] == "p" and report["phase"] == "Succeeded" and [t["task"] for t in report["tasks"]] == ["a"]
    assert storage.exists("reports/report.md") and storage.exists("reports/curves.png")
    failed = [e["message"] for e in events(kube, "p") if e["reason"] == "RetentionFailed"]
    assert failed and "AccessDenied" in failed[0]


def test_an_idle_run_is_not_patched_at_every_poll(setup):
    """Status is patched only when it changes (before: one PATCH per run per poll, about 20/s for 100 runs)."""
    kube, endpoint, trainer, prom = setup
    with KopfRunner(operator_args(), timeout=90) as runner:
        apply_run(kube, make_run("p", endpoint=endpoint))
        trainer.exporter.global_step.labels("p").set(0)
        wait_until(lambda: get_run(kube, "p").get("status", {}).get("conditions") and any(
            c["type"] == "MetricsAvailable" and c["status"] == "True" for c in get_run(kube, "p")["status"]["conditions"]),
            what="metrics available")
        time.sleep(2 * TIMER)
        before = get_run(kube, "p")["metadata"]["resourceVersion"]
        time.sleep(6 * TIMER)  # six polls with nothing new
        idle = get_run(kube, "p")["metadata"]["resourceVersion"]
        trainer.validate(100, {"a": 50.0, "b": 40.0})  # something new: patched again
        wait_until(lambda: get_run(kube, "p")["status"]["tasks"]["a"]["lastStep"] == 100, what="the new point")
    assert runner.exit_code == 0, runner.output
    assert idle == before
