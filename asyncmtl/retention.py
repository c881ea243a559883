"""What a finished run keeps of its checkpoints (`spec.storage.keepCheckpoints`).

While a run trains, the trainer keeps every checkpoint a rewind, a teacher or a resume may still
need (asyncmtl_trainer.checkpoint.retained_steps). Once the run has Succeeded none of that can
happen again, and what stays is a choice:
- `best` (default): each task's best checkpoint (final.json's `bestCheckpoint`), weights only
  (`model.safetensors` and its state.json; the optimizer state is dropped): what a later BAM run
  distils from (`spec.teacherRun`) and what reproduces the report's "best checkpoint" column.
  The final model is exported separately under `model/`.
- `all`: everything the trainer left.
- `none`: no checkpoint (the final model, reports and soft labels stay).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from asyncmtl.artifacts import CHECKPOINT_STATE, CHECKPOINT_TRAINING, checkpoint_file, checkpoint_key, checkpoint_steps, teacher_steps
from asyncmtl.spec import KeepCheckpoints
from asyncmtl.storage import RunStorage


@dataclass
class Retained:
    """What `retain_after_run` did: checkpoint steps kept (weights only) and deleted."""

    kept: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)


def retain_after_run(storage: RunStorage, tasks: list[str], keep: KeepCheckpoints) -> Retained:
    """Prune a Succeeded run's checkpoints as `keep` says (see the module docstring).

    Raises:
        asyncmtl.storage.StorageError: reading or deleting failed.
    """
    result = Retained()
    if keep == "all":
        result.kept = checkpoint_steps(storage, complete=False)
        return result
    wanted = set(teacher_steps(storage, tasks).values()) if keep == "best" else set()
    for step in checkpoint_steps(storage, complete=False):
        folder = checkpoint_key(step)
        if step not in wanted or not storage.exists(checkpoint_file(step, CHECKPOINT_STATE)):
            storage.delete_prefix(folder)
            result.deleted.append(step)
            continue
        state = json.loads(storage.get_bytes(checkpoint_file(step, CHECKPOINT_STATE)))
        if CHECKPOINT_TRAINING in state.get("sha256", {}):
            state["sha256"].pop(CHECKPOINT_TRAINING)  # state.json first: a reader never expects a deleted file
            storage.put_bytes(checkpoint_file(step, CHECKPOINT_STATE), json.dumps(state).encode())
            storage.delete_prefix(checkpoint_file(step, CHECKPOINT_TRAINING))
        result.kept.append(step)
    return result
