"""Common ground of the methods that combine the loss vector with a torchjd scalarizer (FAMO, UW).

torchjd's scalarizers take a fixed-shape vector with one loss per task. A mixed batch holds only some
tasks, so a task absent from the batch is given its last seen loss as a detached constant: it adds
no gradient to the model, and a stateful scalarizer sees no change in it (FAMO: δ = 0 for that task;
UW: its log-variance keeps moving towards the log of that loss). Before a task's first loss, 1.0.
"""
from __future__ import annotations

from typing import Any

import torch

from asyncmtl_trainer.weighting.base import Weighting


def tensor_state(t: torch.Tensor) -> list:
    """A tensor as nested lists (checkpoint state is JSON)."""
    return t.detach().cpu().tolist()


class ScalarizedWeighting(Weighting):
    """A `Weighting` whose `combine` is a torchjd scalarizer (`self.scalarizer`, a torch Module set by the
    subclass) over the tasks' loss vector."""

    scalarizer: torch.nn.Module

    def __init__(self, tasks: list[str]) -> None:
        super().__init__(tasks)
        self._last = torch.ones(len(tasks))  # last seen loss per task (stands in while a task is absent)

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalarizer applied to the (num_tasks,) loss vector (`vector`): a 0-dim tensor."""
        v = self.vector(losses)
        self.scalarizer.to(v.device)
        return self.scalarizer(v)

    def vector(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """(num_tasks,) losses in task order; absent tasks get their last seen loss, detached."""
        some = next(iter(losses.values()))
        self._last = self._last.to(some.device)
        out = [losses[t].float() if t in losses else self._last[i] for i, t in enumerate(self.tasks)]
        v = torch.stack(out)
        with torch.no_grad():
            for i, t in enumerate(self.tasks):
                if t in losses:
                    self._last[i] = losses[t].detach().float()
        return v

    def state_dict(self) -> dict[str, Any]:
        return {"last": tensor_state(self._last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "last" in state:
            self._last = torch.tensor(state["last"], dtype=torch.float32)


def adam_state(opt: torch.optim.Optimizer | None, param: torch.Tensor) -> dict[str, Any] | None:
    """The Adam moments of `param` as JSON-able lists (None before the first step)."""
    if opt is None or param not in opt.state:
        return None
    s = opt.state[param]
    return {k: tensor_state(v) if torch.is_tensor(v) else v for k, v in s.items()}


def load_adam_state(opt: torch.optim.Optimizer, param: torch.Tensor, state: dict[str, Any] | None) -> None:
    """Restore what `adam_state` returned into `opt` for `param`."""
    if not state:
        return
    opt.state[param] = {k: torch.tensor(v, dtype=torch.float32, device=param.device) for k, v in state.items()}
