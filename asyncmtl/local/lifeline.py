"""One owner per local run: its processes stop with it, and no second runtime drives the same run.

Three mechanisms, all POSIX (Linux, macOS):

- **Termination signals** (`terminate_on_signals`): SIGTERM and SIGHUP (`timeout`, a closed terminal,
  a batch scheduler's cancel) are turned into `Terminated`, handled where Ctrl-C is: the runtime stops
  its children in order and saves its status (exit status 128 + signal number, as a shell reports).
- **Parent watch** (`asyncmtl_trainer.parent_watch.watch_parent`, the children's side): the trainer and
  inference shards run in their own process sessions (so Ctrl-C reaches the runtime alone). When the
  runtime dies without cleaning up (SIGKILL, the OOM killer), a child notices that its parent changed
  and terminates itself (SIGTERM to itself: the default action, nothing half-written survives the
  manifest-last checkpoint rule).
- **Run lock** (`RunLock`): an exclusive `flock` on `<workdir>/run.lock`, taken by the runtime before it
  touches anything and inherited by its children (`pass_fds`), so it is held until the last process of
  the run has exited, however the runtime ended. `asyncmtl run --resume` on a run still held fails
  with a clear message instead of starting a second trainer on the same storage.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator


class Terminated(Exception):
    """The process received `signum` (SIGTERM or SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 + the signal number (143 for SIGTERM), as shells report a signalled process."""
        return 128 + self.signum


@contextmanager
def _handlers(signals: tuple[int, ...], handler) -> Iterator[None]:
    """Within the block, `handler` handles `signals` in the main thread; previous handlers are restored
    after. Outside the main thread (where Python cannot install handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _raise_terminated(signum: int, _frame) -> None:
    raise Terminated(signum)


def terminate_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)):
    """Context manager: within the block, `signals` raise `Terminated` (main thread only)."""
    return _handlers(signals, _raise_terminated)


def shielded(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
    """Context manager: within the block, `signals` are ignored (cleanup after a first signal is not cut
    short by a second; main thread only)."""
    return _handlers(signals, signal.SIG_IGN)


def _owner_dead(holder: str) -> bool:
    """Whether the lock file's "PID on HOST, ..." names a process of this host that no longer exists."""
    parts = holder.split()
    if len(parts) < 3 or not parts[0].isdigit() or parts[1] != "on" or parts[2].rstrip(",") != socket.gethostname():
        return False  # unknown format or another host: cannot tell, so not dead
    try:
        os.kill(int(parts[0]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class RunLocked(Exception):
    """Another runtime (or a process it started, still alive) holds the run's lock."""


class RunLock:
    """Exclusive `flock` on `path` for the life of a local run (see the module docstring).

    `fd` is the descriptor children inherit through `subprocess.Popen(pass_fds=...)`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, run: str, wait_for_orphans: float = 0.0) -> None:
        """Take the lock and write "PID on HOST, since START" into the file (the kernel releases an
        flock when its last holder dies, so no heartbeat is needed to tell a live owner from a dead one).

        When the lock is held but the runtime that took it (the pid in the file, on this host) is dead,
        what holds it are its orphaned children, which stop on their own once they see their parent
        gone (`asyncmtl_trainer.parent_watch`): wait up to `wait_for_orphans` seconds for them before refusing.

        Raises:
            RunLocked: the lock is held (by a live runtime, or by orphans past the wait); the message
                names the run and the holder's pid.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_for_orphans
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
                orphaned = _owner_dead(holder)
                if orphaned and time.monotonic() < deadline:
                    time.sleep(0.2)  # its children are stopping: they watch their parent
                    continue
                os.close(fd)
                who = (f"the runtime (pid {holder}) is gone, but a trainer or inference process it started still "
                       f"holds it" if orphaned else
                       f"`asyncmtl run` (pid {holder}) or a trainer or inference process it started is still running")
                raise RunLocked(f"run {run} is in use: {who} ({self.path}; `fuser {self.path}` lists the "
                                f"holders). Stop it (Ctrl-C, or kill the pid), then resume with --resume.") from None
        os.ftruncate(fd, 0)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}, since {started}\n".encode(), 0)
        os.set_inheritable(fd, True)
        self.fd = fd

    def release(self) -> None:
        """Close this process's descriptor (the lock is freed once no child holds it either)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
