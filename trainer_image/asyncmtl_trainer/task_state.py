"""What the trainer tracks per task: its control state, best-so-far and validation history.

A checkpoint stores these (`CheckpointState.trackers`, `.validations`, `.history`) and a rewind or resume
restores them, so that the convergence rule reads the same curve it would have read without the rewind.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from asyncmtl.core.convergence import BestTracker, ConvergenceRule, Track, has_converged
from asyncmtl.lifecycle import LEARNING, TaskPhase
from asyncmtl_trainer.checkpoint import CheckpointState
from asyncmtl_trainer.control_protocol import TaskControl


class TaskState:
    """One task's state in the trainer.

    Attributes:
        mode: its phase (one of asyncmtl.lifecycle.TRAINER_PHASES); with `pinned_step` and `decided` it is
            the task's `TaskControl`, changed only through `asyncmtl_trainer.control_protocol`.
        best: best-so-far (the same rule as the decision core's). prev_best_step: the best before it (steps).
        last_step, last_value: the latest validation (steps, metric 0-100).
        examples: training examples drawn for the task so far along the run's timeline (every phase it trains
            in; a rewind restores the checkpoint's count). last_epochs: `examples` / its training-split size at
            the latest validation (the epoch floor `minEpochs` reads it).
        best_rows: the best checkpoint's per-example validation rows (`significance.example_rows`), kept only
            under the significance rule. streak: consecutive validations up to the latest significantly below the
            best (None: the rule is off). last_lower: the latest paired-bootstrap lower bound (metric points).
        history: [[step, value], ...] of its validations along the run's timeline.
        validations: validation steps scored. pinned_step: the checkpoint its soft labels are made from.
        decided: a decision barrier on its convergence was answered (continual MTL keeps training it).
    """

    def __init__(self, mode: TaskPhase = TaskPhase.TRAINING) -> None:
        self.mode = mode
        self.best = BestTracker()
        self.prev_best_step: int | None = None
        self.last_step: int | None = None
        self.last_value: float | None = None
        self.examples = 0
        self.last_epochs: float | None = None
        self.best_rows: np.ndarray | None = None
        self.streak: int | None = None
        self.last_lower: float | None = None
        self.history: list[list[float]] = []
        self.validations = 0
        self.pinned_step: int | None = None
        self.decided = False

    @property
    def control(self) -> TaskControl:
        return TaskControl(self.mode, self.pinned_step, self.decided)

    @control.setter
    def control(self, c: TaskControl) -> None:
        self.mode, self.pinned_step, self.decided = c.phase, c.pinned_step, c.decided

    def epochs(self, train_size: int) -> float:
        """Epochs of its training data drawn so far: `examples` / `train_size` (examples; > 0)."""
        return self.examples / train_size

    def record(self, step: int, value: float, rule: ConvergenceRule, epochs: float | None = None) -> None:
        """A validation result at `step` (metric 0-100) after `epochs` epochs of the task's training data:
        best-so-far under `rule`, last point, history."""
        old_best = self.best.best_step
        if self.best.update(step, value, rule) and old_best is not None:
            self.prev_best_step = old_best
        self.last_step, self.last_value, self.last_epochs = step, value, epochs
        self.history.append([step, value])
        self.validations += 1

    def compare(self, rows: np.ndarray, is_best: bool, lower_bound: Callable[[np.ndarray, np.ndarray], float]) -> None:
        """The significance rule after a validation (`record`) whose per-example `rows` made it the best
        (`is_best`) or not: a new best keeps its rows and resets the streak; otherwise the streak grows when
        `lower_bound(best_rows, rows)` (metric points) is above 0 and resets when it is not. Without the best's
        rows (a checkpoint written before they were kept) nothing can be significant: the streak resets."""
        self.last_lower = None
        if is_best:
            self.best_rows, self.streak = rows, 0
            return
        if self.best_rows is None:
            self.streak = 0
            return
        self.last_lower = lower_bound(self.best_rows, rows)
        self.streak = (self.streak or 0) + 1 if self.last_lower > 0 else 0

    def track(self, chance: float | None) -> Track:
        """The convergence rule's view of this task (`asyncmtl.core.convergence.has_converged`)."""
        return Track(best_step=self.best.best_step, best_value=self.best.best_value, last_step=self.last_step,
                     last_value=self.last_value, epochs=self.last_epochs, streak=self.streak, chance=chance)

    def to_json(self) -> dict[str, Any]:
        return {"bestStep": self.best.best_step, "bestValue": self.best.best_value, "prevBestStep": self.prev_best_step,
                "lastStep": self.last_step, "lastValue": self.last_value, "smoothed": self.best.smoothed,
                "examples": self.examples, "lastEpochs": self.last_epochs, "streak": self.streak,
                "bestRows": None if self.best_rows is None else {"dtype": str(self.best_rows.dtype),
                                                                 "values": self.best_rows.tolist()}}

    def restore(self, d: dict[str, Any], history: list[list[float]]) -> None:
        """Trackers and history as a checkpoint stored them (`to_json`)."""
        self.best = BestTracker(best_step=d.get("bestStep"), best_value=d.get("bestValue"), smoothed=d.get("smoothed"))
        self.prev_best_step = d.get("prevBestStep")
        self.last_step, self.last_value = d.get("lastStep"), d.get("lastValue")
        # checkpoints written before the count: 0 and unknown (the epoch floor is then unchecked until the next
        # validation, and counts from the resume on)
        self.examples, self.last_epochs = int(d.get("examples") or 0), d.get("lastEpochs")
        rows = d.get("bestRows")
        self.best_rows = None if rows is None else np.asarray(rows["values"], dtype=rows["dtype"])
        self.streak, self.last_lower = d.get("streak"), None
        self.history = [list(p) for p in history]


def checkpoint_state(step: int, applied_generation: int, rewinds: int, states: Mapping[str, TaskState],
                     weighting: dict[str, Any]) -> CheckpointState:
    """The JSON part of the checkpoint at `step` (steps; `weighting`: the weighting method's state dict)."""
    return CheckpointState(step=step, applied_generation=applied_generation,
                           trackers={n: s.to_json() for n, s in states.items()},
                           validations={n: s.validations for n, s in states.items()},
                           history={n: s.history for n, s in states.items()}, weighting=weighting, rewinds=rewinds)


def restore_states(states: Mapping[str, TaskState], state: CheckpointState, *, validations: bool) -> None:
    """Every task's trackers and history from `state` (and its validation count, on resume: a rewind keeps
    counting the validations it discarded, as the metrics do)."""
    for name, st in states.items():
        st.restore(state.trackers.get(name, {}), state.history.get(name, []))
        if validations:
            st.validations = state.validations.get(name, 0)


def active_tasks(states: Mapping[str, TaskState]) -> list[str]:
    """Tasks the next batch draws from: those in Training or KD, in spec order."""
    return [n for n, s in states.items() if s.mode in LEARNING]


def kd_sampling_scale(states: Mapping[str, TaskState], kd_sampling_weight: float) -> dict[str, float]:
    """Sampling-weight multipliers (`distillation.kdSamplingWeight`) of the tasks in KD; {} when it is 1."""
    return {n: kd_sampling_weight for n, s in states.items() if s.mode == TaskPhase.KD} if kd_sampling_weight != 1.0 else {}


def paused(states: Mapping[str, TaskState], while_pending: str) -> bool:
    """Training holds: a task awaits its soft labels under `distillation.whilePending: Pause`, or no task is
    left to train."""
    if while_pending == "Pause" and any(s.mode == TaskPhase.AWAITING_SOFT_LABELS for s in states.values()):
        return True
    return not active_tasks(states)


def due_for_decision(states: Mapping[str, TaskState], chance: Mapping[str, float],
                     rule_of: Callable[[str], ConvergenceRule]) -> list[str]:
    """Tasks in Training, not yet decided, that meet their convergence rule at their last validation (paper
    Sec. 3; the same `has_converged` the decision core applies to the same best and last steps).

    Under `distillation.whilePending: Pause` (the paper's setting) the trainer holds at such a step until
    the decision's control generation arrives, so a signal always takes effect at the step it was decided
    on, never at a later step that depends on how fast the runtime polled.
    """
    return [name for name, st in states.items()
            if st.mode == TaskPhase.TRAINING and not st.decided and st.last_step is not None
            and has_converged(st.track(chance.get(name)), rule_of(name))]
