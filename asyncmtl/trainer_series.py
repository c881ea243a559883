"""The trainer's Prometheus series (asyncmtl/metric_names.py) as the decision core's `TrainerObservation`:
one builder, used by the local runtime (the trainer's /metrics, scraped directly) and by the operator
(the same series through Prometheus' HTTP API). Torch-free and pure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from asyncmtl import metric_names as M
from asyncmtl.core.convergence import TaskObservation, ValidationPoint
from asyncmtl.core.observations import TrainerObservation

# what the decision core reads: per task (labelled `task`) and per trainer
TASK_SERIES = (f"{M.VALIDATIONS}_total", M.VALIDATION_LAST_STEP, M.VALIDATION_LAST_VALUE, M.VALIDATION_BEST_STEP,
               M.VALIDATION_BEST_VALUE, M.TRAIN_SIZE, M.TASK_CHANCE, M.VALIDATION_LAST_EPOCHS,
               M.VALIDATION_SIGNIFICANT_STREAK)
TRAINER_SERIES = (M.GLOBAL_STEP, M.CONTROL_GENERATION, M.CONTROL_APPLIED_STEP, M.VALIDATION_COMPLETE_STEP)


@dataclass(frozen=True)
class Sample:
    """One sample of one series: its metric name, its `task` label (None for trainer-wide series) and value."""

    name: str
    task: str | None
    value: float


def _num(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else v


def _int(v: float | None) -> int | None:
    v = _num(v)
    return None if v is None else int(v)


def trainer_observation(samples: Iterable[Sample],
                        points: dict[str, list[ValidationPoint]] | None = None) -> TrainerObservation:
    """The decision core's view of one trainer from its current samples (one per series; NaN: unset).

    Args:
        samples: the run's samples of `TASK_SERIES` and `TRAINER_SERIES` (others are ignored).
        points: per task, validation points recovered from a time series since the last poll (the
            operator's Prometheus range query); none when only the latest values are known.

    A task appears once its validations counter exists (the trainer creates it for every task).
    """
    per_task: dict[str, dict[str, float]] = {}
    trainer: dict[str, float] = {}
    for s in samples:
        if s.task is not None and s.name in TASK_SERIES:
            per_task.setdefault(s.task, {})[s.name] = s.value
        elif s.task is None and s.name in TRAINER_SERIES:
            trainer[s.name] = s.value
    tasks = {}
    for task, d in per_task.items():
        if f"{M.VALIDATIONS}_total" not in d:
            continue
        tasks[task] = TaskObservation(
            validations=int(d[f"{M.VALIDATIONS}_total"]),
            last_step=_int(d.get(M.VALIDATION_LAST_STEP)), last_value=_num(d.get(M.VALIDATION_LAST_VALUE)),
            best_step=_int(d.get(M.VALIDATION_BEST_STEP)), best_value=_num(d.get(M.VALIDATION_BEST_VALUE)),
            points=(points or {}).get(task, []), chance=_num(d.get(M.TASK_CHANCE)),
            last_epochs=_num(d.get(M.VALIDATION_LAST_EPOCHS)), last_streak=_int(d.get(M.VALIDATION_SIGNIFICANT_STREAK)))
    return TrainerObservation(
        global_step=_int(trainer.get(M.GLOBAL_STEP)) or 0,
        applied_generation=_int(trainer.get(M.CONTROL_GENERATION)) or 0,
        applied_at_step=_int(trainer.get(M.CONTROL_APPLIED_STEP)),
        tasks=tasks,
        validation_complete_step=_int(trainer.get(M.VALIDATION_COMPLETE_STEP)),
        train_sizes={t: int(d[M.TRAIN_SIZE]) for t, d in per_task.items() if d.get(M.TRAIN_SIZE)},
    )
