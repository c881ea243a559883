"""How the operator holds per-run resources and settings: storage built once per run (one Secret read,
one S3 client), a run polled every timerInterval read at startup, and the trainer's series turned into
observations by the one builder the local runtime shares."""
from __future__ import annotations

import math
import time

import pytest

from asyncmtl.core.status import RunStatus
from asyncmtl.spec import parse_run
from tests.conftest import builtin_task, run_doc


class CountingKube:
    """The one Kube call `Controller.storage` makes, counted."""

    def __init__(self) -> None:
        self.secret_reads = 0

    def read_secret(self, name: str, namespace: str) -> dict[str, str]:
        self.secret_reads += 1
        return {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}


def _controller(kube, **config):
    from asyncmtl_operator.controller import Controller, OperatorConfig
    from asyncmtl_operator.operator_metrics import OperatorMetrics

    return Controller(config=OperatorConfig(metrics_port=0, **config), kube=kube, metrics=OperatorMetrics(),
                      post_event=lambda *a: None)


def _run(name: str = "r"):
    doc = run_doc([builtin_task("sentiment"), builtin_task("sarcasm")], name=name,
                  storage={"uri": "s3://runs/exp", "endpointUrl": "http://127.0.0.1:9", "credentialsSecret": "s3"})
    doc["metadata"]["namespace"] = "team-a"
    return parse_run(doc)


def test_a_runs_storage_is_built_once_and_forgotten_with_the_run():
    pytest.importorskip("boto3")
    kube = CountingKube()
    c = _controller(kube)
    run = _run()
    first = c.storage(run, "team-a")
    assert c.storage(run, "team-a") is first and kube.secret_reads == 1
    teacher = c.storage(run, "team-a", name="uniform")  # another run's folder: its own storage
    assert teacher is not first and kube.secret_reads == 2
    c.forget("team-a", "r")
    second = c.storage(run, "team-a")
    assert second is not first and kube.secret_reads == 3
    # a storage failure: the next attempt reads the Secret again (before, credentials fixed after a failure
    # were never read again: the client was cached for the run's life)
    c.storage_failed("team-a", "r")
    assert c.storage(run, "team-a") is not second and kube.secret_reads == 4


def test_a_run_is_polled_every_timer_interval_however_often_the_timer_fires():
    c = _controller(CountingKube(), timer_interval=30.0)
    body = {"metadata": {"name": "r", "namespace": "team-a", "generation": 1},
            "status": {"operatorState": RunStatus(phase="Running").model_dump(mode="json", by_alias=True)}}
    from asyncmtl_operator.controller import RunMemory

    c.memory[("team-a", "r")] = RunMemory(last_poll=time.time() - 5.0)
    assert c.tick(body, "team-a", lambda child: None, None) is None  # 5 s after the last poll: not yet


def test_the_trainer_series_become_one_observation():
    from asyncmtl import metric_names as M
    from asyncmtl.core.convergence import ValidationPoint
    from asyncmtl.trainer_series import Sample, trainer_observation

    obs = trainer_observation([
        Sample(f"{M.VALIDATIONS}_total", "a", 3.0), Sample(M.VALIDATION_LAST_STEP, "a", 300.0),
        Sample(M.VALIDATION_LAST_VALUE, "a", 61.5), Sample(M.VALIDATION_BEST_STEP, "a", 200.0),
        Sample(M.VALIDATION_BEST_VALUE, "a", 62.0), Sample(M.TRAIN_SIZE, "a", 1000.0),
        Sample(M.TASK_CHANCE, "a", math.nan), Sample(M.VALIDATION_LAST_EPOCHS, "a", 1.25),
        Sample(M.VALIDATION_SIGNIFICANT_STREAK, "a", 2.0),
        Sample(M.VALIDATION_LAST_STEP, "b", 300.0),  # b has no validations counter yet: not a task
        Sample(M.GLOBAL_STEP, None, 310.0), Sample(M.CONTROL_GENERATION, None, 2.0),
        Sample(M.CONTROL_APPLIED_STEP, None, math.nan), Sample(M.VALIDATION_COMPLETE_STEP, None, 300.0),
        Sample("asyncmtl_something_else", None, 1.0)],
        points={"a": [ValidationPoint(step=300, value=61.5)]})
    a = obs.tasks["a"]
    assert list(obs.tasks) == ["a"] and (a.validations, a.last_step, a.best_step, a.best_value) == (3, 300, 200, 62.0)
    assert a.chance is None and a.points == [ValidationPoint(step=300, value=61.5)] and a.last_epochs == 1.25
    assert a.last_streak == 2
    assert (obs.global_step, obs.applied_generation, obs.applied_at_step, obs.validation_complete_step) == (310, 2, None, 300)
    assert obs.train_sizes == {"a": 1000}


def test_the_storage_check_lists_the_runs_prefix_which_prefix_scoped_credentials_allow():
    """HeadBucket is bucket-wide, and credentials scoped to a prefix are refused it (403) though they work."""
    import boto3
    from botocore.stub import Stubber

    from asyncmtl.storage import StorageError
    from asyncmtl.storage_s3 import S3RunStorage

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
    storage = S3RunStorage("runs", "exp/team-a/r", client=client)
    with Stubber(client) as stub:
        stub.add_response("list_objects_v2", {"KeyCount": 0}, {"Bucket": "runs", "Prefix": "exp/team-a/r/", "MaxKeys": 1})
        storage.check()
        stub.assert_no_pending_responses()
        stub.add_client_error("list_objects_v2", service_error_code="NoSuchBucket", http_status_code=404)
        with pytest.raises(StorageError, match="s3://runs/exp/team-a/r: not reachable"):
            storage.check()
