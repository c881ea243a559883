"""asyncmtl_trainer.parent_watch: a child of the local runtime sends itself SIGTERM once its parent is gone
(re-parented), or with depth 2 once its parent's parent is (a rank under a launcher); while they live nothing
happens; a parent gone before the watch starts means SIGTERM at once. Real process trees: the watching
process writes a marker from its SIGTERM handler."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncmtl_trainer import parent_watch
from tests.conftest import REPO

if not Path("/proc/self/stat").exists():
    pytest.skip("the grandparent check reads Linux /proc", allow_module_level=True)

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "trainer_image"),
                                                   os.environ.get("PYTHONPATH", "")]))

# the watcher: marks SIGTERM in a file, watches WATCH (its parent, or with depth 2 its grandparent), says ready
WATCHER = """
import os, sys, signal, time
from pathlib import Path
from MODULE import watch_parent
d = Path(sys.argv[1]); watch = int(sys.argv[2]); depth = int(sys.argv[3])
def on_term(*_):
    (d / "terminated").write_text(str(os.getpid()))
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
thread = watch_parent(watch, interval=0.05, depth=depth)
(d / "watcher.pid").write_text(str(os.getpid()))
(d / "ready").write_text("thread" if thread is not None else "none")
time.sleep(60)
os._exit(3)
""".replace("MODULE", parent_watch.__name__)

# a process in between (the runtime, or a launcher): starts the command after its two arguments, then stays
# until `<role>.exit` appears (or it is killed) and exits without waiting for that child
MIDDLE = """
import os, subprocess, sys, time
from pathlib import Path
d = Path(sys.argv[1]); role = sys.argv[2]; child = sys.argv[3:]
(d / f"{role}.pid").write_text(str(os.getpid()))
p = subprocess.Popen([sys.executable, *child])
deadline = time.monotonic() + 30
while not (d / f"{role}.exit").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
os._exit(0)  # without waiting for the child: it is re-parented
"""


def _wait(path: Path, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture()
def tree(tmp_path):
    """Starts process trees in `tmp_path`; kills whatever of them is left at the end."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", *args], env=ENV, cwd=tmp_path)
        started.append(p)
        return p

    yield start
    for name in ("watcher.pid", "launcher.pid", "runtime.pid"):
        f = tmp_path / name
        if f.exists():
            try:
                os.kill(int(f.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


WATCH_PARENT = WATCHER.replace("watch = int(sys.argv[2])", "watch = int(sys.argv[2]) or os.getppid()")


def test_a_child_whose_parent_dies_is_terminated_and_not_before(tmp_path, tree):
    runtime = tree(MIDDLE, str(tmp_path), "runtime", "-c", WATCH_PARENT, str(tmp_path), "0", "1")
    assert _wait(tmp_path / "ready")
    assert (tmp_path / "ready").read_text() == "thread"
    time.sleep(0.4)  # eight checks with the parent alive
    assert not (tmp_path / "terminated").exists()
    (tmp_path / "runtime.exit").write_text("")  # the runtime dies without cleaning up
    runtime.wait(timeout=20)
    assert _wait(tmp_path / "terminated"), "the orphaned child was not terminated"


def test_a_rank_under_a_launcher_is_terminated_once_the_launcher_s_parent_is_gone(tmp_path, tree):
    runtime = tree(MIDDLE, str(tmp_path), "runtime",
                   "-c", MIDDLE, str(tmp_path), "launcher",
                   "-c", WATCH_PARENT.replace("or os.getppid()", "or int(Path(d / 'runtime.pid').read_text())"),
                   str(tmp_path), "0", "2")
    assert _wait(tmp_path / "ready")
    assert (tmp_path / "ready").read_text() == "thread"
    time.sleep(0.4)
    assert not (tmp_path / "terminated").exists()  # runtime and launcher alive
    (tmp_path / "runtime.exit").write_text("")  # the runtime dies; the launcher lives on, re-parented
    runtime.wait(timeout=20)
    assert _wait(tmp_path / "terminated"), "the rank was not terminated"
    launcher = int((tmp_path / "launcher.pid").read_text())
    os.kill(launcher, 0)  # still there: only the rank watches


def test_with_depth_1_a_grandparent_is_not_a_parent(tmp_path, tree):
    tree(MIDDLE, str(tmp_path), "runtime",
         "-c", MIDDLE, str(tmp_path), "launcher",
         "-c", WATCH_PARENT.replace("or os.getppid()", "or int(Path(d / 'runtime.pid').read_text())"),
         str(tmp_path), "0", "1")
    assert _wait(tmp_path / "terminated"), "watching a grandparent at depth 1 must terminate at once"
    assert not (tmp_path / "ready").exists() or (tmp_path / "ready").read_text() == "none"


def test_a_parent_gone_before_the_watch_means_sigterm_at_once_and_no_thread(tmp_path, tree):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    tree(WATCHER, str(tmp_path), str(gone.pid), "1")
    assert _wait(tmp_path / "terminated")
    assert not (tmp_path / "ready").exists() or (tmp_path / "ready").read_text() == "none"

