"""FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023), from PyPI `torchjd`.

The loss vector is combined as c Σ_i z_i log(ℓ_i + ε) with z = softmax(w) and c = (Σ_i z_i / (ℓ_i + ε))⁻¹
held constant (`torchjd.scalarization.FAMO`): one backward pass per step. After the optimizer step the
same batch's losses are computed again and FAMO takes one Adam step on w from the change in log losses
(`FAMO.update`). Mixed batches: see `scalarized`. λ_t exported as K·z_t (sums to the task count).
"""
from __future__ import annotations

from typing import Any

import torch

from asyncmtl.spec import RunSpec
from asyncmtl_trainer.weighting.base import register
from asyncmtl_trainer.weighting.scalarized import ScalarizedWeighting, adam_state, load_adam_state, tensor_state


@register("famo")
class FAMO(ScalarizedWeighting):
    needs_losses_after_step = True

    def __init__(self, tasks: list[str], lr: float = 0.025, weight_decay: float = 1e-3) -> None:
        from torchjd.scalarization import FAMO as _FAMO

        super().__init__(tasks)
        self.scalarizer = _FAMO(len(tasks), lr=lr, weight_decay=weight_decay)

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "FAMO":
        w = spec.weighting
        return cls([t.name for t in spec.tasks], lr=w.learning_rate, weight_decay=w.weight_decay)

    def weights(self) -> dict[str, float]:
        z = torch.softmax(self.scalarizer._w.detach().float().cpu(), dim=0)
        return {t: float(z[i]) * len(self.tasks) for i, t in enumerate(self.tasks)}

    def after_step(self, losses: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.scalarizer.update(self.vector(losses))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "w": tensor_state(self.scalarizer._w),
                "adam": adam_state(self.scalarizer._optimizer, self.scalarizer._w)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.scalarizer._w.copy_(torch.tensor(state["w"]))
        self.scalarizer._prev_losses = None
        self.scalarizer._optimizer = None
        if state.get("adam"):
            self.scalarizer._optimizer = torch.optim.Adam([self.scalarizer._w], lr=self.scalarizer.lr,
                                                          weight_decay=self.scalarizer.weight_decay)
            load_adam_state(self.scalarizer._optimizer, self.scalarizer._w, state["adam"])
