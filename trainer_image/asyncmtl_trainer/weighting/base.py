"""The interface every loss-weighting method implements (in the style of LibMTL's weighting classes).

Per step the trainer asks `weights()` for λ_t of the tasks in the batch, forms Σ_t λ_t L_t, and
then calls `update()` with the step's detached task losses (and, for methods that set
`needs_grad_norms`, the norms ‖∇_W L_t‖ of each task loss with respect to the last shared
layer W). State is saved with checkpoints (`state_dict`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Weighting(ABC):
    """Loss weights λ_t for the tasks `tasks` (names, fixed order)."""

    needs_grad_norms: bool = False

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = list(tasks)

    @abstractmethod
    def weights(self) -> dict[str, float]:
        """λ_t for every task, for the coming step."""

    def update(self, step: int, losses: dict[str, float], grad_norms: dict[str, float] | None = None) -> None:
        """Take in one step's task losses (floats) and, if asked for, gradient norms."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
