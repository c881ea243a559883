"""The trainer's control protocol as one pure function: control signals -> task phases and effects.

A control generation (asyncmtl.control) is a group of signals decided together. `apply_generation`
gives, for the tasks' current control state and one generation's signals, the tasks' next state
and what the trainer must do about it (rewind, load soft labels, write history events, stop). It
does no I/O, so the live trainer (one generation as it arrives) and a resumed trainer (replaying
every generation its checkpoint had applied, `replay`) derive the same phases from the same signals.

Signals (paper Sec. 3): `converged` rewinds the model to the task's best checkpoint and stops its
supervised loss (AwaitingSoftLabels until its soft labels exist; under Continual MTL the task keeps its
labels and is only marked decided); `softLabelsReady` starts its KD loss (Eq. 2); `skipDistillation`
freezes it; `startTask` starts a sequential task; `stop` ends training.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from asyncmtl.control import Signal
from asyncmtl.lifecycle import TaskPhase


@dataclass(frozen=True)
class TaskControl:
    """What the control protocol decides about one task.

    Attributes:
        phase: its lifecycle phase (asyncmtl.lifecycle.TRAINER_PHASES).
        pinned_step: the checkpoint step its soft labels are being made from (kept by retention), or None.
        decided: a convergence decision on it was received (Continual MTL keeps training it).
    """

    phase: TaskPhase
    pinned_step: int | None = None
    decided: bool = False


@dataclass(frozen=True)
class ControlEffects:
    """The outcome of one generation.

    Attributes:
        tasks: every task's control state after the generation.
        rewind_to: checkpoint step to rewind the whole model to (the first converged signal's), or None.
        converged: (task, best step) in decision order: each gets a `converged` history event at its best step.
        continual: tasks whose convergence was decided but that keep their labels (Continual MTL).
        actions: after any rewind, in signal order: `TaskAction`s for startTask (start the task),
            softLabelsReady (load the manifest at `detail`: its KD loss starts) and skipDistillation
            (frozen; `detail` says why).
        stop: the run ends after this generation.
    """

    tasks: dict[str, TaskControl]
    rewind_to: int | None = None
    converged: list[tuple[str, int]] = field(default_factory=list)
    continual: list[str] = field(default_factory=list)
    actions: list["TaskAction"] = field(default_factory=list)
    stop: bool = False

    @property
    def soft_labels(self) -> dict[str, str]:
        """task -> soft-label manifest URI, for the softLabelsReady actions."""
        return {a.task: a.detail for a in self.actions if a.kind == "softLabelsReady"}


@dataclass(frozen=True)
class TaskAction:
    """One task-level action of a generation: kind is the signal's (startTask, softLabelsReady,
    skipDistillation); detail the manifest URI or the reason."""

    kind: str
    task: str
    detail: str = ""


def apply_generation(tasks: Mapping[str, TaskControl], signals: Iterable[Signal], *,
                     distills_on_convergence: bool) -> ControlEffects:
    """The tasks' control state after one generation's signals (applied together, in order).

    Args:
        tasks: task -> current `TaskControl` (not modified).
        signals: the generation's signals.
        distills_on_convergence: the method distils a converged task (asyncMTL, BAM); False for
            Continual MTL, where a converged task keeps training on its labels.
    Returns:
        `ControlEffects`.
    Raises:
        KeyError: a signal names a task that is not in `tasks`.
    """
    out = dict(tasks)
    signals = list(signals)
    converged = [s for s in signals if s.kind == "converged"]
    distilled = converged if distills_on_convergence else []  # Continual MTL: marked decided, nothing rewinds
    for s in converged:
        out[s.task] = (replace(out[s.task], phase=TaskPhase.AWAITING_SOFT_LABELS, pinned_step=s.best_step)
                       if distills_on_convergence else replace(out[s.task], decided=True))
    actions: list[TaskAction] = []
    for s in signals:
        if s.kind == "startTask":
            out[s.task] = replace(out[s.task], phase=TaskPhase.TRAINING)
            actions.append(TaskAction(s.kind, s.task))
        elif s.kind == "softLabelsReady":
            out[s.task] = replace(out[s.task], phase=TaskPhase.KD, pinned_step=None)
            actions.append(TaskAction(s.kind, s.task, s.uri))
        elif s.kind == "skipDistillation":
            out[s.task] = replace(out[s.task], phase=TaskPhase.FROZEN, pinned_step=None)
            actions.append(TaskAction(s.kind, s.task, s.reason))
    return ControlEffects(tasks=out, rewind_to=distilled[0].rewind_to if distilled else None,
                          converged=[(s.task, s.best_step) for s in converged],
                          continual=[] if distilled else [s.task for s in converged], actions=actions,
                          stop=any(s.kind == "stop" for s in signals))


def replay(tasks: Mapping[str, TaskControl], signals: Iterable[Signal], through: int, *,
           distills_on_convergence: bool) -> ControlEffects:
    """Every generation up to `through` applied in order: the control state a checkpoint that had applied
    generation `through` was trained under (its rewinds are already in its weights).

    Returns:
        `ControlEffects` whose `tasks` is the final state, `actions` one softLabelsReady per task now in
        KD (its latest manifest) and `stop` whether a stop was among them.
    """
    state = dict(tasks)
    soft: dict[str, str] = {}
    stop = False
    signals = [s for s in signals if s.generation <= through]
    for gen in sorted({s.generation for s in signals}):
        fx = apply_generation(state, [s for s in signals if s.generation == gen],
                              distills_on_convergence=distills_on_convergence)
        state = fx.tasks
        soft.update(fx.soft_labels)
        stop = stop or fx.stop
    actions = [TaskAction("softLabelsReady", t, uri) for t, uri in soft.items() if state[t].phase == TaskPhase.KD]
    return ControlEffects(tasks=state, actions=actions, stop=stop)
