"""FAMO, uncertainty weighting and UPGrad behind our `Weighting` interface, checked against PyPI
`torchjd`'s own results on the same fixed losses and gradients, on mixed batches (only some tasks
present), through checkpoint state, and inside the trainer."""
from __future__ import annotations

import json
import typing

import pytest
import torch
from torchjd.aggregation import UPGrad as TorchjdUPGrad
from torchjd.autojac import jac_to_grad, mtl_backward
from torchjd.scalarization import FAMO as TorchjdFAMO
from torchjd.scalarization import UW as TorchjdUW

from asyncmtl.spec import WeightingSpec
from asyncmtl_trainer.weighting import FAMO, UPGrad, UncertaintyWeighting, registered

TASKS = ["a", "b", "c"]
NO_SCALE = torch.amp.GradScaler(enabled=False)


def test_every_method_the_spec_names_is_registered_and_no_other():
    names = set(typing.get_args(WeightingSpec.model_fields["method"].annotation))
    assert set(registered()) == names


def _losses(values):
    return {t: torch.tensor(v, requires_grad=True) for t, v in zip(TASKS, values)}


def test_famo_combines_and_learns_exactly_as_torchjd():
    ours, ref = FAMO(TASKS, lr=0.1, weight_decay=1e-3), TorchjdFAMO(3, lr=0.1, weight_decay=1e-3)
    for before, after in [((2.0, 1.0, 0.5), (1.5, 0.9, 0.5)), ((1.5, 0.9, 0.5), (1.0, 0.95, 0.2))]:
        got = ours.combine(_losses(before))
        want = ref(torch.tensor(before))
        assert float(got.detach()) == pytest.approx(float(want), rel=1e-6)
        ours.after_step({t: torch.tensor(v) for t, v in zip(TASKS, after)})
        ref.update(torch.tensor(after))
    assert torch.allclose(ours.scalarizer._w, ref._w)
    w = ours.weights()
    assert sum(w.values()) == pytest.approx(3.0) and len(set(w.values())) == 3  # it learned, unevenly


def test_famo_with_a_task_absent_gives_it_no_gradient_and_no_change():
    famo = FAMO(TASKS)
    famo.combine(_losses((2.0, 1.0, 0.5)))
    famo.after_step({t: torch.tensor(v) for t, v in zip(TASKS, (1.8, 0.9, 0.45))})
    present = {"a": torch.tensor(1.7, requires_grad=True), "c": torch.tensor(0.4, requires_grad=True)}
    total = famo.combine(present)
    total.backward()
    assert present["a"].grad > 0 and present["c"].grad > 0
    # b stood in with its last seen loss as a constant: the vector the scalarizer saw
    assert famo.scalarizer._prev_losses.tolist() == pytest.approx([1.7, 0.9, 0.4])
    famo.after_step({"a": torch.tensor(1.6), "c": torch.tensor(0.35)})  # δ_b = 0: b's loss did not change
    assert torch.isfinite(famo.scalarizer._w).all()


def test_famo_state_round_trips_through_json():
    famo = FAMO(TASKS)
    famo.combine(_losses((2.0, 1.0, 0.5)))
    famo.after_step({t: torch.tensor(v) for t, v in zip(TASKS, (1.5, 1.0, 0.4))})
    state = json.loads(json.dumps(famo.state_dict()))
    again = FAMO(TASKS)
    again.load_state_dict(state)
    for f in (famo, again):
        f.combine(_losses((1.5, 1.0, 0.4)))
        f.after_step({t: torch.tensor(v) for t, v in zip(TASKS, (1.2, 0.8, 0.4))})
    assert torch.allclose(famo.scalarizer._w, again.scalarizer._w)


def test_uncertainty_weighting_matches_torchjd_and_moves_log_variance_towards_log_loss():
    uw, ref = UncertaintyWeighting(TASKS, lr=0.05), TorchjdUW(3)
    losses = _losses((4.0, 1.0, 0.25))
    assert float(uw.combine(losses).detach()) == pytest.approx(float(ref(torch.tensor([4.0, 1.0, 0.25])).detach()))
    for _ in range(300):
        uw.backward(_losses((4.0, 1.0, 0.25)), torch.zeros(1), NO_SCALE, [])
        uw.step()
    s = uw._param().detach()
    # the optimum of ½e^{−s}L + ½s is s = log L
    assert s.tolist() == pytest.approx([1.386, 0.0, -1.386], abs=0.1)
    assert uw.weights()["c"] > uw.weights()["a"]


class _Toy(torch.nn.Module):
    """A shared layer and one head per task, as the multi-task model has."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = torch.nn.Linear(4, 5)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(5, 1) for t in TASKS})

    def losses(self, x, rows: dict[str, slice], signs: dict[str, float]):
        feats = torch.tanh(self.shared(x))
        return feats, {t: signs[t] * self.heads[t](feats[r]).mean() for t, r in rows.items()}


@pytest.mark.parametrize("present", [("a", "b", "c"), ("a", "c"), ("b",)])
def test_upgrad_gradients_equal_torchjd_mtl_backward_with_sum_preference(present):
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(1))
    rows = {t: slice(3 * i, 3 * i + 3) for i, t in enumerate(TASKS) if t in present}
    signs = {"a": 1.0, "b": -1.0, "c": 0.5}  # b conflicts with a
    ours, ref = _Toy(), _Toy()
    feats, losses = ours.losses(x, rows, signs)
    UPGrad(TASKS).backward(losses, feats, NO_SCALE, ours.shared.parameters())
    feats_r, losses_r = ref.losses(x, rows, signs)
    shared = list(ref.shared.parameters())
    mtl_backward(list(losses_r.values()), features=feats_r, shared_params=shared)
    jac_to_grad(shared, TorchjdUPGrad(pref_vector=torch.ones(len(losses_r))))
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-6)
    if len(present) == 1:  # one task: plain gradient descent on its loss
        plain = _Toy()
        _, l1 = plain.losses(x, rows, signs)
        sum(l1.values()).backward()
        assert torch.allclose(ours.shared.weight.grad, plain.shared.weight.grad, atol=1e-6)
