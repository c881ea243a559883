"""The interface every loss-weighting method implements (in the style of LibMTL's weighting classes).

A method owns how one step's task losses become parameter gradients (`backward`): the default forms
Σ_t λ_t L_t with λ from `weights()` (paper Eq. 3 with λ = 1 for uniform) and backpropagates it; a
scalarizer (FAMO, uncertainty weighting) combines the losses its own way (`combine`); a Jacobian
method (UPGrad) aggregates per-task gradients of the shared encoder. After the optimizer step the
trainer calls `step()`, then `update()` with the detached task losses for methods that learn from
them (`learns`), and `after_step()` with the losses recomputed on the same batch for methods that
set `needs_losses_after_step` (FAMO). Mixed batches hold only some tasks: every call receives the
losses of the tasks present in the batch. State goes into checkpoints (`state_dict`, JSON-able).

Methods register themselves by name (`register`), as `spec.weighting.method` spells it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    import torch

    from asyncmtl.spec import RunSpec

_REGISTRY: dict[str, Callable[["RunSpec"], "Weighting"]] = {}


def register(name: str) -> Callable:
    """Class decorator: `cls.from_spec(spec)` builds the method named `name` in `spec.weighting.method`."""
    def deco(cls):
        _REGISTRY[name] = cls.from_spec
        cls.method = name
        return cls
    return deco


def registered() -> dict[str, Callable[["RunSpec"], "Weighting"]]:
    """Name -> builder of every registered method (a copy)."""
    return dict(_REGISTRY)


class Weighting(ABC):
    """Loss weights λ_t for the tasks `tasks` (names, fixed order)."""

    method = ""
    needs_grad_norms: bool = False  # update() receives ‖∇_W L_t‖ on the last shared layer W
    learns: bool = False  # update() is called with each step's losses
    needs_losses_after_step: bool = False  # after_step() is called with the same batch's losses after the step
    # exact under torchrun's data parallelism: the gradient is Σ_t λ_t ∇L_t with λ the same on every rank,
    # so DDP's average of the ranks' (rescaled) slices is the whole batch's gradient. Methods that need
    # per-task gradients (GradNorm, UPGrad) or combine the losses non-linearly (FAMO, UW) are not.
    data_parallel: bool = False

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = list(tasks)

    @classmethod
    def from_spec(cls, spec: "RunSpec") -> "Weighting":
        return cls([t.name for t in spec.tasks])

    @abstractmethod
    def weights(self) -> dict[str, float]:
        """λ_t for every task, for the coming step (exported as `asyncmtl_loss_weight`)."""

    def combine(self, losses: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        """One scalar from the losses of the tasks in the batch: Σ_t λ_t L_t (0-dim tensors in, 0-dim out)."""
        lam = self.weights()
        return sum(lam.get(t, 1.0) * l for t, l in losses.items())

    def backward(self, losses: dict[str, "torch.Tensor"], features: "torch.Tensor", scaler,
                 shared_params: Iterable["torch.Tensor"]) -> None:
        """Accumulate this step's gradients into `.grad`.

        Args:
            losses: task -> 0-dim loss, for the tasks in the batch.
            features: (batch, hidden) the shared encoder's pooled output every head reads.
            scaler: the step's `torch.amp.GradScaler` (a disabled one multiplies by 1).
            shared_params: the encoder's trainable parameters.
        """
        scaler.scale(self.combine(losses)).backward()

    def step(self) -> None:
        """After the optimizer step: advance the method's own parameters (if it has any)."""

    def update(self, step: int, losses: dict[str, float], grad_norms: dict[str, float] | None = None) -> None:
        """Take in one step's task losses (floats) and, if asked for, gradient norms (when `learns`)."""

    def after_step(self, losses: dict[str, "torch.Tensor"]) -> None:
        """The same batch's task losses after the optimizer step (when `needs_losses_after_step`)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
