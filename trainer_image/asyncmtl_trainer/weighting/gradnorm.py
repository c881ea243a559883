"""GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing", ICML 2018).

G_i = ‖∇_W (w_i L_i)‖ = w_i g_i with g_i = ‖∇_W L_i‖ on the last shared layer W;
L̃_i = L_i(t) / L_i(0); r_i = L̃_i / mean(L̃); target_i = mean(G) · r_i^α, held constant;
L_grad = Σ_i |G_i − target_i|. Since G_i = w_i g_i, with the g_i computed once and detached,
∂L_grad/∂w_i = sign(G_i − target_i) · g_i exactly: the update is analytic, no double
backpropagation. After a gradient step on w (learning rate `lr`), weights are clipped to stay
positive and renormalised so that Σ w_i = number of tasks (the paper, Sec. 3.2).
"""
from __future__ import annotations

from typing import Any

from asyncmtl.spec import RunSpec
from asyncmtl_trainer.weighting.base import Weighting, register

MIN_WEIGHT = 1e-3


def gradnorm_step(w: dict[str, float], g: dict[str, float], loss: dict[str, float], loss0: dict[str, float],
                  alpha: float, lr: float) -> dict[str, float]:
    """One GradNorm update of the weights of the tasks in `g` (the others keep theirs).

    Args:
        w: current weights; g: ‖∇_W L_i‖ per task; loss: L_i(t); loss0: L_i(0); alpha: α; lr: step size.

    Returns:
        The new weights of every task in `w`, renormalised so they sum to len(w).
    """
    tasks = [t for t in g if t in loss and loss0.get(t)]
    if not tasks:
        return dict(w)
    G = {t: w[t] * g[t] for t in tasks}
    ratio = {t: loss[t] / loss0[t] for t in tasks}
    mean_ratio = sum(ratio.values()) / len(tasks)
    mean_G = sum(G.values()) / len(tasks)
    target = {t: mean_G * (ratio[t] / mean_ratio) ** alpha for t in tasks}
    new = dict(w)
    for t in tasks:
        diff = G[t] - target[t]
        grad = (1.0 if diff > 0 else -1.0 if diff < 0 else 0.0) * g[t]
        new[t] = max(MIN_WEIGHT, w[t] - lr * grad)
    total = sum(new.values())
    return {t: v * len(new) / total for t, v in new.items()}


@register("gradnorm")
class GradNorm(Weighting):
    needs_grad_norms = True
    learns = True

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "GradNorm":
        return cls([t.name for t in spec.tasks], alpha=spec.weighting.alpha, lr=spec.weighting.learning_rate)

    def __init__(self, tasks: list[str], alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(tasks)
        self.alpha = alpha
        self.lr = lr
        self._w = {t: 1.0 for t in tasks}
        self.loss0: dict[str, float] = {}

    def weights(self) -> dict[str, float]:
        return dict(self._w)

    def update(self, step: int, losses: dict[str, float], grad_norms: dict[str, float] | None = None) -> None:
        for t, v in losses.items():
            self.loss0.setdefault(t, v)  # L_i(0): the task's first observed loss
        if grad_norms:
            self._w = gradnorm_step(self._w, grad_norms, losses, self.loss0, self.alpha, self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"w": self._w, "loss0": self.loss0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._w, self.loss0 = state["w"], state["loss0"]
