"""`asyncmtl compare`: Table 3 layout from finished run folders."""
from __future__ import annotations

import json
import subprocess
import sys

from asyncmtl.compare import compare, steps_run, write
from asyncmtl.control import ControlDocument
from asyncmtl.core.status import RunStatus, TaskStatus


def make_run(root, name, *, tests, best_tests=None, stopped="stop", converged=True, history=None):
    d = root / name
    (d / "reports").mkdir(parents=True)
    status = RunStatus(phase="Succeeded", control=ControlDocument(run=name),
                       tasks={t: TaskStatus(phase="KD" if converged else "Training",
                                            converged_at_step=300 if converged else None) for t in tests})
    (d / "status.json").write_text(status.model_dump_json(by_alias=True))
    final = {"step": 400, "stopped": stopped, "tasks": {t: {
        "metric": "accuracy", "finalValidation": {"accuracy": 50.0}, "finalTest": {"accuracy": v},
        "bestCheckpoint": {"step": 200, "test": {"accuracy": (best_tests or tests)[t]}}} for t, v in tests.items()}}
    (d / "reports" / "final.json").write_text(json.dumps(final))
    hist = history or [{"task": t, "step": s, "value": 50.0} for t in tests for s in (100, 200, 300, 400)]
    (d / "reports" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hist))
    return d


def test_steps_run_counts_discarded_stretches():
    h = [{"task": "a", "step": s, "value": 1} for s in (100, 200, 300, 400)]
    h += [{"event": "rewind", "step": 200}, {"task": "a", "step": 300, "value": 1}]
    from asyncmtl.artifacts import parse_record

    assert steps_run([parse_record(r) for r in h], 300) == 300 + 200


def test_table_layout_reference_deltas_and_best_marks(tmp_path):
    uni = make_run(tmp_path, "uniform", tests={"a": 70.0, "b": 60.0}, best_tests={"a": 72.0, "b": 61.0},
                   stopped="maxSteps", converged=False)
    joint = make_run(tmp_path, "joint", tests={"a": 73.0, "b": 59.0})
    comp, reports = compare([uni, joint])
    assert [r.name for r in comp.rows] == ["uniform (Final)", "uniform (Best)", "joint"]
    assert comp.reference.name == "uniform (Final)"
    md = comp.markdown()
    assert "| run | train steps | a | b | average |" in md
    assert "| uniform (Final) | 400 | 70.00 | 60.00 | 65.00 |" in md
    assert "| uniform (Best) | 400 | +2.00 | **+1.00** | **+1.50** |" in md
    assert "| joint | 400 | **+3.00** | -1.00 | +1.00 |" in md
    paths = write(comp, reports, tmp_path / "out")
    assert (tmp_path / "out" / "compare.csv").read_text().splitlines()[0] == "run,train_steps,a,b,average,is_reference"
    assert {"uniform-curves.png", "joint-curves.png"} <= set(paths)


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
