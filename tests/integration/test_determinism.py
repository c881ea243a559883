"""Same spec, same seed => the same decisions, whatever the timing (issue: deterministic decisions).

Two `asyncmtl run`s of one small spec under `whilePending: Pause`: one as is, one with the trainer
slowed between its tasks' validation reports (`$ASYNCMTL_TRAINER_REPORT_DELAY`) and the runtime
polling fast, so that polls land in the middle of validation steps. The convergence decisions,
rewinds, KD switches, every validation value and the final metrics must be identical.

What may differ is bookkeeping: two tasks' soft labels can be signalled in one control generation or
in two, depending on the poll that sees them, so generation numbers, the order of SoftLabelsReady
events and the order of the trainer's KD switches at one step are not compared (under Pause they all
take effect at that step, before any training; no batch and no decision depends on their order).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from asyncmtl.artifacts import history_key, parse_record
from tests.conftest import tweeteval_task, wait_for_lock_free, wait_for_step

pytestmark = pytest.mark.slow


def _command(tmp: Path, tiny_model: Path, tweeteval_dir: Path, *, delay: float,
             rules: dict[str, dict] | None = None) -> list[str]:
    doc = {
        "apiVersion": "asyncmtl.dev/v1alpha1", "kind": "AsyncMTLRun", "metadata": {"name": "det"},
        "spec": {
            "model": {"pretrained": str(tiny_model), "maxLength": 32},
            # hate and irony never improve on their first validation (minDelta 100), so they meet the rule
            # at the same validation step and must converge together, in one decision, with one rewind;
            # emotion goes on learning and converges on its own later
            "tasks": [tweeteval_task(n, k, rows=(200, 100, 100), **extra, **(rules or {}).get(n, {})) for n, k, extra in (
                ("emotion", 4, {}), ("hate", 2, {"minDelta": 100}), ("irony", 2, {"minDelta": 100}))],
            "training": {"batchSize": 16, "learningRate": 1e-3, "maxSteps": 500, "validationInterval": 20, "seed": 3},
            "distillation": {"whilePending": "Pause", "shards": 1},
            "storage": {"uri": "file://./store"},
            "metrics": {"pollIntervalSeconds": 0.05 if delay else 0.5},
        },
    }
    tmp.mkdir(parents=True, exist_ok=True)
    spec = tmp / "det.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    return [sys.executable, "-m", "asyncmtl.cli", "run", str(spec), "--no-live", "--threads", "1",
            "--tweeteval-dir", str(tweeteval_dir)]


def _run(tmp: Path, tiny_model: Path, tweeteval_dir: Path, *, delay: float, resume: bool = False,
         rules: dict[str, dict] | None = None) -> Path:
    cmd = _command(tmp, tiny_model, tweeteval_dir, delay=delay, rules=rules) + (["--resume"] if resume else [])
    env = dict(os.environ, ASYNCMTL_TRAINER_REPORT_DELAY=str(delay))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=900, env=env)
    run_dir = tmp / "store" / "local" / "det"
    log = run_dir / "logs" / "trainer.log"
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    return run_dir


def _decisions(run_dir: Path) -> list[tuple]:
    """Every decision and what the trainer did with it, without wall-clock times."""
    status = json.loads((run_dir / "status.json").read_text())
    here = str(run_dir.parent.parent.parent)  # the run's own folder differs between the two runs
    decided = [(h["reason"], h.get("task"), h.get("step"), h["message"].replace(here, "")) for h in status["history"]
               if h["reason"] in ("TaskConverged", "InferenceLaunched", "Stopping")]
    ready = sorted((h.get("task"), h["message"].replace(here, "")) for h in status["history"]
                   if h["reason"] == "SoftLabelsReady")
    trainer: list[tuple] = []
    for line in (run_dir / "reports" / "history.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("event") == "kd" and trainer and trainer[-1][:1] == ("kd",) and trainer[-1][2] == r["step"]:
            # KD switches at one step (soft labels seen in one poll or in two): a set, not a sequence
            trainer[-1] = ("kd", tuple(sorted((*trainer[-1][1], r["task"]))), r["step"])
        elif r.get("event") == "kd":
            trainer.append(("kd", (r["task"],), r["step"]))
        else:
            trainer.append((r.get("event"), r.get("task"), r["step"], r.get("value"), r.get("mode"), r.get("epochs"),
                            r.get("streak")))
    return decided + [("SoftLabelsReady", *x) for x in ready] + trainer


def _finals(run_dir: Path) -> dict:
    final = json.loads((run_dir / "reports" / "final.json").read_text())
    return {n: (t["finalValidation"], t.get("finalTest"), t["bestCheckpoint"]) for n, t in final["tasks"].items()}


@pytest.fixture(scope="module")
def calm(tmp_path_factory, tiny_model, tweeteval_dir) -> Path:
    """The run undisturbed."""
    return _run(tmp_path_factory.mktemp("calm"), tiny_model, tweeteval_dir, delay=0.0)


def test_same_seed_same_decisions_whatever_the_timing(calm, tmp_path, tiny_model, tweeteval_dir):
    rushed = _run(tmp_path / "rushed", tiny_model, tweeteval_dir, delay=0.25)
    a, b = _decisions(calm), _decisions(rushed)
    converged = [d for d in a if d[0] == "TaskConverged"]
    assert len(converged) == 3, a  # the spec must make decisions, or the comparison proves nothing
    assert converged[0][2] == converged[1][2] == 60 and {converged[0][1], converged[1][1]} == {"hate", "irony"}, a
    assert a == b
    assert _finals(calm) == _finals(rushed)


def _wait_for_soft_labels(run_dir: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the run's status records soft labels ready (after its first convergence and rewind)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads((run_dir / "status.json").read_text())
            if any(h["reason"] == "SoftLabelsReady" for h in status.get("history", [])):
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    raise AssertionError("no soft labels")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_stopped_then_resumed_decides_as_if_undisturbed(calm, tmp_path, tiny_model, tweeteval_dir, sig):
    """SIGTERM (handled like Ctrl-C) before the first decision, SIGKILL of `asyncmtl run` (no cleanup at
    all; its children see their parent die) once the first rewind's soft labels are ready; then
    `--resume`: no process of the
    first owner is left, no history record is written twice, and every decision and value is the same
    as in the undisturbed run."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cmd = _command(tmp_path, tiny_model, tweeteval_dir, delay=0.0)
    run_dir = tmp_path / "store" / "local" / "det"
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if sig == signal.SIGTERM:
        wait_for_step(run_dir, p, 40)  # before the first decision (at step 60)
    else:
        _wait_for_soft_labels(run_dir, p)  # after the first decision, its rewind and inference
    trainer = json.loads((run_dir / "trainer.json").read_text())["pid"]
    p.send_signal(sig)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == (128 + sig if sig == signal.SIGTERM else -sig), out
    wait_for_lock_free(run_dir, "det", 30)  # every process of the first owner is gone
    assert not Path(f"/proc/{trainer}").exists() or Path(f"/proc/{trainer}/stat").read_text().split()[2] == "Z"

    resumed = _run(tmp_path, tiny_model, tweeteval_dir, delay=0.0, resume=True)
    records = [parse_record(json.loads(line)) for line in (resumed / "reports" / "history.jsonl").read_text().splitlines()]
    keys = Counter(history_key(r) for r in records)
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    assert _decisions(resumed) == _decisions(calm)
    assert _finals(resumed) == _finals(calm)


RULES = {"hate": {"minEpochs": 2.5}, "emotion": {"significance": 0.05}}  # the epoch floor and the significance rule


@pytest.fixture(scope="module")
def calm_rules(tmp_path_factory, tiny_model, tweeteval_dir) -> Path:
    """The run with RULES, undisturbed."""
    return _run(tmp_path_factory.mktemp("calm-rules"), tiny_model, tweeteval_dir, delay=0.0, rules=RULES)


def test_the_epoch_floor_and_the_significance_rule_decide_the_same_whatever_the_timing(calm_rules, tmp_path,
                                                                                       tiny_model, tweeteval_dir):
    """minEpochs and significance are read by the runtime from the trainer's exported epochs and streak, and by
    the trainer's barrier from its own state: the same decisions, calm or rushed. hate (never improving) meets
    patience at 60 as irony does, but its epoch floor holds it until it has seen 2.5 epochs of its data."""
    calm_run = calm_rules
    rushed = _run(tmp_path / "rushed", tiny_model, tweeteval_dir, delay=0.25, rules=RULES)
    a = _decisions(calm_run)
    assert a == _decisions(rushed)
    assert _finals(calm_run) == _finals(rushed)
    converged = {d[1]: d[2] for d in a if d[0] == "TaskConverged"}
    assert converged["irony"] == 60 and converged["hate"] > 60, a
    history = [json.loads(line) for line in (calm_run / "reports" / "history.jsonl").read_text().splitlines()]
    hate = [r for r in history if r.get("task") == "hate" and "value" in r]
    # hate converged at the first validation (after the rewinds that run) with 2.5 epochs seen, none before
    at = [r for r in hate if r["step"] == converged["hate"]]
    assert at and at[-1]["epochs"] >= 2.5 and all(r["epochs"] < 2.5 for r in hate if r["step"] < converged["hate"])
    emotion = [r for r in history if r.get("task") == "emotion" and "value" in r]
    assert all(isinstance(r["streak"], int) for r in emotion)  # the trainer ran the bootstrap at every validation
    assert all("streak" not in r for r in hate)  # the rule is off for hate: no bootstrap, nothing recorded


def test_a_run_with_the_new_rules_killed_then_resumed_decides_as_if_undisturbed(calm_rules, tmp_path, tiny_model,
                                                                                 tweeteval_dir):
    """SIGKILL once the first rewind's soft labels are ready, then `--resume`: the examples count, the best
    checkpoint's validation rows and the streak come back from the checkpoint, so every decision is the same."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    run_dir = tmp_path / "store" / "local" / "det"
    p = subprocess.Popen(_command(tmp_path, tiny_model, tweeteval_dir, delay=0.0, rules=RULES), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_soft_labels(run_dir, p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=120)
    wait_for_lock_free(run_dir, "det", 30)
    resumed = _run(tmp_path, tiny_model, tweeteval_dir, delay=0.0, resume=True, rules=RULES)
    records = [parse_record(json.loads(line)) for line in (resumed / "reports" / "history.jsonl").read_text().splitlines()]
    assert max(Counter(history_key(r) for r in records).values()) == 1
    assert _decisions(resumed) == _decisions(calm_rules)
    assert _finals(resumed) == _finals(calm_rules)
