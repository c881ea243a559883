"""`asyncmtl compare`: Table 3 layout from finished run folders."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from asyncmtl.compare import compare, steps_run, write
from asyncmtl.headroom import headroom, hold_gap, share_of_headroom
from asyncmtl.control import ControlDocument
from asyncmtl.core.status import RunStatus, TaskStatus


def make_run(root, name, *, tests, best_tests=None, stopped="stop", converged=True, history=None, validation=None):
    """A finished local run folder: `tests` and `validation` (default 50) are the final model's test and
    validation scores per task; `history` the history's records (default: every task at 50 at steps 100-400)."""
    d = root / name
    (d / "reports").mkdir(parents=True)
    status = RunStatus(phase="Succeeded", control=ControlDocument(run=name),
                       tasks={t: TaskStatus(phase="KD" if converged else "Training",
                                            converged_at_step=300 if converged else None) for t in tests})
    (d / "status.json").write_text(status.model_dump_json(by_alias=True))
    final = {"step": 400, "stopped": stopped, "tasks": {t: {
        "metric": "accuracy", "finalValidation": {"accuracy": (validation or {}).get(t, 50.0)},
        "finalTest": {"accuracy": v},
        "bestCheckpoint": {"step": 200, "test": {"accuracy": (best_tests or tests)[t]}}} for t, v in tests.items()}}
    (d / "reports" / "final.json").write_text(json.dumps(final))
    hist = history or [{"task": t, "step": s, "value": 50.0} for t in tests for s in (100, 200, 300, 400)]
    (d / "reports" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hist))
    return d


def test_steps_run_counts_discarded_stretches():
    """A history from before rewinds recorded the step they left: the last validation step stands in."""
    h = [{"task": "a", "step": s, "value": 1} for s in (100, 200, 300, 400)]
    h += [{"event": "rewind", "step": 200}, {"task": "a", "step": 300, "value": 1}]
    from asyncmtl.artifacts import parse_record

    assert steps_run([parse_record(r) for r in h], 300) == 300 + 200


def test_steps_run_counts_every_optimizer_step_a_rewind_discarded(tmp_path):
    """Written as the trainer writes it (HistoryLog): trained to 430 (past the validation at 400, as under
    `whilePending: Continue`), rewound to 200; trained to 350, rewound to 300; ended at 500. Steps made:
    430 + (350 - 200) + (500 - 300) = 780, i.e. the final step plus 230 + 50 discarded."""
    from asyncmtl.artifacts import ValidationRecord, read_history
    from asyncmtl.storage import FileRunStorage
    from asyncmtl_trainer.history import HistoryLog

    storage = FileRunStorage(tmp_path)
    log = HistoryLog(storage)
    for step in (100, 200, 300, 400):
        log.record(ValidationRecord(step=step, task="a", value=1.0), rewinds=0)
    log.event("rewind", step=200, rewinds=1, from_step=430)
    log.record(ValidationRecord(step=300, task="a", value=1.0), rewinds=1)
    log.event("rewind", step=300, rewinds=2, from_step=350)
    for step in (400, 500):
        log.record(ValidationRecord(step=step, task="a", value=1.0), rewinds=2)
    assert steps_run(read_history(storage), 500) == 780
    assert steps_run(read_history(storage), None) == 780  # no final step recorded: the last validation's


def test_headroom_of_hand_made_curves():
    # a's best is 70 (step 200), b's 55 (step 300): 62.5 on average. Mean over tasks per step:
    # 100: (60+50)/2 = 55, 200: (70+40)/2 = 55, 300: (65+55)/2 = 60, the best single checkpoint. H = 62.5 - 60.
    h = headroom({"a": {100: 60.0, 200: 70.0, 300: 65.0}, "b": {100: 50.0, 200: 40.0, 300: 55.0}})
    assert (h.value, h.best_step, h.best_step_mean, h.task_best) == (2.5, 300, 60.0, {"a": 70.0, "b": 55.0})
    # best steps apart, both checkpoints at 55 on average: the earlier is the best single one; H = 60 - 55
    h = headroom({"a": {100: 60.0, 200: 50.0}, "b": {100: 50.0, 200: 60.0}})
    assert (h.value, h.best_step) == (5.0, 100)
    # one checkpoint is every task's best: nothing to gain
    assert headroom({"a": {100: 60.0, 200: 70.0}, "b": {100: 50.0, 200: 52.0}}).value == 0.0
    # b was validated at 200 only: the single checkpoints are those at 200; a's best counts wherever it is
    # (70 at 300): (70 + 40) / 2 - (60 + 40) / 2 = 5
    assert headroom({"a": {200: 60.0, 300: 70.0}, "b": {200: 40.0}}).value == 5.0
    assert headroom({"a": {100: 60.0}, "b": {200: 40.0}}) is None  # no step scored every task
    assert headroom({}) is None and headroom({"a": {}}) is None


def test_hold_gap_and_share_of_headroom():
    # (70 - 64) and (55 - 54): 3.5 on average; a task above its best at the end counts negatively
    assert hold_gap({"a": 70.0, "b": 55.0}, {"a": 64.0, "b": 54.0}) == 3.5
    assert hold_gap({"a": 60.0, "b": 50.0}, {"a": 62.0, "b": 50.0}) == -1.0
    assert hold_gap({"a": 70.0, "b": None}, {"a": 64.0, "b": 54.0}) is None
    assert hold_gap({"a": 70.0}, {}) is None and hold_gap({}, {}) is None
    # 2 points over the reference, out of a headroom of 2.5
    assert share_of_headroom(61.0, 59.0, 2.5) == pytest.approx(0.8)
    assert share_of_headroom(58.0, 59.0, 2.5) == pytest.approx(-0.4)
    assert share_of_headroom(61.0, 59.0, 0.0) is None and share_of_headroom(None, 59.0, 2.5) is None


def _curves(**tasks: dict[int, float]) -> list[dict]:
    """History records of validation curves: task -> {step: value}, step by step."""
    steps = sorted({s for c in tasks.values() for s in c})
    return [{"task": t, "metric": "accuracy", "step": s, "value": c[s]} for s in steps for t, c in tasks.items() if s in c]


UNIFORM_CURVES = {"a": {100: 60.0, 200: 70.0, 300: 65.0, 400: 64.0}, "b": {100: 50.0, 200: 40.0, 300: 55.0, 400: 54.0}}


def _uniform_and_joint(root, uniform_a200: float = 70.0, suffix: str = ""):
    """A uniform run (H 2.5 with `uniform_a200` 70: tasks' bests 70 and 55, the best checkpoint 300 at 60;
    final validation 64 and 54: hold gap 3.5) and a joint run (bests 72 and 57, final validation 70 and 56:
    hold gap 1.5; trained to 230 and rewound to 200 once: 400 + 30 optimizer steps)."""
    curves = {"a": {**UNIFORM_CURVES["a"], 200: uniform_a200}, "b": UNIFORM_CURVES["b"]}
    uni = make_run(root, f"uniform{suffix}", tests={"a": 70.0, "b": 60.0}, best_tests={"a": 72.0, "b": 61.0},
                   stopped="maxSteps", converged=False, history=_curves(**curves), validation={"a": 64.0, "b": 54.0})
    joint_history = _curves(a={100: 61.0, 200: 72.0}, b={100: 52.0, 200: 57.0})
    joint_history += [{"event": "rewind", "step": 200, "fromStep": 230}]
    joint_history += _curves(a={300: 71.0, 400: 70.0}, b={300: 56.0, 400: 56.0})
    joint = make_run(root, f"joint{suffix}", tests={"a": 73.0, "b": 59.0}, history=joint_history,
                     validation={"a": 70.0, "b": 56.0})
    return uni, joint


def test_the_comparison_shows_headroom_hold_gap_share_and_every_optimizer_step(tmp_path):
    comp, _ = compare(list(_uniform_and_joint(tmp_path)))
    assert comp.headroom.value == 2.5
    rows = {r.name: r for r in comp.rows}
    assert rows["uniform (Final)"].hold_gap == 3.5 and rows["joint"].hold_gap == 1.5
    assert rows["uniform (Best)"].hold_gap is None  # no model was held there
    # validation averages: uniform Final (64+54)/2 = 59, its Best (70+55)/2 = 62.5, joint (70+56)/2 = 63;
    # shares of H = 2.5 over 59: 3.5/2.5 and 4/2.5
    assert comp.share(rows["uniform (Best)"]) == pytest.approx(1.4) and comp.share(rows["joint"]) == pytest.approx(1.6)
    assert rows["joint"].steps == 430 and rows["uniform (Final)"].steps == 400
    md = comp.markdown()
    assert "| joint | 430 | **+3.00** | -1.00 | +1.00 |" in md
    assert ("Headroom H of `uniform (Final)` on validation: 2.50 points (each task's best validation score, on "
            "average 62.50, against the best single checkpoint's mean, 60.00 at step 300).") in md
    assert "| run | validation average | hold gap | share of H |" in md
    assert "| uniform (Final) | 59.00 | 3.50 | reference |" in md
    assert "| uniform (Best) | 62.50 | – | +1.40 |" in md
    assert "| joint | 63.00 | 1.50 | +1.60 |" in md
    assert "no test H" in md and "rewind discarded included" in md
    lines = comp.csv().splitlines()
    assert lines[0] == ("run,optimizer_steps,a,b,average,validation_average,hold_gap,share_of_headroom,headroom,"
                        "is_reference")
    assert lines[1] == "uniform (Final),400,70.0000,60.0000,65.0000,59.0000,3.5000,,2.5000,True"
    assert lines[3] == "joint,430,73.0000,59.0000,66.0000,63.0000,1.5000,1.6000,,False"


def test_table_layout_reference_deltas_and_best_marks(tmp_path):
    uni = make_run(tmp_path, "uniform", tests={"a": 70.0, "b": 60.0}, best_tests={"a": 72.0, "b": 61.0},
                   stopped="maxSteps", converged=False)
    joint = make_run(tmp_path, "joint", tests={"a": 73.0, "b": 59.0})
    comp, reports = compare([uni, joint])
    assert [r.name for r in comp.rows] == ["uniform (Final)", "uniform (Best)", "joint"]
    assert comp.reference.name == "uniform (Final)"
    md = comp.markdown()
    assert "| run | optimizer steps | a | b | average |" in md
    assert "| uniform (Final) | 400 | 70.00 | 60.00 | 65.00 |" in md
    assert "| uniform (Best) | 400 | +2.00 | **+1.00** | **+1.50** |" in md
    assert "| joint | 400 | **+3.00** | -1.00 | +1.00 |" in md
    paths = write(comp, reports, tmp_path / "out")
    assert (tmp_path / "out" / "compare.csv").read_text().splitlines()[0].startswith("run,optimizer_steps,a,b,average,")
    assert {"uniform-curves.png", "joint-curves.png"} <= set(paths)


def test_cli_prints_the_headroom_table_of_stored_runs(tmp_path):
    _uniform_and_joint(tmp_path)
    r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "compare", "uniform", "joint", "--runs-root",
                        str(tmp_path), "--out", str(tmp_path / "cmp")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert any(re.fullmatch(r"joint\s+430\s+\*\+3\.00\s+-1\.00\s+\+1\.00", line) for line in out), r.stdout
    assert "Headroom H of `uniform (Final)` on validation: 2.50 points" in r.stdout
    assert any(re.fullmatch(r"joint\s+63\.00\s+1\.50\s+\+1\.60", line) for line in out), r.stdout
    assert any(re.fullmatch(r"uniform \(Final\)\s+59\.00\s+3\.50\s+reference", line) for line in out), r.stdout
    assert "| joint | 63.00 | 1.50 | +1.60 |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_cli(tmp_path):
    make_run(tmp_path, "uniform", tests={"a": 70.0}, stopped="maxSteps", converged=False)
    make_run(tmp_path, "joint", tests={"a": 71.0})
    r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "compare", "uniform", "joint", "--runs-root",
                        str(tmp_path), "--out", str(tmp_path / "cmp")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "*+1.00" in r.stdout and (tmp_path / "cmp" / "compare.md").is_file()
    bad = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "compare", str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no status.json" in bad.stderr


def test_output_piped_into_a_reader_that_leaves_early_gives_no_traceback(tmp_path):
    make_run(tmp_path, "uniform", tests={"a": 70.0}, stopped="maxSteps", converged=False)
    make_run(tmp_path, "joint", tests={"a": 71.0})
    r = subprocess.run(f"{sys.executable} -m asyncmtl.cli compare uniform joint --runs-root {tmp_path} "
                       f"--out {tmp_path / 'cmp'} | true", shell=True, capture_output=True, text=True)
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr
