"""The end of a run: the final report and the model for serving.

`final_report` scores the final model on every task's validation and test splits next to each task's
best checkpoint (paper Table 3's Final and Best rows); `export_model` writes the model in the
serving layout (`asyncmtl_trainer.model.save_multitask_model`) to the run's storage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch

from asyncmtl.artifacts import MODEL, CheckpointScore, FinalReport, TaskFinal, model_file
from asyncmtl.lifecycle import TaskPhase
from asyncmtl.spec import RunSpec, TaskSpec
from asyncmtl.storage import RunStorage
from asyncmtl_trainer.model import MultiTaskModel, save_multitask_model


def final_report(run: str, step: int, stopped: bool, generation: int, phases: Mapping[str, TaskPhase],
                 tasks: Mapping[str, TaskSpec], best: Mapping[str, CheckpointScore],
                 validation: Callable[[str], dict[str, float]],
                 test: Callable[[str], dict[str, float] | None]) -> FinalReport:
    """The run's `FinalReport`.

    Args:
        step: the final step (steps). stopped: a `stop` signal ended training (else `maxSteps`).
        generation: the last control generation applied. phases: task -> its phase at the end.
        best: task -> scores of its best checkpoint. validation, test: task -> the final model's metrics
            (0-100) on that split (test: None when the task has no test split).
    """
    report = FinalReport(run=run, step=step, stopped="stop" if stopped else "maxSteps", control_generation=generation)
    for name, t in tasks.items():
        report.tasks[name] = TaskFinal(type=t.type.value, metric=t.metric.value, mode=phases[name],
                                       final_validation=validation(name), best_checkpoint=best.get(name),
                                       final_test=test(name))
    return report


def export_model(storage: RunStorage, model: MultiTaskModel, tokenizer, spec: RunSpec, staging: Path,
                 weights: dict[str, torch.Tensor] | None = None) -> None:
    """Save the final model for serving into the run's `model/` (directly into a local store, else via
    `staging` and an upload per file). `weights`: the model's full state by name when `model` itself is
    sharded (FSDP; `sharding.StateIO.model_state`), else None.

    Raises:
        StorageFault: a write or upload failed.
    """
    target = storage.local_path(MODEL)
    save_multitask_model(model, tokenizer, spec, target or staging, weights)
    if target is None:
        for p in staging.rglob("*"):
            if p.is_file():
                storage.put_file(model_file(str(p.relative_to(staging))), p)
