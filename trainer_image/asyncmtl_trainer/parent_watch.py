"""A child of the local runtime never outlives it (the children's side of `asyncmtl.local.lifeline`).

The trainer and inference shards run in their own process sessions, so Ctrl-C reaches the runtime
alone. When the runtime dies without cleaning up (SIGKILL, the OOM killer), the child notices that
its parent changed and sends SIGTERM to itself (the default action; nothing half-written survives
the manifest-last checkpoint rule). Linux (/proc) for the grandparent check under torchrun.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


def _parent_of(pid: int) -> int | None:
    """The parent pid of `pid` (Linux /proc), or None when it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, ppid, ...


def _descends_from(ancestor: int, depth: int) -> bool:
    """Whether `ancestor` is this process's parent, or (depth > 1) the parent of a parent up to `depth` levels
    (a launcher in between: torchrun's agent starts the trainer's ranks)."""
    pid = os.getppid()
    for _ in range(depth):
        if pid == ancestor:
            return True
        nxt = _parent_of(pid) if pid else None
        if nxt is None:
            return False
        pid = nxt
    return False


def watch_parent(parent_pid: int, interval: float = 1.0, depth: int = 1) -> threading.Thread | None:
    """Start a daemon thread that sends SIGTERM to this process once `parent_pid` is no longer its parent
    (the parent died and the process was re-parented), or, with `depth` 2, its parent's parent either
    (a rank under torchrun: the runtime started the launcher, which started the rank). Checks every
    `interval` seconds. Returns the thread, or None when the parent is already gone (then SIGTERM is
    sent at once)."""
    if not _descends_from(parent_pid, depth):
        os.kill(os.getpid(), signal.SIGTERM)
        return None

    def _watch() -> None:
        while _descends_from(parent_pid, depth):
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=_watch, name="parent-watch", daemon=True)
    t.start()
    return t
