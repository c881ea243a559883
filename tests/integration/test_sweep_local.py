"""End to end: `asyncmtl sweep` with real `asyncmtl run` children on a tiny random BERT (issue 24, item 5).

The user's command: two method specs with `storage.uri: file://./runs`, run from their folder, seeds
7, 11 and 13, two at a time, with `--runs-root` naming another folder. The runs went under the
working directory while the sweep read their status under --runs-root: every Succeeded run was
reported `Failed (exit 0)`, and running the sweep again trained them all again.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import builtin_task, run_doc

pytestmark = pytest.mark.slow


def _spec(folder, tiny_model, name: str, **spec) -> str:
    task = builtin_task("sentiment")
    task["data"].update(maxTrainExamples=32, maxValidationExamples=16, maxTestExamples=16)
    doc = run_doc([task], model=str(tiny_model), name=name,
                  training={"batchSize": 8, "learningRate": 1e-3, "maxSteps": 10, "validationInterval": 5},
                  storage={"uri": "file://./runs"}, metrics={"pollIntervalSeconds": 0.3}, **spec)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_the_users_sweep_finds_its_runs_where_their_storage_puts_them(tmp_path, tiny_model):
    work = tmp_path / "work"
    work.mkdir()
    specs = [_spec(work, tiny_model, "uni", method="fixedSteps"), _spec(work, tiny_model, "joint")]
    sweep = [sys.executable, "-m", "asyncmtl.cli", "sweep", *specs, "--seeds", "7,11,13", "--parallel", "2",
             "--threads", "1"]
    names = [f"{m}-s{s}" for s in (7, 11, 13) for m in ("uni", "joint")]

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*sweep, *extra], cwd=work, capture_output=True, text=True, timeout=600)

    r = run("--runs-root", str(tmp_path / "some" / "dir"))
    assert r.returncode == 2, r.stdout + r.stderr  # refused: the specs put the runs elsewhere
    assert str(work / "runs" / "local" / "uni-s7") in r.stderr and not (work / "runs" / "local").exists()

    r = run()
    assert r.returncode == 0, r.stdout + r.stderr
    statuses = {n: work / "runs" / "local" / n / "status.json" for n in names}
    for n, p in statuses.items():
        assert json.loads(p.read_text())["phase"] == "Succeeded"
        assert f"  {n:48s} Succeeded\n" in r.stdout
    assert "Failed" not in r.stdout

    written = {n: p.stat().st_mtime_ns for n, p in statuses.items()}
    r = run()  # resumed: every run is found Succeeded where it is, none trains again
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(f"  {n:48s} Succeeded (already)\n" in r.stdout for n in names), r.stdout
    assert {n: p.stat().st_mtime_ns for n, p in statuses.items()} == written
