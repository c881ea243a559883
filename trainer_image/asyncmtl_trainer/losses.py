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

import torch
import torch.nn.functional as F

from asyncmtl.spec import TaskType


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
