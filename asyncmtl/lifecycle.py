"""A task's lifecycle (paper Sec. 3): one vocabulary for the decision core, the trainer, the metrics,
the history records and the dashboard.

- Pending: not started yet (sequential setting); the trainer skips it.
- Training: trained on its true labels (Eq. 1); its convergence is watched.
- Converged: convergence declared; the rewind signal is out (the core's view until inference starts).
- AwaitingSoftLabels: waiting for its soft labels (inference from its best checkpoint is running); the
  trainer gives it no loss meanwhile (BAM's tasks start here, waiting for the teacher's soft labels).
  Not "distilling": in the KD literature that is the student's training, which is KD below.
- KD: trained with the KD loss against its soft labels (Eq. 2).
- Frozen: soft labels could not be made (the Degraded condition says why); the task gets no loss.

The trainer exports its view as `asyncmtl_task_mode{mode=<phase>}` and writes it in every validation
record. Trainers before this module used their own words (inactive, supervised, pending, kd, frozen), and
AwaitingSoftLabels was called Distilling before v1alpha1's renames; `TaskPhase.of` reads them, so old
histories and status records still report.
"""
from __future__ import annotations

from enum import StrEnum


class TaskPhase(StrEnum):
    PENDING = "Pending"
    TRAINING = "Training"
    CONVERGED = "Converged"
    AWAITING_SOFT_LABELS = "AwaitingSoftLabels"
    KD = "KD"
    FROZEN = "Frozen"

    @classmethod
    def of(cls, value: str) -> "TaskPhase":
        """The phase named `value`, or written in a trainer's former words.

        Raises:
            ValueError: neither.
        """
        return cls(_FORMER.get(value, value))


# former words: the trainer's own before this module, and Distilling (renamed AwaitingSoftLabels in v1alpha1)
_FORMER = {"inactive": "Pending", "supervised": "Training", "pending": "AwaitingSoftLabels", "kd": "KD",
           "frozen": "Frozen", "Distilling": "AwaitingSoftLabels"}

# the phases a trainer can be in (Converged is the core's until the inference starts: the trainer drops the
# task's loss at once, as in AwaitingSoftLabels)
TRAINER_PHASES = (TaskPhase.PENDING, TaskPhase.TRAINING, TaskPhase.AWAITING_SOFT_LABELS, TaskPhase.KD,
                  TaskPhase.FROZEN)
# phases in which the task's loss is part of the summed loss (Eq. 3): its labels or its soft labels
LEARNING = (TaskPhase.TRAINING, TaskPhase.KD)
