"""One owner per local run: SIGTERM stops the children like Ctrl-C, a killed runtime takes its
children with it, and no second runtime drives a run whose processes are still alive."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from asyncmtl.local.lifeline import RunLock, RunLocked
from tests.conftest import builtin_task, local_run_command, run_doc, wait_for_lock_free, wait_for_step


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def _start(tmp_path: Path, tiny_model: Path) -> tuple[subprocess.Popen, Path, list[str]]:
    """Start `asyncmtl run` on a small spec; return it once the trainer has trained 20 steps."""
    tasks = [builtin_task("sentiment", patience=50), builtin_task("sarcasm", patience=50)]
    cmd, run_dir = local_run_command(tmp_path, tiny_model, "owned", tasks, max_steps=5000)
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_step(run_dir, p, 20)
    except AssertionError:
        p.kill()
        raise
    return p, run_dir, cmd


@pytest.mark.slow
def test_sigterm_stops_the_children_and_leaves_a_resumable_run(tmp_path, tiny_model):
    p, run_dir, _ = _start(tmp_path, tiny_model)
    trainer_pid = json.loads((run_dir / "trainer.json").read_text())["pid"]
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, out
    assert "--resume" in out
    assert _wait_gone(trainer_pid, 5), "the trainer outlived the runtime"
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "Running"


@pytest.mark.slow
def test_a_killed_runtime_takes_its_trainer_with_it_and_a_resume_waits_for_it(tmp_path, tiny_model):
    p, run_dir, cmd = _start(tmp_path, tiny_model)
    trainer_pid = json.loads((run_dir / "trainer.json").read_text())["pid"]
    p.kill()  # SIGKILL: no cleanup in the runtime at all
    p.communicate(timeout=30)
    assert _wait_gone(trainer_pid, 15), "the trainer kept training after its runtime was killed"
    # once every thread of every process of the run is gone the lock is free again: a resume may take
    # the run over (a dying multi-threaded process shows as a zombie while its last threads exit)
    wait_for_lock_free(run_dir, "owned", 15)


def test_the_run_lock_is_held_while_any_process_of_the_run_lives(tmp_path):
    path = tmp_path / "run.lock"
    owner = RunLock(path)
    owner.acquire("r")
    with pytest.raises(RunLocked, match=rf"run r is in use: `asyncmtl run` \(pid {os.getpid()} on "
                                        rf"{socket.gethostname()}, since 20\d\d-"):
        RunLock(path).acquire("r")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(owner.fd,))
    try:
        owner.release()  # the runtime is gone, its child still holds the run
        with pytest.raises(RunLocked):
            RunLock(path).acquire("r")
    finally:
        child.kill()
        child.wait()
    again = RunLock(path)
    again.acquire("r")  # the last process of the run exited: free
    assert path.read_text().startswith(f"{os.getpid()} on {socket.gethostname()}, since ")
    again.release()


def test_resume_refuses_a_run_that_is_still_held(tmp_path, capsys):
    """`asyncmtl run --resume` on a run whose processes are alive: a one-line error, no second trainer."""
    from asyncmtl.cli import main

    doc = run_doc([builtin_task("sentiment")], name="held", storage={"uri": "file://./store"})
    spec = tmp_path / "held.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    holder = RunLock(tmp_path / "store" / "local" / "held" / "run.lock")
    holder.acquire("held")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = main(["run", str(spec), "--resume", "--no-live"])
    finally:
        os.chdir(cwd)
        holder.release()
    err = capsys.readouterr().err
    assert rc == 2
    assert "run held is in use" in err and "Traceback" not in err
    assert not (tmp_path / "store" / "local" / "held" / "logs").exists()  # nothing was started


def _trainer_pid(run_dir: Path, not_pid: int | None = None, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = json.loads((run_dir / "trainer.json").read_text())["pid"]
            if pid != not_pid:
                return pid
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError("no (new) trainer")


@pytest.mark.slow
def test_a_killed_trainer_is_restarted_backoff_limit_times_and_a_failed_run_resumes(tmp_path, tiny_model):
    """As the training Job retries its pod: the trainer killed once resumes from its checkpoint; killed
    again with `backoffLimit: 1` the run fails; `--resume` then continues it to Succeeded."""
    tasks = [builtin_task("sentiment", patience=50), builtin_task("sarcasm", patience=50)]
    cmd, run_dir = local_run_command(tmp_path, tiny_model, "retried", tasks, max_steps=120,
                                     cluster={"backoffLimit": 1})
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(run_dir, p, 20)
    first = _trainer_pid(run_dir)
    os.kill(first, signal.SIGKILL)
    second = _trainer_pid(run_dir, not_pid=first)
    wait_for_step(run_dir, p, json.loads((run_dir / "status.json").read_text())["step"] + 10)
    os.kill(second, signal.SIGKILL)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 1, out
    assert "TrainerRestarted: trainer exited with code -9" in out and "retry 1 of 1" in out
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "Failed"

    r = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "Succeeded"
    log = (run_dir / "logs" / "trainer.log").read_text()
    assert log.count("resumed at step") == 2  # the restart, then the --resume; neither started over


def test_a_resume_waits_for_the_orphans_of_a_dead_owner_then_takes_the_run(tmp_path):
    """The runtime that took the lock is gone (its pid is dead); its child still holds the lock for a
    moment while it notices and stops. A resume waits for it instead of refusing; with a live owner
    it refuses at once."""
    path = tmp_path / "run.lock"
    script = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from asyncmtl.local.lifeline import RunLock\n"
        f"lock = RunLock(Path({str(path)!r}))\n"
        "lock.acquire('r')\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(2)'], pass_fds=(lock.fd,))\n"
    )  # the owner exits at once; its child (the orphan) holds the lock two more seconds
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    with pytest.raises(RunLocked, match="the runtime .* is gone, but a trainer or inference process"):
        RunLock(path).acquire("r")  # no wait: refused, naming what holds it
    t0 = time.monotonic()
    lock = RunLock(path)
    lock.acquire("r", wait_for_orphans=20)
    assert time.monotonic() - t0 < 15 and path.read_text().startswith(f"{os.getpid()} on ")
    lock.release()
