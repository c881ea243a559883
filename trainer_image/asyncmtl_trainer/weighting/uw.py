"""Uncertainty weighting (Kendall et al., "Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics", CVPR 2018), from PyPI `torchjd` (`torchjd.scalarization.UW`).

Σ_i (½ e^{−s_i} L_i + ½ s_i) with a learned log-variance s_i per task. The s_i have their own Adam
(learning rate `weighting.learningRate`): at the encoder's fine-tuning rate (1e-5..1e-4) they would
barely move in a run. Mixed batches: see `scalarized`. λ_t exported as ½ e^{−s_t}.
"""
from __future__ import annotations

from typing import Any

import torch

from asyncmtl.spec import RunSpec
from asyncmtl_trainer.weighting.base import register
from asyncmtl_trainer.weighting.scalarized import ScalarizedWeighting, adam_state, load_adam_state, tensor_state


@register("uw")
class UncertaintyWeighting(ScalarizedWeighting):
    def __init__(self, tasks: list[str], lr: float = 0.025) -> None:
        from torchjd.scalarization import UW

        super().__init__(tasks)
        self.scalarizer = UW(len(tasks))
        self.lr = lr
        self.optimizer = torch.optim.Adam(self.scalarizer.parameters(), lr=lr)

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "UncertaintyWeighting":
        return cls([t.name for t in spec.tasks], lr=spec.weighting.learning_rate)

    def _param(self) -> torch.nn.Parameter:
        return next(self.scalarizer.parameters())

    def weights(self) -> dict[str, float]:
        s = self._param().detach().float().cpu()
        return {t: 0.5 * float(torch.exp(-s[i])) for i, t in enumerate(self.tasks)}

    def backward(self, losses, features, scaler, shared_params) -> None:
        scaler.scale(self.combine(losses)).backward()
        p = self._param()
        if p.grad is not None:  # the log-variances' gradient without the loss scale
            p.grad.div_(scaler.get_scale() if scaler.is_enabled() else 1.0)

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "s": tensor_state(self._param()), "adam": adam_state(self.optimizer, self._param())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self._param().copy_(torch.tensor(state["s"]))
        self.optimizer = torch.optim.Adam(self.scalarizer.parameters(), lr=self.lr)
        load_adam_state(self.optimizer, self._param(), state.get("adam"))
