"""A task's lifecycle (paper Sec. 3): one vocabulary for the decision core, the trainer, the metrics,
the history records and the dashboard.

- Pending: not started yet (sequential setting); the trainer skips it.
- Training: trained on its true labels (Eq. 1); its convergence is watched.
- Converged: convergence declared; the rewind signal is out (the core's view until inference starts).
- Distilling: soft-label inference from its best checkpoint is running; the trainer gives it no loss
  meanwhile (BAM's tasks start here, waiting for the teacher's soft labels).
- KD: trained with the KD loss against its soft labels (Eq. 2).
- Frozen: soft labels could not be made (the Degraded condition says why); the task gets no loss.

The trainer exports its view as `asyncmtl_task_mode{mode=<phase>}` and writes it in every validation
record. Trainers before this module used their own words (inactive, supervised, pending, kd, frozen);
`TaskPhase.of` reads them, so old histories still report.
"""
from __future__ import annotations

from enum import StrEnum


class TaskPhase(StrEnum):
    PENDING = "Pending"
    TRAINING = "Training"
    CONVERGED = "Converged"
    DISTILLING = "Distilling"
    KD = "KD"
    FROZEN = "Frozen"

    @classmethod
    def of(cls, value: str) -> "TaskPhase":
        """The phase named `value`, or written in a trainer's former words.

        Raises:
            ValueError: neither.
        """
        return cls(_FORMER.get(value, value))


_FORMER = {"inactive": "Pending", "supervised": "Training", "pending": "Distilling", "kd": "KD", "frozen": "Frozen"}

# the phases a trainer can be in (Converged is the core's until the inference starts: the trainer drops the
# task's loss at once, as in Distilling)
TRAINER_PHASES = (TaskPhase.PENDING, TaskPhase.TRAINING, TaskPhase.DISTILLING, TaskPhase.KD, TaskPhase.FROZEN)
# phases in which the task's loss is part of the summed loss (Eq. 3): its labels or its soft labels
LEARNING = (TaskPhase.TRAINING, TaskPhase.KD)
