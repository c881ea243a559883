"""End to end: `asyncmtl run` on a tiny random BERT and a small TweetEval slice.

Real processes (trainer, inference shards), real HTTP metrics, the real control file.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tweeteval_task

pytestmark = pytest.mark.slow


def test_local_run_ends_succeeded_with_tasks_switched_to_kd(tmp_path, tiny_model, tweeteval_dir):
    doc = {
        "apiVersion": "asyncmtl.dev/v1alpha1", "kind": "AsyncMTLRun", "metadata": {"name": "e2e"},
        "spec": {
            "model": {"pretrained": str(tiny_model), "maxLength": 48},
            # a tiny random model plateaus at once on real data: staggered patience makes the tasks
            # converge one after another, each in its own poll (validations are far apart in time)
            "tasks": [tweeteval_task("emotion", 4, patience=1), tweeteval_task("hate", 2, patience=2),
                      tweeteval_task("irony", 2, patience=3), tweeteval_task("offensive", 2, patience=4)],
            "training": {"batchSize": 16, "learningRate": 1e-3, "maxSteps": 1200, "validationInterval": 30, "seed": 1},
            "distillation": {"whilePending": "Pause", "shards": 2},
            "storage": {"uri": "file://./store"},
            "metrics": {"pollIntervalSeconds": 0.2},
        },
    }
    spec = tmp_path / "e2e.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "run", str(spec), "--no-live",
                        "--tweeteval-dir", str(tweeteval_dir)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    run_dir = tmp_path / "store" / "local" / "e2e"
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + (run_dir / "logs" / "trainer.log").read_text()[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    kd = [n for n, t in status["tasks"].items() if t["phase"] == "KD"]
    assert len(kd) >= 2, status["tasks"]
    # every KD task got its soft labels from a complete manifest of its best checkpoint
    for n in kd:
        t = status["tasks"][n]
        manifest = json.loads(Path(t["softLabelsUri"].removeprefix("file://")).read_text())
        assert manifest["step"] == t["bestStep"] and manifest["numExamples"] == 240
    # the trainer acknowledged every signal, and the report and plot exist
    control = json.loads((run_dir / "control.json").read_text())
    assert status["acknowledgedGeneration"] == control["generation"] >= 2 * len(kd)
    report = json.loads((run_dir / "reports" / "report.json").read_text())
    assert {t["task"] for t in report["tasks"]} == {"emotion", "hate", "irony", "offensive"}
    assert all(t["test_final"] is not None for t in report["tasks"])
    assert (run_dir / "reports" / "curves.png").stat().st_size > 10_000
    assert "report.md" in r.stdout and "curves.png" in r.stdout
    # the final model loads for serving and predicts every task
    from asyncmtl_trainer.model import load_multitask_model

    model, tokenizer, meta = load_multitask_model(run_dir / "model")
    enc = tokenizer(["what a day"], return_tensors="pt")
    pooled = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
    assert {t["name"]: tuple(model.head(t["name"], pooled).shape) for t in meta["tasks"]} == {
        "emotion": (1, 4), "hate": (1, 2), "irony": (1, 2), "offensive": (1, 2)}
    # retention: only the checkpoints still needed are left
    assert len(list((run_dir / "checkpoints").iterdir())) <= 1 + 2 * 4
