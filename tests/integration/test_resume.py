"""Ctrl-C stops every child cleanly; `--resume` continues the run to the end."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import builtin_task, local_run_command, wait_for_step

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_interrupt_then_resume(tmp_path, tiny_model):
    # patience 5: no task converges before the interruption, however slowly the test polls (with 2,
    # every task could converge, and the run end, before a loaded machine let the test send Ctrl-C)
    tasks = [builtin_task("sentiment", patience=5), builtin_task("sarcasm", patience=5),
             builtin_task("rating", "regression", labelRange=[1, 5], patience=5)]
    cmd, run_dir = local_run_command(tmp_path, tiny_model, "resume", tasks, max_steps=300, rows=(200, 60, 60))
    # SIGINT at its default, as in a terminal: a test run started in the background (`cmd &` in a script)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler in the child
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_step(run_dir, p, 30)
    trainer_pid = json.loads((run_dir / "trainer.json").read_text())["pid"]
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=180)  # stopping the children takes seconds; a loaded CI machine, more
    assert p.returncode == 130, out
    assert "--resume" in out
    assert not _alive(trainer_pid)
    interrupted = json.loads((run_dir / "status.json").read_text())
    assert interrupted["phase"] == "Running"

    r = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    final = json.loads((run_dir / "status.json").read_text())
    assert final["phase"] == "Succeeded"
    assert "resumed at step" in (run_dir / "logs" / "trainer.log").read_text()
    # nothing from before the interruption was lost: the history keeps the first validations
    history = [json.loads(line) for line in (run_dir / "reports" / "history.jsonl").read_text().splitlines()]
    assert min(h["step"] for h in history if "value" in h) == 10
