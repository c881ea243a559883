"""Static weights: user-given λ_t, or Muppet's heuristic (Aghajanyan et al. 2021, Sec. 3.2).

Muppet divides each task's loss by log(number of classes), so that losses of heads with many
classes (whose cross-entropy starts near log C) are on one scale. Our rule for heads that do not
fit it: a binary head is a 2-class softmax, so it gets 1/log 2; a multilabel head with C labels
gets 1/log C for C >= 2 (C independent binary losses start near log 2 each; dividing by log C
keeps the many-label head from dominating, as in Muppet's multiclass case); a regression head
(one output, MSE in [0, 1]) and a 1-label multilabel head get 1 (log 1 = 0 would be undefined).
"""
from __future__ import annotations

import math

from asyncmtl.spec import RunSpec, TaskSpec, TaskType
from asyncmtl_trainer.weighting.base import Weighting, register


def muppet_scale(task: TaskSpec) -> float:
    """1 / log(C) by the rule in the module docstring."""
    if task.type is TaskType.regression:
        return 1.0
    c = int(task.num_labels or 1)
    return 1.0 / math.log(c) if c >= 2 else 1.0


@register("static")
class Static(Weighting):
    """Fixed λ_t: `weights` given (missing tasks get 1.0)."""

    data_parallel = True

    def __init__(self, tasks: list[str], weights: dict[str, float]) -> None:
        super().__init__(tasks)
        self._w = {t: float(weights.get(t, 1.0)) for t in tasks}

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "Static":
        return cls([t.name for t in spec.tasks], spec.weighting.weights)

    def weights(self) -> dict[str, float]:
        return dict(self._w)


@register("muppet")
class Muppet(Static):
    """Static weights from `muppet_scale`."""

    def __init__(self, task_specs: list[TaskSpec]) -> None:
        super().__init__([t.name for t in task_specs], {t.name: muppet_scale(t) for t in task_specs})

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "Muppet":
        return cls(spec.tasks)
