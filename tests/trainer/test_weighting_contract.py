"""One contract over every registered loss-weighting method (as torchjd tests every aggregator): on mixed batches
where only some tasks appear, each method yields finite positive weights for every task, puts gradients into the
shared encoder and the present tasks' heads only, follows the trainer's call order (backward, step, update,
after_step), and survives a checkpoint round trip (JSON state) with the same weights."""
from __future__ import annotations

import json

import pytest
import torch

from asyncmtl.spec import parse_run
from asyncmtl_trainer.weighting import make_weighting, registered
from tests.conftest import builtin_task, run_doc

TASKS = ("a", "b", "c")
BATCHES = [("a", "c"), ("b",), ("a", "b", "c"), ("c",), ("a", "b")]  # mixed batches: some tasks absent


def _spec(method: str):
    tasks = [builtin_task("sentiment") | {"name": t} for t in TASKS]
    weighting = {"method": method, **({"weights": {"a": 2.0, "b": 1.0, "c": 0.5}} if method == "static" else {})}
    return parse_run(run_doc(tasks, weighting=weighting)).spec


class Model(torch.nn.Module):
    """A shared encoder (batch, 4) -> (batch, 8) and a 2-label head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(4, 8)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(8, 2) for t in TASKS})

    def losses(self, present: tuple[str, ...], seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(6, 4, generator=g), torch.randint(0, 2, (6,), generator=g)
        features = torch.tanh(self.encoder(x))
        return {t: torch.nn.functional.cross_entropy(self.heads[t](features[2 * i:2 * i + 2]), y[2 * i:2 * i + 2])
                for i, t in enumerate(present)}, features


@pytest.mark.parametrize("method", sorted(registered()))
def test_every_weighting_method_keeps_the_contract_on_mixed_batches(method):
    torch.manual_seed(0)
    spec = _spec(method)
    weighting = make_weighting(spec)
    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for step, present in enumerate(BATCHES, start=1):
        lam = weighting.weights()
        assert set(lam) == set(TASKS) and all(torch.isfinite(torch.tensor(v)) and v >= 0 for v in lam.values()), lam
        opt.zero_grad()
        losses, features = model.losses(present, step)
        weighting.backward(losses, features, scaler, list(model.encoder.parameters()))
        assert model.encoder.weight.grad is not None and torch.isfinite(model.encoder.weight.grad).all()
        for t in TASKS:  # a head whose task is absent from the batch gets no gradient
            grad = model.heads[t].weight.grad
            assert (grad is not None and grad.abs().sum() > 0) == (t in present), (method, t, present)
        opt.step()
        weighting.step()
        if weighting.learns:
            norms = {t: float(l.detach()) + 1.0 for t, l in losses.items()} if weighting.needs_grad_norms else None
            weighting.update(step, {t: float(l.detach()) for t, l in losses.items()}, norms)
        if weighting.needs_losses_after_step:
            with torch.no_grad():
                weighting.after_step(model.losses(present, step)[0])
    state = json.loads(json.dumps(weighting.state_dict()))  # checkpoints keep it as JSON
    restored = make_weighting(spec)
    restored.load_state_dict(state)
    assert restored.weights() == pytest.approx(weighting.weights(), rel=1e-6, abs=1e-9)


def test_the_registry_holds_every_method_the_spec_allows():
    from typing import get_args

    from asyncmtl.spec import WeightingSpec

    allowed = set(get_args(WeightingSpec.model_fields["method"].annotation))
    assert set(registered()) == allowed
