"""Dynamic Weight Average (Liu et al., "End-to-End Multi-Task Learning with Attention", CVPR 2019, Eq. 7).

w_k = L_k(t−1) / L_k(t−2);  λ_k = K · exp(w_k / T) / Σ_i exp(w_i / T), T = 2 by default; λ = 1 for
the first two periods. We train by steps, not epochs, so a period is a window of `window` steps
and L_k(t) is the mean loss of task k over window t (steps where the task was in no batch do
not count). A task without losses in one of the two windows keeps w_k = 1.
"""
from __future__ import annotations

import math
from typing import Any

from asyncmtl.spec import RunSpec
from asyncmtl_trainer.weighting.base import Weighting, register


def dwa_weights(prev: dict[str, float], prev2: dict[str, float], temperature: float) -> dict[str, float]:
    """λ from the mean losses of the last two windows (Eq. 7). Tasks: the keys of `prev`."""
    tasks = list(prev)
    w = {t: (prev[t] / prev2[t]) if prev2.get(t) else 1.0 for t in tasks}
    m = max(w.values())
    e = {t: math.exp((w[t] - m) / temperature) for t in tasks}  # shifted: same softmax, no overflow
    z = sum(e.values())
    return {t: len(tasks) * e[t] / z for t in tasks}


@register("dwa")
class DWA(Weighting):
    data_parallel = True
    learns = True

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "DWA":
        return cls([t.name for t in spec.tasks], temperature=spec.weighting.temperature, window=spec.weighting.window)

    def __init__(self, tasks: list[str], temperature: float = 2.0, window: int = 100) -> None:
        super().__init__(tasks)
        self.temperature = temperature
        self.window = window
        self.sums = {t: 0.0 for t in tasks}
        self.counts = {t: 0 for t in tasks}
        self.history: list[dict[str, float]] = []  # mean loss per finished window
        self._w = {t: 1.0 for t in tasks}

    def weights(self) -> dict[str, float]:
        return dict(self._w)

    def update(self, step: int, losses: dict[str, float], grad_norms: dict[str, float] | None = None) -> None:
        for t, v in losses.items():
            self.sums[t] += v
            self.counts[t] += 1
        if (step + 1) % self.window:
            return
        means = {t: self.sums[t] / self.counts[t] if self.counts[t] else (self.history[-1][t] if self.history else 1.0)
                 for t in self.tasks}
        self.history = (self.history + [means])[-2:]
        self.sums = {t: 0.0 for t in self.tasks}
        self.counts = {t: 0 for t in self.tasks}
        if len(self.history) == 2:
            self._w = dwa_weights(self.history[1], self.history[0], self.temperature)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "counts": self.counts, "history": self.history, "w": self._w}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.counts, self.history, self._w = state["sums"], state["counts"], state["history"], state["w"]
