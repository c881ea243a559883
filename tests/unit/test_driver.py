"""The run policy (asyncmtl.driver.RunDriver) behind a fake port, as the decision core is tested:
the trainer driven like a runtime would see it, inference attempts the test decides, storage real
(a folder). Each runtime's own port is tested in its own suite (tests/operator/test_run_policy.py,
tests/unit/test_local_policy.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from asyncmtl.artifacts import CHECKPOINT_STATE, FINAL, REPORT_JSON, checkpoint_file
from asyncmtl.control import ControlDocument
from asyncmtl.core.actions import LaunchInference
from asyncmtl.core.observations import Observations
from asyncmtl.driver import InferenceAttempt, RunDriver
from asyncmtl.lifecycle import TaskPhase
from asyncmtl.softlabels import manifest_key
from asyncmtl.spec import SpecError
from asyncmtl.storage import FileRunStorage, StorageError
from tests.conftest import write_shards
from tests.unit.test_reconcile import Sim, make_spec

TRAIN_SIZE = 12


@dataclass
class FakePort:
    """A runtime as the driver sees it: the trainer is `sim`, inference attempts are what the test says."""

    sim: Sim
    attempts: dict[tuple[str, int, int], InferenceAttempt] = field(default_factory=dict)
    controls: list[ControlDocument] = field(default_factory=list)
    launched: list[LaunchInference] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def observe_trainer(self, obs: Observations) -> None:
        seen = self.sim.obs()
        obs.metrics = seen.metrics
        if obs.metrics is not None:
            obs.metrics.train_sizes = {t: TRAIN_SIZE for t in ("a", "b", "c")}

    def inference_attempt(self, task: str, step: int, attempt: int) -> InferenceAttempt | None:
        return self.attempts.get((task, step, attempt))

    def write_control(self, document: ControlDocument) -> None:
        self.controls.append(document)
        self.sim.applied = document.generation  # the trainer acknowledges at once

    def launch_inference(self, action: LaunchInference) -> None:
        self.launched.append(action)

    def post_event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


def converge_a(tmp_path, **spec):
    """A driver and port where task a converged at step 300 from its best at 100 (patience 2): its first
    inference attempt (step 100, 2 shards) has been launched."""
    storage = FileRunStorage(tmp_path / "run")
    driver = RunDriver(spec=make_spec(distillation={"shards": 2, **spec.pop("distillation", {})}, **spec), name="r",
                       storage=storage, storage_of=lambda name: FileRunStorage(tmp_path / name))
    sim = Sim(driver.spec)
    port = FakePort(sim)
    status = driver.start(port, 0.0)
    for step, a in ((100, 70), (200, 60), (300, 60)):
        sim.validate(step, {"a": a, "b": step / 10, "c": step / 10})
        status = driver.step(port, status, float(step)).status
    assert status.tasks["a"].phase == TaskPhase.AWAITING_SOFT_LABELS and [(x.task, x.checkpoint_step) for x in port.launched] == [("a", 100)]
    sim.rewind(100)
    return driver, port, status


def test_soft_labels_must_add_up_to_the_training_split_the_trainer_reported(tmp_path):
    driver, port, status = converge_a(tmp_path)
    write_shards(driver.storage, "a", 100, [5, 5], total=10)  # made for a split of 10, the trainer has 12
    port.attempts[("a", 100, 1)] = InferenceAttempt(state="Succeeded", shards=2)
    result = driver.step(port, status, 400.0)
    assert result.observations.inference["a"].state == "Failed"
    assert "was made for 10 examples, not 12" in result.observations.inference["a"].message
    assert not driver.storage.exists(manifest_key("a", 100))
    assert [(x.task, x.attempt) for x in port.launched] == [("a", 1), ("a", 2)]  # retried
    assert result.status.tasks["a"].phase == TaskPhase.AWAITING_SOFT_LABELS


def test_soft_labels_that_add_up_are_verified_and_signalled(tmp_path):
    driver, port, status = converge_a(tmp_path)
    write_shards(driver.storage, "a", 100, [6, 6], total=TRAIN_SIZE)
    port.attempts[("a", 100, 1)] = InferenceAttempt(state="Succeeded", shards=2)
    result = driver.step(port, status, 400.0)
    assert result.status.tasks["a"].phase == TaskPhase.KD
    assert result.status.tasks["a"].soft_labels_uri == driver.storage.uri(manifest_key("a", 100))
    assert json.loads(driver.storage.get_bytes(manifest_key("a", 100)))["numExamples"] == TRAIN_SIZE


def test_an_attempt_the_runtime_no_longer_has_is_launched_again_or_found_done(tmp_path):
    """A resumed local run, or a deleted inference Job: never a run waiting on something nobody runs."""
    driver, port, status = converge_a(tmp_path)
    result = driver.step(port, status, 400.0)  # no such attempt, no manifest
    assert [(x.task, x.checkpoint_step, x.attempt) for x in port.launched] == [("a", 100, 1), ("a", 100, 1)]
    assert ("Warning", "InferenceRelaunched") in [e[:2] for e in port.events]
    assert result.status.tasks["a"].phase == TaskPhase.AWAITING_SOFT_LABELS
    write_shards(driver.storage, "a", 100, [6, 6], total=TRAIN_SIZE)
    port.attempts[("a", 100, 1)] = InferenceAttempt(state="Succeeded", shards=2)
    done = driver.step(port, result.status, 500.0)  # verified, manifest written
    assert done.status.tasks["a"].phase == TaskPhase.KD
    # a fresh driver and port (a restarted runtime) find the manifest and launch nothing
    driver2, port2, status2 = converge_a(tmp_path / "again")
    write_shards(driver2.storage, "a", 100, [6, 6], total=TRAIN_SIZE)
    port2.attempts[("a", 100, 1)] = InferenceAttempt(state="Succeeded", shards=2)
    status2 = driver2.step(port2, status2, 400.0).status
    assert status2.tasks["a"].phase == TaskPhase.KD
    fresh = FakePort(port2.sim)
    assert driver2.step(fresh, status2, 500.0).status.tasks["a"].phase == TaskPhase.KD and fresh.launched == []


def test_a_failed_attempt_reaches_the_core_with_its_message(tmp_path):
    driver, port, status = converge_a(tmp_path, distillation={"maxAttempts": 1})
    port.attempts[("a", 100, 1)] = InferenceAttempt(state="Failed", shards=2, message="BackoffLimitExceeded: pods failed")
    result = driver.step(port, status, 400.0)
    assert result.status.tasks["a"].phase == TaskPhase.FROZEN
    assert "BackoffLimitExceeded" in result.status.condition("Degraded").message


def _bam(tmp_path, teacher_files: dict[str, bytes]):
    teacher = FileRunStorage(tmp_path / "uniform")
    for key, data in teacher_files.items():
        teacher.put_bytes(key, data)
    spec = make_spec(names=("a", "b"), method="bam", teacherRun="uniform")
    return RunDriver(spec=spec, name="bam", storage=FileRunStorage(tmp_path / "bam"),
                     storage_of=lambda name: FileRunStorage(tmp_path / name), where="bam.yaml")


FINAL_DOC = json.dumps({"step": 900, "tasks": {"a": {"bestCheckpoint": {"step": 300}},
                                                "b": {"bestCheckpoint": {"step": 500}}}}).encode()


@pytest.mark.parametrize("files, message", [
    ({}, "has no finished run (reports/final.json)"),
    ({FINAL: FINAL_DOC, checkpoint_file(300, CHECKPOINT_STATE): b"{}"}, "no best checkpoint of task b in"),
])
def test_a_bam_teacher_is_checked_before_the_run_starts(tmp_path, files, message):
    driver = _bam(tmp_path, files)
    with pytest.raises(SpecError) as info:
        driver.start(FakePort(Sim(driver.spec)), 0.0)
    (issue,) = info.value.issues
    assert issue.path == "spec.teacherRun" and message in issue.message and issue.file == "bam.yaml"


def test_a_bam_run_distils_from_each_teachers_best_checkpoint_in_the_teachers_folder(tmp_path):
    driver = _bam(tmp_path, {FINAL: FINAL_DOC, checkpoint_file(300, CHECKPOINT_STATE): b"{}",
                             checkpoint_file(500, CHECKPOINT_STATE): b"{}"})
    port = FakePort(Sim(driver.spec))
    status = driver.start(port, 0.0)
    status = driver.step(port, status, 1.0).status
    assert {(x.task, x.checkpoint_step, x.source_run) for x in port.launched} == {("a", 300, "uniform"), ("b", 500, "uniform")}
    write_shards(FileRunStorage(tmp_path / "uniform"), "a", 300, [12], total=TRAIN_SIZE)
    port.attempts[("a", 300, 1)] = InferenceAttempt(state="Succeeded", shards=1)
    status = driver.step(port, status, 2.0).status
    assert status.tasks["a"].soft_labels_uri == FileRunStorage(tmp_path / "uniform").uri(manifest_key("a", 300))


def test_the_end_of_a_run_writes_its_report_and_survives_a_retention_failure(tmp_path, monkeypatch):
    driver, port, status = converge_a(tmp_path)
    status.phase = "Succeeded"
    done = driver.finish(port, status)
    assert json.loads(driver.storage.get_bytes(REPORT_JSON))["run"] == "r" and set(done.report) >= {"report.json"}
    assert done.retained is not None and "RetentionFailed" not in [e[1] for e in port.events]

    def refuse(*_a, **_k):
        raise StorageError("AccessDenied: DeleteObject")

    monkeypatch.setattr("asyncmtl.driver.retain_after_run", refuse)
    done = driver.finish(port, status)
    assert done.retained is None
    assert port.events[-1][:2] == ("Warning", "RetentionFailed") and "AccessDenied" in port.events[-1][2]


def test_a_report_that_cannot_be_written_is_the_runtimes_error(tmp_path, monkeypatch):
    driver, port, status = converge_a(tmp_path)
    status.phase = "Failed"

    def full(*_a, **_k):
        raise StorageError("No space left on device")

    monkeypatch.setattr("asyncmtl.driver.write_report", full)
    with pytest.raises(StorageError):
        driver.finish(port, status)


def test_easiest_first_reads_the_reference_order_once_and_only_until_the_order_is_fixed(tmp_path):
    from asyncmtl.artifacts import HISTORY

    ref = FileRunStorage(tmp_path / "joint")
    ref.put_bytes(HISTORY, b'{"event": "converged", "task": "c", "step": 300}\n')
    reads = []

    def storage_of(name):
        reads.append(name)
        return FileRunStorage(tmp_path / name)

    spec = make_spec(setting="sequential", order="easiest-first", orderFromRun="joint")
    driver = RunDriver(spec=spec, name="seq", storage=FileRunStorage(tmp_path / "seq"), storage_of=storage_of)
    sim = Sim(spec)
    port = FakePort(sim)
    status = driver.start(port, 0.0)
    status = driver.step(port, status, 1.0).status
    assert status.task_order == ["c", "a", "b"] and reads == ["joint"]
    assert driver.observations(status, 2.0).reference_order is None  # fixed: not passed again
    missing = RunDriver(spec=make_spec(setting="sequential", order="easiest-first", orderFromRun="never"), name="s",
                        storage=FileRunStorage(tmp_path / "s"), storage_of=storage_of)
    with pytest.raises(SpecError, match="spec.orderFromRun: no finished run 'never'"):
        missing.start(port, 0.0)
