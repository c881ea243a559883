"""The trainer's side of the control channel: reading the control file and the decision barrier.

The runtime (the local runtime or the operator) writes the control file (`asyncmtl.control`); the
trainer polls it before every step. Under torchrun rank 0 reads it and broadcasts what it read, so every
rank applies the same control generations at the same step (what the generations *mean* is the pure
`control_protocol`; this module only moves them).

The decision barrier: at a validation step where a task meets the convergence rule, the trainer holds
(under `distillation.whilePending: Pause`) until the runtime's next control generation arrives, so a
signal always takes effect at the step it was decided on. It is released by any new generation, or
after `metrics.ackTimeoutSeconds` on rank 0's clock (a runtime that disagrees or is gone).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from asyncmtl.control import ControlDocument, Signal, read_control_file
from asyncmtl_trainer.distributed import Ranks


@dataclass(frozen=True)
class ControlTick:
    """What rank 0 broadcasts before every step, so that every rank does the same thing at the same step.

    Attributes:
        generations: (generation, its signals) read from the control file since the last tick, in order.
        release_on_timeout: the decision barrier has waited past `metrics.ackTimeoutSeconds` (rank 0's clock).
    """

    generations: list[tuple[int, list[Signal]]]
    release_on_timeout: bool = False


@dataclass(frozen=True)
class DecisionBarrier:
    """A hold raised at a validation step.

    Attributes:
        generation: the applied control generation when it was raised (any later one releases it).
        since: `time.monotonic()` seconds when it was raised. tasks: the tasks that met the rule.
    """

    generation: int
    since: float
    tasks: list[str]


class ControlClient:
    """Polls the control file (rank 0, broadcast to every rank) and keeps the decision barrier.

    Args:
        path: the control file (a ConfigMap key mounted as a file on a cluster).
        ranks: the process group; only the coordinator reads the file.
        ack_timeout_seconds: how long the barrier waits for a decision (`metrics.ackTimeoutSeconds`).
    Attributes:
        applied_generation: the last control generation the trainer applied (0: none).
        barrier: the decision barrier while it holds, else None.
    """

    def __init__(self, path: Path, ranks: Ranks, ack_timeout_seconds: float) -> None:
        self.path = path
        self.ranks = ranks
        self.ack_timeout_seconds = ack_timeout_seconds
        self.applied_generation = 0
        self.barrier: DecisionBarrier | None = None
        self._signature: tuple[int, int, int] | None = None

    def _read_changed(self) -> ControlDocument | None:
        """The control document if the file changed since the last read (mtime, size, inode), else None.

        Raises:
            pydantic.ValidationError: the file exists but is not a valid control document.
        """
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return None
        doc = read_control_file(self.path)
        self._signature = signature
        return doc

    def _tick(self) -> ControlTick:
        """Rank 0: the generations issued since the last applied one, and whether the barrier timed out."""
        gens: list[tuple[int, list[Signal]]] = []
        doc = self._read_changed()
        if doc is not None and doc.generation > self.applied_generation:
            new = doc.since(self.applied_generation)
            gens = [(g, [s for s in new if s.generation == g]) for g in sorted({s.generation for s in new})]
        timed_out = (self.barrier is not None and not gens
                     and time.monotonic() - self.barrier.since > self.ack_timeout_seconds)
        return ControlTick(gens, timed_out)

    def poll(self) -> ControlTick:
        """The tick of this step, the same on every rank (rank 0 reads the file and broadcasts; cheap when the
        file is unchanged). The caller applies its generations in order and sets `applied_generation`."""
        return self.ranks.broadcast(self._tick() if self.ranks.is_coordinator else None)

    def document(self) -> ControlDocument | None:
        """The whole control document (rank 0 reads, every rank gets it), or None when there is no file yet
        (resume replays it)."""
        return self.ranks.broadcast(read_control_file(self.path) if self.ranks.is_coordinator else None)

    def hold(self, tasks: list[str]) -> None:
        """Raise the decision barrier for `tasks` (they met the convergence rule at this validation step)."""
        self.barrier = DecisionBarrier(self.applied_generation, time.monotonic(), tasks)

    def released(self, tick: ControlTick) -> tuple[list[str], bool] | None:
        """None while the barrier holds; once released, (its tasks, whether it timed out) and the barrier is
        gone. Released by a generation later than the one it was raised at, or by `tick.release_on_timeout`."""
        assert self.barrier is not None
        decided = self.applied_generation > self.barrier.generation
        if not decided and not tick.release_on_timeout:
            return None
        tasks, self.barrier = self.barrier.tasks, None
        return tasks, not decided
