"""The report: lineage across rewinds, KD switch, gaps, and the files it writes."""
from __future__ import annotations

import json

from asyncmtl.artifacts import parse_record
from asyncmtl.core.status import RunStatus, TaskStatus
from asyncmtl.report import build_report, split_lineage, write_report
from asyncmtl.storage import FileRunStorage


def _history(storage):
    recs = [
        {"task": "a", "step": 100, "value": 50.0, "mode": "supervised"},
        {"task": "a", "step": 200, "value": 60.0, "mode": "supervised"},
        {"task": "a", "step": 300, "value": 59.0, "mode": "supervised"},
        {"task": "a", "step": 400, "value": 58.0, "mode": "supervised"},
        {"event": "rewind", "step": 200},
        {"event": "kd", "task": "a", "step": 200},
        {"task": "a", "step": 300, "value": 59.5, "mode": "kd"},
        {"task": "a", "step": 400, "value": 59.8, "mode": "kd"},
    ]
    for r in recs:
        storage.append_line("reports/history.jsonl", json.dumps(r))


def test_lineage_follows_rewinds():
    history = [{"task": "a", "step": s, "value": v} for s, v in [(100, 1), (200, 2), (300, 3)]]
    history += [{"event": "rewind", "step": 100}, {"task": "a", "step": 200, "value": 4}]
    kept, gone = split_lineage([parse_record(r) for r in history], "a")
    assert [(r.step, r.value) for r in kept] == [(100, 1), (200, 4)]
    assert sorted((r.step, r.value) for r in gone) == [(200, 2), (300, 3)]


def test_report_gap_kd_step_and_files(tmp_path):
    st = FileRunStorage(tmp_path)
    _history(st)
    st.put_bytes("reports/final.json", json.dumps({"step": 400, "tasks": {"a": {
        "metric": "accuracy", "finalValidation": {"accuracy": 59.8}, "finalTest": {"accuracy": 58.0},
        "bestCheckpoint": {"step": 200, "test": {"accuracy": 58.5}}}}}).encode())
    status = RunStatus(phase="Succeeded", message="every task converged",
                       tasks={"a": TaskStatus(phase="KD", converged_at_step=400, best_step=200)})
    rep = build_report("r", status, st)
    (a,) = rep.tasks
    assert (a.best_validation, a.best_step, a.best_ever) == (60.0, 200, 60.0)
    assert a.kd_from_step == 200 and a.converged_at_step == 400
    assert round(a.final_minus_best, 2) == -0.2 and round(rep.mean_drop, 2) == 0.2
    assert (a.test_final, a.test_best_checkpoint, a.best_checkpoint_step) == (58.0, 58.5, 200)
    paths = write_report("r", status, st, tmp_path / "scratch")
    assert (tmp_path / "reports" / "curves.png").stat().st_size > 5000
    md = (tmp_path / "reports" / "report.md").read_text()
    assert "| a | accuracy | KD | 400 | 200 | 60.00 (200) | 59.80 | -0.20 | 60.00 |" in md
    assert json.loads((tmp_path / "reports" / "report.json").read_text())["meanDrop"] == rep.mean_drop
    assert set(paths) == {"report.json", "report.md", "curves.png"}


def test_convergence_order_follows_the_kd_switches():
    from asyncmtl.artifacts import convergence_order

    h = [{"event": "kd", "task": "b", "step": 100}, {"task": "a", "step": 200, "value": 1},
         {"event": "kd", "task": "c", "step": 300}, {"event": "kd", "task": "b", "step": 400}]
    assert convergence_order([parse_record(r) for r in h], ["a", "b", "c", "d"]) == ["b", "c", "a", "d"]


def test_a_converged_tasks_best_is_its_best_checkpoint_even_if_a_kd_validation_scores_higher(tmp_path):
    st = FileRunStorage(tmp_path)
    for r in [{"task": "a", "step": 100, "value": 50.0, "mode": "supervised"},
              {"task": "a", "step": 200, "value": 60.0, "mode": "supervised"},
              {"task": "a", "step": 300, "value": 59.0, "mode": "supervised"},
              {"event": "rewind", "step": 200}, {"event": "kd", "task": "a", "step": 200},
              {"task": "a", "step": 300, "value": 61.0, "mode": "kd"},  # a lucky KD validation
              {"task": "b", "step": 100, "value": 40.0, "mode": "supervised"},
              {"task": "b", "step": 200, "value": 45.0, "mode": "supervised"},
              {"task": "b", "step": 300, "value": 44.0, "mode": "supervised"}]:
        st.append_line("reports/history.jsonl", json.dumps(r))
    st.put_bytes("reports/final.json", json.dumps({"step": 300, "tasks": {
        "a": {"metric": "accuracy", "finalValidation": {"accuracy": 59.5}},
        "b": {"metric": "accuracy", "finalValidation": {"accuracy": 44.0}}}}).encode())
    status = RunStatus(phase="Succeeded", tasks={"a": TaskStatus(phase="KD", converged_at_step=300, best_step=200),
                                                 "b": TaskStatus(phase="Training")})
    a, b = build_report("r", status, st).tasks
    assert (a.best_validation, a.best_step, a.best_ever, a.final_minus_best) == (60.0, 200, 61.0, -0.5)
    assert (b.best_validation, b.best_step, b.final_minus_best) == (45.0, 200, -1.0)  # not converged: best on lineage


def test_a_best_checkpoint_cut_from_the_lineage_by_a_later_rewind_keeps_its_own_score(tmp_path):
    """TweetEval: emotion converged with its best at 1200, then another task's rewind went back to
    1000, discarding emotion's validation at 1200 from the final lineage."""
    st = FileRunStorage(tmp_path)
    for r in [{"task": "e", "step": 1000, "value": 77.0, "mode": "supervised"},
              {"task": "e", "step": 1200, "value": 79.4, "mode": "supervised"},
              {"task": "e", "step": 1400, "value": 76.0, "mode": "supervised"},
              {"event": "rewind", "step": 1200}, {"event": "kd", "task": "e", "step": 1200},
              {"task": "e", "step": 1400, "value": 78.6, "mode": "kd"},
              {"event": "rewind", "step": 1000},  # another task's best
              {"task": "e", "step": 1200, "value": 77.8, "mode": "kd"},
              {"task": "e", "step": 1400, "value": 79.4, "mode": "kd"}]:
        st.append_line("reports/history.jsonl", json.dumps(r))
    st.put_bytes("reports/final.json", json.dumps({"step": 1400, "tasks": {"e": {
        "metric": "accuracy", "finalValidation": {"accuracy": 79.1},
        "bestCheckpoint": {"step": 1200, "validation": {"accuracy": 79.4}, "test": {"accuracy": 78.7}}}}}).encode())
    status = RunStatus(phase="Succeeded", tasks={"e": TaskStatus(phase="KD", converged_at_step=1400, best_step=1200)})
    (e,) = build_report("r", status, st).tasks
    assert (e.best_validation, e.best_step, e.best_checkpoint_step) == (79.4, 1200, 1200)
    assert round(e.final_minus_best, 2) == -0.3


def test_the_convergence_marker_sits_on_the_validation_that_triggered_it():
    """Step 30 is validated on two trajectories: the first (35.0) met the rule, was rewound to 10 and
    discarded; the second (60.0) came after another task's rewind. The marker belongs on 35.0, the
    point the decision read, not on the first or the last record at that step in general."""
    from asyncmtl.report import convergence_trigger

    history = [
        {"step": 10, "task": "a", "value": 40.0, "mode": "supervised"},
        {"step": 30, "task": "a", "value": 20.0, "mode": "supervised", "rewinds": 0},
        {"event": "rewind", "step": 20},  # task b converged: a's step 30 discarded
        {"step": 30, "task": "a", "value": 35.0, "mode": "supervised", "rewinds": 1},
        {"event": "rewind", "step": 10},  # a converged on 35.0 (best 40.0 at 10)
        {"event": "kd", "step": 10, "task": "a"},
        {"step": 30, "task": "a", "value": 60.0, "mode": "kd", "rewinds": 2},
    ]
    history = [parse_record(r) for r in history]
    assert convergence_trigger(history, "a", 30).value == 35.0
    assert convergence_trigger(history, "a", None) is None
