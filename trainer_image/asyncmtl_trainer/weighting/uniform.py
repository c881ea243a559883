"""Uniform weights: λ_t = 1 (the plain sum of task losses, paper Eq. 3)."""
from __future__ import annotations

from asyncmtl_trainer.weighting.base import Weighting, register


@register("uniform")
class Uniform(Weighting):
    data_parallel = True

    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.tasks}
