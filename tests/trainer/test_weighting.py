"""Loss-weighting methods against values computed by hand (and GradNorm's analytic update against autograd)."""
from __future__ import annotations

import math

import pytest
import torch

from asyncmtl.spec import parse_run
from asyncmtl_trainer.weighting import DWA, GradNorm, Muppet, Static, Uniform, make_weighting
from asyncmtl_trainer.weighting.dwa import dwa_weights
from asyncmtl_trainer.weighting.gradnorm import gradnorm_step
from asyncmtl_trainer.weighting.static import muppet_scale
from tests.conftest import builtin_task, run_doc


def test_uniform_and_static():
    assert Uniform(["a", "b"]).weights() == {"a": 1.0, "b": 1.0}
    assert Static(["a", "b"], {"a": 0.5}).weights() == {"a": 0.5, "b": 1.0}


def test_muppet_scales():
    spec = parse_run(run_doc([builtin_task("sentiment"), builtin_task("topic", "multiclass", numLabels=20),
                              builtin_task("rating", "regression"),
                              builtin_task("tags", "multilabel", numLabels=1),
                              builtin_task("labels", "multilabel", numLabels=8)])).spec
    scales = {t.name: muppet_scale(t) for t in spec.tasks}
    # by hand: 1/ln 2 = 1.442695, 1/ln 20 = 0.333808, regression 1, one label 1, 1/ln 8 = 0.480898
    assert scales["sentiment"] == pytest.approx(1.442695, abs=1e-6)
    assert scales["topic"] == pytest.approx(0.333808, abs=1e-6)
    assert scales["rating"] == 1.0 and scales["tags"] == 1.0
    assert scales["labels"] == pytest.approx(0.480898, abs=1e-6)
    assert Muppet(spec.tasks).weights()["topic"] == pytest.approx(0.333808, abs=1e-6)


def test_dwa_weights_from_given_loss_histories():
    # w_a = 1.0/2.0 = 0.5, w_b = 1.0/1.0 = 1.0, T = 2:
    # λ_a = 2 e^0.25 / (e^0.25 + e^0.5) = 2 * 1.284025 / 2.932746 = 0.875647; λ_b = 1.124353
    lam = dwa_weights({"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 1.0}, temperature=2.0)
    assert lam["a"] == pytest.approx(0.875647, abs=1e-6) and lam["b"] == pytest.approx(1.124353, abs=1e-6)
    assert sum(lam.values()) == pytest.approx(2.0)
    # equal ratios give equal weights
    assert dwa_weights({"a": 1, "b": 2}, {"a": 2, "b": 4}, 2.0) == pytest.approx({"a": 1.0, "b": 1.0})


def test_dwa_uses_windows_of_steps_and_starts_uniform():
    dwa = DWA(["a", "b"], temperature=2.0, window=2)
    losses = [{"a": 2.0, "b": 1.0}, {"a": 2.0, "b": 1.0},      # window 1: means a=2, b=1
              {"a": 1.0, "b": 1.0}, {"a": 1.0},                 # window 2: a=1, b=1 (b missing once)
              {"a": 1.0, "b": 1.0}]
    seen = []
    for step, l in enumerate(losses):
        seen.append(dwa.weights())
        dwa.update(step, l)
    assert seen[:4] == [{"a": 1.0, "b": 1.0}] * 4  # λ = 1 for the first two windows
    assert seen[4]["a"] == pytest.approx(0.875647, abs=1e-6)


def test_gradnorm_update_from_given_gradient_norms():
    # g = (2, 1), L(t) = (1, 1), L(0) = (2, 1): L~ = (0.5, 1), r = (2/3, 4/3); G = w*g = (2, 1), mean 1.5;
    # α = 1: targets (1, 2); sign(G - target) * g = (+2, -1); lr 0.1 -> (0.8, 1.1); renormalised to sum 2:
    # (0.8, 1.1) * 2 / 1.9 = (0.842105, 1.157895)
    new = gradnorm_step({"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 1.0},
                        alpha=1.0, lr=0.1)
    assert new["a"] == pytest.approx(0.842105, abs=1e-6) and new["b"] == pytest.approx(1.157895, abs=1e-6)
    assert sum(new.values()) == pytest.approx(2.0)


def test_gradnorm_analytic_gradient_equals_autograd():
    g = torch.tensor([2.0, 0.5, 1.2])
    w = torch.tensor([1.2, 0.9, 0.9], requires_grad=True)
    loss, loss0, alpha = torch.tensor([0.8, 0.9, 0.3]), torch.tensor([1.0, 1.0, 1.0]), 1.5
    G = w * g
    r = (loss / loss0) / (loss / loss0).mean()
    target = (G.mean() * r ** alpha).detach()  # held constant (the paper)
    (G - target).abs().sum().backward()
    lr = 0.05
    expected = (w.detach() - lr * w.grad).clamp(min=1e-3)
    expected = expected * 3 / expected.sum()
    got = gradnorm_step({"a": 1.2, "b": 0.9, "c": 0.9}, dict(zip("abc", g.tolist())), dict(zip("abc", loss.tolist())),
                        dict(zip("abc", loss0.tolist())), alpha=alpha, lr=lr)
    assert [got[k] for k in "abc"] == pytest.approx(expected.tolist(), abs=1e-6)


def test_gradnorm_keeps_first_losses_as_reference():
    gn = GradNorm(["a", "b"], alpha=1.0, lr=0.1)
    gn.update(0, {"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 1.0})
    gn.update(1, {"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 1.0})
    assert gn.loss0 == {"a": 2.0, "b": 1.0}
    assert sum(gn.weights().values()) == pytest.approx(2.0)


def test_make_weighting_follows_the_spec():
    doc = run_doc([builtin_task("sentiment"), builtin_task("sarcasm")], weighting={"method": "dwa", "window": 7})
    w = make_weighting(parse_run(doc).spec)
    assert isinstance(w, DWA) and w.window == 7
    with pytest.raises(Exception, match="unknown task"):
        parse_run(run_doc([builtin_task("sentiment")], weighting={"method": "static", "weights": {"nope": 2}}))


def test_bam_loss_anneals_from_the_teacher_to_the_gold_labels():
    import torch.nn.functional as F

    from asyncmtl.spec import TaskType
    from asyncmtl_trainer.losses import bam_loss

    logits = torch.tensor([[0.2, 1.0, -0.5], [1.5, 0.0, 0.3]])
    gold = torch.tensor([1, 0])
    teacher = torch.tensor([[0.0, 0.0, 3.0], [0.0, 2.0, 0.0]])
    # p = 1: plain cross-entropy on the gold labels
    assert bam_loss(TaskType.multiclass, logits, gold, teacher, 1.0) == pytest.approx(float(F.cross_entropy(logits, gold)))
    # p = 0: cross-entropy against the teacher's distribution
    soft = -(torch.softmax(teacher, -1) * F.log_softmax(logits, -1)).sum(-1).mean()
    assert bam_loss(TaskType.multiclass, logits, gold, teacher, 0.0) == pytest.approx(float(soft))
    # regression mixes targets: p = 0.25 -> target 0.25*y + 0.75*teacher
    y, t, pred = torch.tensor([1.0]), torch.tensor([[0.0]]), torch.tensor([[0.5]])
    assert bam_loss(TaskType.regression, pred, y, t, 0.25) == pytest.approx((0.5 - 0.25) ** 2)
