"""The run policy on the local runtime (`asyncmtl run`): the same behaviours the operator has
(tests/operator/test_run_policy.py), through LocalRuntime's own port: its inference shard
processes, its storage, its end-of-run output. No trainer is started."""
from __future__ import annotations

import json
import sys

import pytest

from asyncmtl.artifacts import CHECKPOINT_STATE, FINAL, checkpoint_file
from asyncmtl.core.status import RunStatus
from asyncmtl.lifecycle import TaskPhase
from asyncmtl.local.runtime import InferenceRun, LocalOptions, LocalRuntime
from asyncmtl.spec import SpecError, parse_run
from asyncmtl.storage import FileRunStorage
from tests.conftest import builtin_task, run_doc, write_shards


def _runtime(tmp_path, monkeypatch, name="r", **spec) -> LocalRuntime:
    monkeypatch.chdir(tmp_path)
    tasks = [builtin_task("sentiment", patience=1) | {"name": n} for n in ("a", "b")]
    run = parse_run(run_doc(tasks, name=name, storage={"uri": "file://runs"}, **spec))
    (tmp_path / f"{name}.yaml").write_text("")
    return LocalRuntime(run, tmp_path / f"{name}.yaml", LocalOptions(live=False))


def test_a_retention_failure_leaves_a_succeeded_local_run_succeeded(tmp_path, monkeypatch, capsys):
    """Before: a storage error while pruning checkpoints escaped `asyncmtl run` after the run had Succeeded."""
    monkeypatch.setenv("ASYNCMTL_FAILPOINTS", "storage.write:checkpoints=EROFS")  # read when storage is opened
    rt = _runtime(tmp_path, monkeypatch)
    root = rt.storage.local_path("")
    final = {"step": 200, "tasks": {t: {"bestCheckpoint": {"step": 100}} for t in ("a", "b")}}
    (root / FINAL).parent.mkdir(parents=True)
    (root / FINAL).write_text(json.dumps(final))
    state = root / checkpoint_file(100, CHECKPOINT_STATE)
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"sha256": {"training_state.pt": "x"}}))  # retention rewrites it: refused
    rt.status = RunStatus(phase="Succeeded", message="every task converged")
    assert rt._finish("Succeeded") == 0
    out = capsys.readouterr().out
    assert "Run r: Succeeded" in out and "retention failed" in out
    assert any(e.startswith("RetentionFailed: ") and "Read-only file system" in e for e in rt.events)
    assert (root / "reports" / "report.json").is_file() and state.is_file()


def test_a_local_bam_run_refuses_a_teacher_without_its_best_checkpoint(tmp_path, monkeypatch):
    rt = _runtime(tmp_path, monkeypatch, name="bam", method="bam", teacherRun="uniform")
    teacher = FileRunStorage(tmp_path / "runs" / "local" / "uniform")
    teacher.put_bytes(FINAL, json.dumps({"step": 9, "tasks": {t: {"bestCheckpoint": {"step": 5}} for t in "ab"}}).encode())
    with pytest.raises(SpecError, match="spec.teacherRun: no best checkpoint of task a in file://"):
        rt.driver.prepare(RunStatus())
    teacher.put_bytes(checkpoint_file(5, CHECKPOINT_STATE), b"{}")
    rt.driver.prepare(RunStatus())
    assert rt.driver.observations(RunStatus(), 0.0).teacher_steps == {"a": 5, "b": 5}


def test_local_soft_labels_must_add_up_to_the_training_split(tmp_path, monkeypatch):
    """The shard processes all exited 0, but their rows are not the training split's: a failed attempt."""
    rt = _runtime(tmp_path, monkeypatch, distillation={"maxAttempts": 1})
    rt.workdir.mkdir(parents=True)
    rt.driver.train_sizes.update({"a": 12, "b": 12})  # what preflight counted in the training split
    write_shards(rt.storage, "a", 100, [5, 5], total=10)
    import subprocess

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    rt.inference["a"] = InferenceRun(task="a", step=100, attempt=1, shards=2, procs=[done])
    status = rt.driver.start(rt, 0.0)
    status.tasks["a"].phase, status.tasks["a"].best_step, status.tasks["a"].inference_attempts = TaskPhase.AWAITING_SOFT_LABELS, 100, 1
    result = rt.driver.step(rt, status, 1.0)
    assert result.observations.inference["a"].state == "Failed"
    assert "was made for 10 examples, not 12" in result.observations.inference["a"].message
    assert result.status.tasks["a"].phase == TaskPhase.FROZEN  # maxAttempts 1: distillation skipped
    assert json.loads(rt.control_path.read_text())["signals"][-1]["kind"] == "skipDistillation"
