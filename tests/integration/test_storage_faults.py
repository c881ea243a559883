"""Storage faults end a run with phase Failed and a one-line reason naming the path (never a
traceback), leave no stray temporary file, and `--resume` continues once the fault is gone.

Disk full and read-only storage are injected at the storage layer (asyncmtl.failpoints: the
kernel's own OSError, raised where the writers write), so the tests need no root or loop mount;
storage that cannot be created at all is real (a path under a regular file, a name too long).
"""
from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from asyncmtl.failpoints import ENV
from tests.conftest import builtin_task, local_run_command

pytestmark = pytest.mark.slow


def _cmd(tmp_path: Path, tiny_model: Path, name: str, **spec) -> tuple[list[str], Path]:
    # patience 50: no task converges, the run trains to maxSteps (six validations and checkpoints)
    tasks = [builtin_task("sentiment", patience=50), builtin_task("sarcasm", patience=50)]
    return local_run_command(tmp_path, tiny_model, name, tasks, max_steps=60, rows=(120, 40, 40), **spec)


def _run(cmd: list[str], cwd: Path, failpoints: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoints:
        env[ENV] = failpoints
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _stray_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.name.startswith(".tmp-") or p.suffix == ".tmp"]


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "reports" / "history.jsonl").read_text().splitlines()]


def _fails_then_resumes(tmp_path: Path, tiny_model: Path, name: str, failpoints: str, reason: str,
                        path_part: str) -> None:
    cmd, run_dir = _cmd(tmp_path, tiny_model, name)
    r = _run(cmd, tmp_path, failpoints)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["phase"] == "Failed"
    assert reason in status["message"] and path_part in status["message"], status["message"]
    assert "\n" not in status["message"].strip()
    assert reason in out and "--resume" in out
    assert not _stray_files(run_dir)
    for d in (run_dir / "checkpoints").glob("step-*"):  # a half-written checkpoint was removed
        assert (d / "state.json").is_file(), f"incomplete checkpoint left: {d}"

    r = _run(cmd + ["--resume"], tmp_path)  # the fault is gone
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "Succeeded"
    rows = Counter((h["task"], h["step"], h.get("generation")) for h in _history(run_dir) if "value" in h)
    assert {s for (_, s, _) in rows} == {10, 20, 30, 40, 50, 60}
    assert max(rows.values()) == 1, [k for k, n in rows.items() if n > 1]


def test_disk_full_while_checkpointing_fails_the_run_with_the_path_then_resume_succeeds(tmp_path, tiny_model):
    # two writes per checkpoint (weights, then state.json): the 5th is the third checkpoint's weights
    _fails_then_resumes(tmp_path, tiny_model, "full", "storage.write:checkpoints=ENOSPC@5",
                        "No space left on device (ENOSPC)", "checkpoints/step-00000030")


def test_storage_turning_read_only_fails_the_run_with_the_path_then_resume_succeeds(tmp_path, tiny_model):
    # one history line per task and validation step: the 5th is the third validation's first
    _fails_then_resumes(tmp_path, tiny_model, "readonly", "storage.write:reports=EROFS@5",
                        "Read-only file system (EROFS)", "reports/history.jsonl")


def test_status_that_cannot_be_written_stops_the_run_without_a_stray_file_and_resume_succeeds(tmp_path, tiny_model):
    cmd, run_dir = _cmd(tmp_path, tiny_model, "status")
    r = _run(cmd, tmp_path, "runtime.status=ENOSPC@8")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "status.json" in out and "No space left on device" in out
    assert not _stray_files(run_dir)
    json.loads((run_dir / "status.json").read_text())  # the last good status, whole
    r = _run(cmd + ["--resume"], tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "Succeeded"


@pytest.mark.parametrize("where, reason", [
    ("under-a-file", "Not a directory"),
    ("too-long", "File name too long"),
])
def test_storage_that_cannot_be_created_is_an_error_before_anything_starts(tmp_path, tiny_model, where, reason):
    if where == "under-a-file":
        (tmp_path / "afile").write_text("not a folder")
        uri = f"file://{tmp_path}/afile/runs"
    else:
        uri = f"file://{tmp_path}/{'x' * 300}"
    cmd, _ = _cmd(tmp_path, tiny_model, "bad-storage", storage={"uri": uri})
    r = _run(cmd, tmp_path)
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: storage fault: cannot write ") and reason in r.stderr, r.stderr
    assert not (tmp_path / "store").exists()
