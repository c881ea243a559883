"""Read the trainer's /metrics over HTTP into `TrainerObservation` (prometheus-client's parser)."""
from __future__ import annotations

import math
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from asyncmtl import metric_names as M
from asyncmtl.core.convergence import TaskObservation
from asyncmtl.core.observations import TrainerObservation


def _num(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else v


def parse_trainer_metrics(text: str, run: str) -> TrainerObservation:
    """Parse the Prometheus text exposition of one trainer (samples of other runs are ignored)."""
    per_task: dict[str, dict[str, float]] = {}
    trainer: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("run") != run:
                continue
            task = s.labels.get("task")
            if task is not None and s.name in (f"{M.VALIDATIONS}_total", M.VALIDATION_LAST_STEP, M.VALIDATION_LAST_VALUE,
                                               M.VALIDATION_BEST_STEP, M.VALIDATION_BEST_VALUE, M.TRAIN_SIZE,
                                               M.TASK_CHANCE):
                per_task.setdefault(task, {})[s.name] = s.value
            elif task is None and s.name in (M.GLOBAL_STEP, M.CONTROL_GENERATION, M.CONTROL_APPLIED_STEP,
                                             M.VALIDATION_COMPLETE_STEP):
                trainer[s.name] = s.value
    tasks = {}
    sizes = {t: int(d[M.TRAIN_SIZE]) for t, d in per_task.items() if d.get(M.TRAIN_SIZE)}
    for task, d in per_task.items():
        if f"{M.VALIDATIONS}_total" not in d:
            continue
        last_step, best_step = _num(d.get(M.VALIDATION_LAST_STEP)), _num(d.get(M.VALIDATION_BEST_STEP))
        tasks[task] = TaskObservation(
            validations=int(d.get(f"{M.VALIDATIONS}_total", 0)),
            last_step=int(last_step) if last_step is not None else None,
            last_value=_num(d.get(M.VALIDATION_LAST_VALUE)),
            best_step=int(best_step) if best_step is not None else None,
            best_value=_num(d.get(M.VALIDATION_BEST_VALUE)),
            chance=_num(d.get(M.TASK_CHANCE)),
        )
    applied_step = _num(trainer.get(M.CONTROL_APPLIED_STEP))
    complete = _num(trainer.get(M.VALIDATION_COMPLETE_STEP))
    return TrainerObservation(
        global_step=int(trainer.get(M.GLOBAL_STEP, 0) or 0),
        applied_generation=int(trainer.get(M.CONTROL_GENERATION, 0) or 0),
        applied_at_step=int(applied_step) if applied_step is not None else None,
        tasks=tasks,
        validation_complete_step=int(complete) if complete is not None else None,
        train_sizes=sizes,
    )


def scrape(url: str, run: str, timeout: float = 5.0) -> TrainerObservation:
    """GET `url` (the trainer's /metrics) and parse it. Raises OSError when unreachable."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return parse_trainer_metrics(r.read().decode(), run)
