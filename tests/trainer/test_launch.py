"""asyncmtl_trainer.launch (`asyncmtl-launch`): torchrun in-process for tiny worker scripts, exiting 0 when every
rank finished, else with the status a failing rank recorded in the run's workdir (`--workdir DIR` or
`--workdir=DIR` among the rank's arguments), else 1; a status recorded by an earlier launch is forgotten."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from asyncmtl import termination
from asyncmtl_trainer.launch import main
from tests.conftest import REPO

WORKER = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from asyncmtl import termination

args = sys.argv[1:]
workdir = args[args.index("--workdir") + 1] if "--workdir" in args else \\
    next((a.split("=", 1)[1] for a in args if a.startswith("--workdir=")), None)
rank = int(os.environ["RANK"])
fail = {{int(r) for r in os.environ.get("T_FAIL_RANKS", "").split(",") if r}}
record = os.environ.get("T_RECORD")
if rank in fail:
    if record and workdir:
        termination.write_exit_code(Path(workdir), int(record))
    sys.exit(1)  # torchrun reports any failed worker as 1
"""


@pytest.fixture()
def launch(tmp_path, monkeypatch):
    """Run `asyncmtl-launch` on the worker script; torchrun's agent installs signal handlers in its process
    and they are put back afterwards."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    environ = dict(os.environ)

    def run(*worker_args: str, nproc: int = 1, fail: str = "", record: str = "") -> int:
        monkeypatch.setenv("T_FAIL_RANKS", fail)
        monkeypatch.setenv("T_RECORD", record)
        return main(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.05",
                     str(script), *worker_args])

    yield run
    for s, h in saved.items():
        signal.signal(s, h)
    for k in set(os.environ) - set(environ):
        del os.environ[k]
    os.environ.update(environ)


def test_every_rank_finishing_is_0_and_forgets_an_earlier_status(launch, tmp_path):
    termination.write_exit_code(tmp_path, termination.EXIT_BAD_INPUT)  # from an earlier launch
    assert launch("--workdir", str(tmp_path), nproc=2) == 0
    assert termination.recorded_exit_code(tmp_path, -1) == -1


@pytest.mark.parametrize("form", ["separate", "joined"])
def test_a_failing_rank_s_recorded_status_is_the_exit_status(launch, tmp_path, form):
    args = ("--workdir", str(tmp_path)) if form == "separate" else (f"--workdir={tmp_path}",)
    assert launch(*args, nproc=2, fail="1", record=str(termination.EXIT_STORAGE_FAULT)) == termination.EXIT_STORAGE_FAULT


def test_a_failing_rank_that_recorded_nothing_is_1_even_after_an_earlier_launch_recorded_a_status(launch, tmp_path):
    termination.write_exit_code(tmp_path, termination.EXIT_BAD_INPUT)
    assert launch("--workdir", str(tmp_path), fail="0") == 1


def test_without_a_workdir_a_failure_is_1(launch, tmp_path):
    assert launch("--other", "x", fail="0", record="2") == 1
    assert not (Path(tmp_path) / termination.EXIT_CODE_FILE).exists()
