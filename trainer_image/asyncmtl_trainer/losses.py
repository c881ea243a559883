"""Supervised (paper Eq. 1) and knowledge-distillation (Eq. 2) losses per task type.

logits: (rows, num_labels). Supervised targets: class ids (rows,) for binary/multiclass,
multi-hot (rows, num_labels) for multilabel, values in [0, 1] (rows,) for regression.
Soft labels are the teacher's raw outputs (logits; the value for regression), (rows, num_labels).

KD (Hinton et al. 2015): binary/multiclass use KL(softmax(teacher/T) || softmax(student/T)) * T²
(`F.kl_div(log_target=True, reduction="batchmean")`, equal to soft-target cross-entropy up to the
teacher's entropy); multilabel uses BCE-with-logits against sigmoid(teacher/T) (student/T), * T²;
regression uses MSE to the teacher's prediction. Regression losses are divided by `scale` (1 for
plain MSE; the training targets' variance for `training.regressionLoss: normalizedMse`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import torch
import torch.nn.functional as F

from asyncmtl.lifecycle import LEARNING, TaskPhase
from asyncmtl.spec import DistillationSpec, TaskType
from asyncmtl_trainer.distributed import Ranks

if TYPE_CHECKING:
    from asyncmtl_trainer.batching import Batch
    from asyncmtl_trainer.model import MultiTaskModel


def supervised_loss(task_type: TaskType, logits: torch.Tensor, target: torch.Tensor,
                    scale: float = 1.0) -> torch.Tensor:
    """Mean loss over rows: cross-entropy, BCE-with-logits (multilabel) or MSE / `scale` (regression)."""
    logits = logits.float()
    if task_type is TaskType.regression:
        return F.mse_loss(logits[:, 0], target.float()) / scale
    if task_type is TaskType.multilabel:
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target)


def kd_loss(task_type: TaskType, logits: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
            scale: float = 1.0) -> torch.Tensor:
    """Distillation loss of the student `logits` against the `teacher` outputs (same shape);
    regression: MSE / `scale`."""
    logits = logits.float()
    teacher = teacher.float()
    t = temperature
    if task_type is TaskType.regression:
        return F.mse_loss(logits[:, 0], teacher[:, 0]) / scale
    if task_type is TaskType.multilabel:
        return F.binary_cross_entropy_with_logits(logits / t, torch.sigmoid(teacher / t)) * (t * t)
    return F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                    log_target=True, reduction="batchmean") * (t * t)


def bam_loss(task_type: TaskType, logits: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor,
             p: float, temperature: float = 1.0, scale: float = 1.0) -> torch.Tensor:
    """BAM's teacher-annealed loss (Clark et al., "BAM! Born-Again Multi-Task Networks", ACL 2019, Sec. 3.2).

    The target mixes the gold label and the teacher: p·onehot(y) + (1−p)·softmax(teacher/T) for
    binary/multiclass (soft-target cross-entropy); p·y + (1−p)·sigmoid(teacher/T) for multilabel
    (BCE-with-logits); p·y + (1−p)·teacher for regression (MSE). p is the fraction of training
    done (0 -> 1), so training moves from pure distillation to pure supervision.
    """
    logits = logits.float()
    teacher = teacher.float()
    if task_type is TaskType.regression:
        return F.mse_loss(logits[:, 0], p * target.float() + (1 - p) * teacher[:, 0]) / scale
    if task_type is TaskType.multilabel:
        return F.binary_cross_entropy_with_logits(logits, p * target.float() + (1 - p) * torch.sigmoid(teacher / temperature))
    gold = F.one_hot(target, logits.shape[-1]).float()
    mixed = p * gold + (1 - p) * torch.softmax(teacher / temperature, dim=-1)
    return -(mixed * F.log_softmax(logits, dim=-1)).sum(-1).mean()


@dataclass
class TaskLosses:
    """The per-task losses of a mixed batch (paper Eq. 3 sums them; the weighting method combines them):
    supervised (Eq. 1) for a task in Training, KD (Eq. 2; BAM's annealed mix under `method: bam`) for a
    task in KD; tasks in other phases contribute nothing.

    Under torchrun a batch is this rank's slice (`Batch.global_rows`, `Batch.world`): each task's mean over its
    local rows is rescaled by world · local rows / global rows, so that DDP's average over ranks is the task's
    mean over the whole batch (the single-process loss of the same global batch).

    Attributes:
        types: task -> its TaskType. distillation: `spec.distillation` (temperature, kdWeight).
        anneals: BAM's teacher annealing (`spec.method: bam`). max_steps: `training.maxSteps` (the annealing's end).
        loss_scale: regression task -> divisor of its loss (normalizedMse).
        soft: task -> (train examples, num_labels) soft labels on the training device, once loaded.
    """

    types: dict[str, TaskType]
    distillation: DistillationSpec
    anneals: bool
    max_steps: int
    loss_scale: dict[str, float] = field(default_factory=dict)
    soft: dict[str, torch.Tensor] = field(default_factory=dict)

    def __call__(self, batch: "Batch", modes: Mapping[str, TaskPhase], step: int, model: "MultiTaskModel",
                 pooled: torch.Tensor, logits: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Losses of `batch` (on the training device) with the tasks' `modes` at optimizer step `step`.

        Args:
            pooled: (batch, hidden) encoder output; logits: task -> (rows, num_labels) when the forward pass
                computed them (else `model.head` runs here).
        Returns:
            task -> 0-dim loss for each task in Training or KD with rows in the batch.
        """
        losses: dict[str, torch.Tensor] = {}
        for task, rows in batch.rows.items():
            mode = modes[task]
            out = logits[task] if logits is not None else model.head(task, pooled[rows])
            if mode not in LEARNING:
                continue
            ttype, scale = self.types[task], self.loss_scale.get(task, 1.0)
            if rows.numel() == 0:  # FSDP: a head of the global batch this rank's slice lacks runs on no row
                loss = out.sum() * 0.0  # (a zero gradient, so every rank reduce-scatters the same parameters)
            elif mode == TaskPhase.TRAINING:
                loss = supervised_loss(ttype, out, batch.labels[task], scale)
            else:
                teacher = self.soft[task][batch.example_ids[task].to(out.device)]
                t = self.distillation.temperature
                if self.anneals:  # teacher annealing towards the gold labels
                    loss = bam_loss(ttype, out, batch.labels[task], teacher, min(1.0, step / self.max_steps), t, scale)
                else:
                    loss = self.distillation.kd_weight * kd_loss(ttype, out, teacher, t, scale)
            if batch.global_rows is not None and batch.world > 1:
                loss = loss * (batch.world * int(rows.numel()) / batch.global_rows[task])
            losses[task] = loss
        return losses

    def whole_batch(self, batch: "Batch", losses: dict[str, torch.Tensor], modes: Mapping[str, TaskPhase],
                    ranks: Ranks) -> dict[str, torch.Tensor]:
        """Each task's loss over the whole global batch (detached, 0-dim): the ranks' rescaled shares summed
        (an all-reduce under torchrun; every rank gets the same values)."""
        if not ranks.distributed or batch.global_rows is None:
            return {t: l.detach() for t, l in losses.items()}
        names = [t for t in self.types if t in batch.global_rows and modes[t] in LEARNING]
        v = torch.zeros(len(names), device=ranks.device)
        for i, t in enumerate(names):
            if t in losses:
                v[i] = losses[t].detach().float() / ranks.world
        ranks.all_reduce_sum(v)
        return {t: v[i] for i, t in enumerate(names)}
