"""BAM (M->M) end to end: a uniform baseline, then a fresh model distilled from its best checkpoints."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import builtin_task, run_doc

pytestmark = pytest.mark.slow


def test_bam_from_a_finished_uniform_run(tmp_path, tiny_model):
    tasks = [builtin_task("sentiment"), builtin_task("sarcasm")]
    for t in tasks:
        t["data"].update(maxTrainExamples=120, maxValidationExamples=40, maxTestExamples=40)
    common = {"training": {"batchSize": 16, "learningRate": 1e-3, "maxSteps": 40, "validationInterval": 10},
              "storage": {"uri": "file://./store"}, "metrics": {"pollIntervalSeconds": 0.3}}
    uniform = run_doc(tasks, model=str(tiny_model), name="uniform", method="fixedSteps", **common)
    bam = run_doc(tasks, model=str(tiny_model), name="bam", method="bam", teacherRun="uniform", **common)
    for doc in (uniform, bam):
        (tmp_path / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for name in ("uniform", "bam"):
        r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "run", f"{name}.yaml", "--no-live"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    store = tmp_path / "store" / "local"
    status = json.loads((store / "bam" / "status.json").read_text())
    assert status["phase"] == "Succeeded" and {t["phase"] for t in status["tasks"].values()} == {"KD"}
    teacher_final = json.loads((store / "uniform" / "reports" / "final.json").read_text())
    for task, ts in status["tasks"].items():
        assert ts["bestStep"] == teacher_final["tasks"][task]["bestCheckpoint"]["step"]
        assert ts["softLabelsUri"].startswith(f"file://{store / 'uniform' / 'softlabels' / task}")
    assert "soft labels loaded" in (store / "bam" / "logs" / "trainer.log").read_text()
