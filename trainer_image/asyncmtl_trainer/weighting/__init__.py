"""Loss-weighting methods, one module each behind `Weighting` (base.py): uniform (the paper's sum,
Eq. 3), static and Muppet, DWA, GradNorm. `make_weighting(spec)` builds the one a run asks for."""
from __future__ import annotations

from asyncmtl.spec import RunSpec
from asyncmtl_trainer.weighting.base import Weighting
from asyncmtl_trainer.weighting.dwa import DWA
from asyncmtl_trainer.weighting.gradnorm import GradNorm
from asyncmtl_trainer.weighting.static import Muppet, Static
from asyncmtl_trainer.weighting.uniform import Uniform


def make_weighting(spec: RunSpec) -> Weighting:
    """The weighting of `spec.weighting` for the run's tasks."""
    w = spec.weighting
    tasks = [t.name for t in spec.tasks]
    if w.method == "static":
        return Static(tasks, w.weights)
    if w.method == "muppet":
        return Muppet(spec.tasks)
    if w.method == "dwa":
        return DWA(tasks, temperature=w.temperature, window=w.window)
    if w.method == "gradnorm":
        return GradNorm(tasks, alpha=w.alpha, lr=w.learning_rate)
    return Uniform(tasks)


__all__ = ["DWA", "GradNorm", "Muppet", "Static", "Uniform", "Weighting", "make_weighting"]
