"""The run's artifacts: typed records that read what the trainer has always written, and the readers
of a finished run that the local runtime and the operator share (convergence order, teacher steps)."""
from __future__ import annotations

import json

import pytest

from asyncmtl.artifacts import (FINAL, HISTORY, CheckpointScore, EventRecord, FinalReport, TaskFinal, ValidationRecord,
                                checkpoint_file, checkpoint_key, convergence_order, history_key, parse_record,
                                read_final, read_history, record_json, softlabel_key, teacher_steps, write_final)
from asyncmtl.core.status import RunStatus
from asyncmtl.lifecycle import TaskPhase
from asyncmtl.storage import FileRunStorage

# lines as the trainer wrote them before the records were typed (reports/history.jsonl)
OLD_LINES = [
    '{"time": 1.5, "step": 100, "task": "a", "metric": "accuracy", "value": 61.2, "metrics": {"accuracy": 61.2}, '
    '"mode": "supervised", "generation": 0, "bestStep": 100, "bestValue": 61.2, "rewinds": 0}',
    '{"event": "rewind", "time": 2.0, "step": 100, "rewinds": 1}',
    '{"event": "kd", "time": 2.5, "step": 100, "task": "a", "rewinds": 1}',
]


def test_history_lines_round_trip_with_the_keys_they_always_had():
    records = [parse_record(json.loads(line)) for line in OLD_LINES]
    assert isinstance(records[0], ValidationRecord) and records[0].best_step == 100
    assert records[0].mode == TaskPhase.TRAINING  # a former trainer's word (supervised) read as the lifecycle's
    assert [r.kind for r in records] == ["validation", "rewind", "kd"]
    written = [json.loads(record_json(r)) for r in records]
    assert written[0] == {**json.loads(OLD_LINES[0]), "mode": "Training"}
    assert written[1:] == [json.loads(line) for line in OLD_LINES[1:]]
    assert history_key(records[2]) == ("kd", "a", 100, 1)


def test_a_record_or_status_from_before_the_awaiting_soft_labels_rename_still_reads():
    """v1alpha1 renamed the phase Distilling to AwaitingSoftLabels: old histories and local status.json still read."""
    old = {**json.loads(OLD_LINES[0]), "mode": "Distilling"}
    assert parse_record(old).mode == TaskPhase.AWAITING_SOFT_LABELS
    assert parse_record({**old, "mode": "pending"}).mode == TaskPhase.AWAITING_SOFT_LABELS  # the trainer's own word
    status = RunStatus.model_validate({"phase": "Running", "tasks": {"a": {"phase": "Distilling"}}})
    assert status.tasks["a"].phase == TaskPhase.AWAITING_SOFT_LABELS
    assert status.model_dump(mode="json", by_alias=True)["tasks"]["a"]["phase"] == "AwaitingSoftLabels"
    with pytest.raises(ValueError):
        RunStatus.model_validate({"tasks": {"a": {"phase": "Brewing"}}})


def test_a_line_that_is_not_a_record_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        parse_record({"task": "a", "value": 1.0})  # no step


def test_final_report_and_teacher_steps(tmp_path):
    storage = FileRunStorage(tmp_path)
    assert read_final(storage) is None and teacher_steps(storage, ["a"]) == {}
    final = FinalReport(run="r", step=400, stopped="stop", control_generation=5, tasks={
        "a": TaskFinal(type="binary", metric="accuracy", mode="kd", final_validation={"accuracy": 60.0},
                       best_checkpoint=CheckpointScore(step=200, validation={"accuracy": 61.0}, test={"accuracy": 59.0}),
                       final_test={"accuracy": 58.0}),
        "b": TaskFinal(type="binary", metric="accuracy", mode="supervised", final_validation={"accuracy": 50.0})})
    write_final(storage, final)
    raw = json.loads((tmp_path / FINAL).read_text())
    assert raw["controlGeneration"] == 5 and raw["tasks"]["a"]["bestCheckpoint"]["step"] == 200
    assert raw["tasks"]["a"]["finalValidation"] == {"accuracy": 60.0} and "bestCheckpoint" not in raw["tasks"]["b"]
    assert read_final(storage) == final
    assert teacher_steps(storage, ["a", "b", "c"]) == {"a": 200}


def test_the_layout_has_one_home():
    assert checkpoint_key(200) == "checkpoints/step-00000200"
    assert checkpoint_file(200, "state.json") == "checkpoints/step-00000200/state.json"
    assert softlabel_key("irony", 1400) == "softlabels/irony/step-00001400"


@pytest.mark.parametrize("events, order", [
    # converged events give the order; a Frozen task (a: converged, never KD) and a continual run's tasks count
    ([("converged", "c"), ("kd", "c"), ("converged", "a")], ["c", "a", "b", "d"]),
    ([("converged", "b"), ("converged", "d")], ["b", "d", "a", "c"]),  # continual: no KD switch at all
    # a history written before converged events: its KD switches
    ([("kd", "b"), ("kd", "c"), ("kd", "b")], ["b", "c", "a", "d"]),
    ([], ["a", "b", "c", "d"]),
])
def test_convergence_order(events, order):
    history = [EventRecord(event=e, task=t, step=100 * (i + 1)) for i, (e, t) in enumerate(events)]
    history.insert(1, ValidationRecord(step=50, task="d", value=1.0))
    assert convergence_order(history, ["a", "b", "c", "d"]) == order


def test_the_local_runtime_orders_easiest_first_from_the_reference_runs_history(tmp_path, monkeypatch):
    """The local runtime and the operator read the order through one function; reversing it is caught here
    (the local order used to come from status.json, and no test noticed a reversed sort)."""
    from asyncmtl.local.runtime import LocalOptions, LocalRuntime
    from asyncmtl.spec import parse_run
    from tests.conftest import builtin_task, run_doc

    monkeypatch.chdir(tmp_path)
    ref = tmp_path / "runs" / "local" / "joint"
    (ref / "reports").mkdir(parents=True)
    (ref / "status.json").write_text("{}")
    lines = [{"event": "converged", "task": "c", "step": 300}, {"event": "converged", "task": "a", "step": 500}]
    (ref / HISTORY).write_text("".join(json.dumps(r) + "\n" for r in lines))
    tasks = [builtin_task("sentiment") | {"name": n} for n in ("a", "b", "c")]
    run = parse_run(run_doc(tasks, name="seq", setting="sequential", order="easiest-first", orderFromRun="joint",
                            storage={"uri": "file://runs"}))
    (tmp_path / "seq.yaml").write_text("")
    rt = LocalRuntime(run, tmp_path / "seq.yaml", LocalOptions())
    rt.driver.prepare(RunStatus())
    assert rt.driver.observations(RunStatus(), 0.0).reference_order == ["c", "a", "b"]
    assert run.spec.task_order is None  # the spec is never changed
    assert read_history(FileRunStorage(ref))[0] == EventRecord(event="converged", task="c", step=300)
