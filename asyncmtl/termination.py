"""How a trainer or inference process says why it stopped: its exit status and a one-line
termination message.

Kubernetes' convention (Pod `terminationMessagePath`, default `/dev/termination-log`, at most 4096
bytes, shown in `containerStatuses[].state.terminated.message`): the process writes one line on its
way out. Locally the runtime passes `--termination-log <workdir>/logs/<process>.termination-log` and
reads it back instead of a log tail.

Exit statuses: 0 done, 1 an unexpected error (retried: a Job's backoffLimit, the local runtime's
restarts), `EXIT_BAD_INPUT` (2) a bad spec or data and `EXIT_STORAGE_FAULT` (3) a storage write
that failed (full, read-only): no retry fixes those, so the run stops with the message.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_STORAGE_FAULT = 3
NOT_RETRIED = frozenset({EXIT_BAD_INPUT, EXIT_STORAGE_FAULT})
KUBERNETES_PATH = Path("/dev/termination-log")
MAX_BYTES = 4096  # the kubelet's limit


def default_path() -> Path | None:
    """`/dev/termination-log` when it exists (a container), else None."""
    return KUBERNETES_PATH if KUBERNETES_PATH.exists() else None


def write_message(path: Path | None, message: str) -> None:
    """Write `message` (first line, at most 4096 bytes) to `path`; never raises (the process is
    already failing, and the disk may be the reason)."""
    if path is None:
        return
    line = message.strip().splitlines()[0] if message.strip() else ""
    try:
        path.write_bytes(line.encode()[:MAX_BYTES])
    except OSError:
        pass


EXIT_CODE_FILE = "trainer.exit-code"  # in the trainer's workdir


def write_exit_code(workdir: Path, code: int) -> None:
    """Record a rank's exit `code` in `workdir` for its launcher (asyncmtl_trainer.launch): torchrun reports
    any failed worker as exit 1, and the launcher's parent must still tell bad input (2) and a storage fault
    (3) from a crash. Never raises."""
    try:
        (workdir / EXIT_CODE_FILE).write_text(str(code))
    except OSError:
        pass


def clear_exit_code(workdir: Path) -> None:
    """Forget a previous launch's recorded status. Never raises."""
    try:
        (workdir / EXIT_CODE_FILE).unlink(missing_ok=True)
    except OSError:
        pass


def recorded_exit_code(workdir: Path, default: int) -> int:
    """The status a rank recorded with `write_exit_code`, else `default`."""
    try:
        return int((workdir / EXIT_CODE_FILE).read_text().strip())
    except (OSError, ValueError):
        return default


def add_argument(parser: argparse.ArgumentParser, who: str) -> None:
    """`--termination-log PATH` for an entry point (`who`: "the trainer", "the shard")."""
    parser.add_argument("--termination-log", type=Path, default=None,
                        help=f"Where to write one line saying why {who} stopped (default: /dev/termination-log "
                             f"when it exists, as in a Kubernetes container).")


def exit_status(exc: Exception, path: Path | None, log: logging.Logger, what: str,
                bad_input: tuple[type[Exception], ...] = ()) -> int:
    """Log why an entry point is stopping on `exc`, write it as the termination message at `path`,
    and return the exit status: `EXIT_BAD_INPUT` for `bad_input` errors, `EXIT_STORAGE_FAULT` for a
    StorageFault, 1 (with the traceback in the log) for anything else, said as "`what` failed: ..."."""
    from asyncmtl.storage import StorageFault

    if isinstance(exc, bad_input) or isinstance(exc, StorageFault):
        log.error("%s", exc)
        write_message(path, str(exc))
        return EXIT_BAD_INPUT if isinstance(exc, bad_input) else EXIT_STORAGE_FAULT
    log.error("%s failed", what, exc_info=exc)
    write_message(path, f"{what} failed: {type(exc).__name__}: {exc}")
    return 1


def read_message(path: Path) -> str | None:
    """The termination message at `path`, or None if there is none."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return text or None
