"""BAM on a cluster: the operator reads the teacher run's best checkpoint steps from its final
evaluation in S3, runs inference from the teacher's checkpoints, and signals each task's soft labels."""
from __future__ import annotations

import json

import pytest
from kopf.testing import KopfRunner

from asyncmtl.artifacts import CHECKPOINT_STATE, FINAL, checkpoint_file
from asyncmtl.storage_factory import open_run_storage
from tests.operator.conftest import wait_until
from tests.operator.helpers import (NS, apply_run, complete_job, get_obj, get_run, make_run, operator_args, signals,
                                    write_soft_labels)

pytestmark = pytest.mark.slow  # processes, servers or training: `make test-fast` skips it


def test_bam_distills_from_the_teacher_runs_best_checkpoints(cluster, kube, s3, monkeypatch):
    endpoint, _ = s3
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")  # BAM's teacher inference needs no metrics
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    teacher = open_run_storage("s3://runs/exp", namespace=NS, run="uniform", endpoint_url=endpoint)
    teacher.put_bytes(FINAL, json.dumps({"step": 900, "tasks": {"a": {"bestCheckpoint": {"step": 300}},
                                                       "b": {"bestCheckpoint": {"step": 500}}}}).encode())
    for step in (300, 500):  # the teacher kept its best checkpoints (storage.keepCheckpoints: best)
        teacher.put_bytes(checkpoint_file(step, CHECKPOINT_STATE), b"{}")
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, make_run("bam", endpoint=endpoint, method="bam", teacherRun="uniform"))
        jobs = {t: wait_until(lambda t=t, s=s: get_obj(kube, "Job", f"bam-infer-{t}-{s}"), what=f"inference Job {t}")
                for t, s in (("a", 300), ("b", 500))}
        assert signals(kube, "bam", "softLabelsReady") == []
        for task, step in (("a", 300), ("b", 500)):
            write_soft_labels(endpoint, "uniform", task, step, 2)  # the pods write into the teacher's folder
            complete_job(kube, f"bam-infer-{task}-{step}", succeeded=2)
        ready = wait_until(lambda: len(signals(kube, "bam", "softLabelsReady")) == 2
                           and signals(kube, "bam", "softLabelsReady"), what="two softLabelsReady signals")
        status = get_run(kube, "bam")["status"]
    assert runner.exit_code == 0, runner.output
    for task, step in (("a", 300), ("b", 500)):
        args = jobs[task]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--run") + 1] == "uniform" and args[args.index("--step") + 1] == str(step)
    assert {(s["task"], s["uri"]) for s in ready} == {
        ("a", "s3://runs/exp/default/uniform/softlabels/a/step-00000300/manifest.json"),
        ("b", "s3://runs/exp/default/uniform/softlabels/b/step-00000500/manifest.json")}
    assert signals(kube, "bam", "converged") == []  # BAM makes no convergence decisions
    assert {t: status["tasks"][t]["bestStep"] for t in ("a", "b")} == {"a": 300, "b": 500}
