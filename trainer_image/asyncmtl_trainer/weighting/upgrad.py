"""UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024), from PyPI `torchjd`.

Jacobian descent on the shared encoder: `torchjd.autojac.mtl_backward` computes one gradient row per
task present in the batch with respect to the encoder (through the pooled features every head reads)
and the ordinary gradients of the heads; `jac_to_grad` aggregates the rows with
`torchjd.aggregation.UPGrad`, which projects each row onto the dual cone of all rows and combines
them. The preference vector is all ones, so that without conflict the update is the sum of the task
gradients, as in the paper's Eq. 3 (torchjd's default 1/m would shrink the step by the task count).
Stateless, so any subset of tasks per batch works. λ_t exported: the aggregator's weights of the last
step (1 for absent tasks).
"""
from __future__ import annotations

import torch

from asyncmtl_trainer.weighting.base import Weighting, register


@register("upgrad")
class UPGrad(Weighting):
    def __init__(self, tasks: list[str]) -> None:
        super().__init__(tasks)
        self._last = {t: 1.0 for t in tasks}

    def weights(self) -> dict[str, float]:
        return dict(self._last)

    def backward(self, losses, features, scaler, shared_params) -> None:
        from torchjd.aggregation import UPGrad as _UPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward

        names = list(losses)
        shared = [p for p in shared_params if p.requires_grad]
        mtl_backward([scaler.scale(losses[n]) for n in names], features=features, shared_params=shared)
        w = jac_to_grad(shared, _UPGrad(pref_vector=torch.ones(len(names), device=features.device)))
        if w is not None:
            self._last = {t: 1.0 for t in self.tasks} | {n: float(w[i]) for i, n in enumerate(names)}
