"""asyncmtl_trainer.step: `TrainingStep` draws a step's mixed batch (a pure function of seed, step and rewinds,
over the active tasks) and makes one optimizer step on it. On a tiny random BERT without dropout, one uniform
step equals a hand-computed AdamW step on the sum of the tasks' losses (paper Eq. 3), the returned losses are
those of the batch before the step, a task in KD is trained on its soft labels (Eq. 2), and only the heads of
the tasks that learn in the batch receive gradients."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from prometheus_client import CollectorRegistry

from asyncmtl import metric_names as M
from asyncmtl.lifecycle import TaskPhase
from asyncmtl.spec import parse_run
from asyncmtl_trainer.builder import build_training
from asyncmtl_trainer.distributed import Ranks
from asyncmtl_trainer.exporter import TrainerExporter, TrainingMeter
from asyncmtl_trainer.losses import TaskLosses
from asyncmtl_trainer.sharding import StateIO
from asyncmtl_trainer.step import TrainingStep
from tests.conftest import run_doc

LR, WD, EPS = 1e-2, 0.1, 1e-8  # AdamW's defaults: betas (0.9, 0.999), eps 1e-8
TASKS = ("pos", "topic", "score", "idle")


@pytest.fixture(scope="module")
def nodrop(tmp_path_factory) -> Path:
    """A tiny BERT without dropout: a forward pass in train mode is deterministic."""
    from asyncmtl_trainer.model import save_tiny_random_encoder

    return save_tiny_random_encoder(tmp_path_factory.mktemp("tiny-nodrop"), dropout=0.0)


def _rows(path: Path, labels: list) -> str:
    path.write_text("".join(json.dumps({"text": f"{path.stem} row {i} " + "word " * (i % 4), "label": l}) + "\n"
                            for i, l in enumerate(labels)))
    return str(path)


def _setup(tmp_path: Path, model: Path):
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)

    def task(name, type_, labels, **extra):
        return {"name": name, "type": type_, "data": {"train": _rows(d / f"{name}.jsonl", labels),
                                                      "validation": _rows(d / f"{name}-val.jsonl", labels[:3])},
                **extra}
    tasks = [task("pos", "binary", [0, 1, 1, 0, 1, 0]),
             task("topic", "multiclass", [0, 1, 2, 2, 1], numLabels=3),
             task("score", "regression", [1.0, 4.0, 2.5, 5.0], labelRange=[1, 5]),
             task("idle", "binary", [1, 0, 1])]
    doc = run_doc(tasks, model=str(model), training={
        "batchSize": 12, "learningRate": LR, "weightDecay": WD, "maxSteps": 100, "validationInterval": 10,
        "maxGradNorm": None, "regressionLoss": "normalizedMse", "seed": 3})
    doc["spec"]["model"]["dropout"] = 0.0
    spec = parse_run(doc).spec
    s = build_training(spec, Ranks(), StateIO(), workdir=tmp_path / "wd", base_dir=tmp_path, tweeteval_dir=None)
    losses = TaskLosses({t.name: t.type for t in spec.tasks}, spec.distillation, anneals=False,
                        max_steps=spec.training.max_steps, loss_scale=s.loss_scale)
    exporter = TrainerExporter("r", list(TASKS), registry=CollectorRegistry())
    return s, losses, exporter, TrainingStep(s, losses, TrainingMeter(exporter), max_grad_norm=None)


@pytest.fixture()
def setup(tmp_path, nodrop):
    return _setup(tmp_path, nodrop)


def test_the_draw_is_a_pure_function_of_step_and_rewinds_over_the_active_tasks(setup):
    s, _, _, step = setup
    active = ["pos", "topic"]
    a = step.batch(Ranks(), 5, 0, active, {})
    assert set(a.rows) <= set(active) and sum(int(r.numel()) for r in a.rows.values()) == a.size == 12
    again = step.batch(Ranks(), 5, 0, active, {})
    assert torch.equal(a.input_ids, again.input_ids) and {t: r.tolist() for t, r in a.rows.items()} == \
        {t: r.tolist() for t, r in again.rows.items()}
    draws = {(st, rw): {t: i.tolist() for t, i in step.batch(Ranks(), st, rw, active, {}).example_ids.items()}
             for st, rw in ((5, 0), (6, 0), (5, 1))}
    assert len({json.dumps(v, sort_keys=True) for v in draws.values()}) == 3  # another step or rewind: another draw
    only = step.batch(Ranks(), 5, 0, ["score"], {})
    assert list(only.rows) == ["score"]


def test_the_sampling_scale_shifts_the_mix(setup):
    _, _, _, step = setup

    def share(scale):
        n = {"pos": 0, "topic": 0}
        for st in range(40):
            for t, r in step.batch(Ranks(), st, 0, ["pos", "topic"], scale).rows.items():
                n[t] += int(r.numel())
        return n["topic"] / (n["pos"] + n["topic"])
    assert share({"topic": 0.05}) < share({}) < share({"pos": 0.05})


def _hand_losses(model, batch, modes, soft: dict, loss_scale: dict) -> dict[str, torch.Tensor]:
    """Each learning task's loss of `batch`, from the task's type (Eq. 1) or its soft labels (Eq. 2, T = 1)."""
    pooled = model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    out = {}
    for t, rows in batch.rows.items():
        if modes[t] not in (TaskPhase.TRAINING, TaskPhase.KD):
            continue
        logits = model.head(t, pooled[rows])
        if modes[t] == TaskPhase.KD:
            teacher = soft[t][batch.example_ids[t]]
            out[t] = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher, -1), log_target=True,
                              reduction="batchmean")
        elif t == "score":
            out[t] = ((logits[:, 0] - batch.labels[t]) ** 2).mean() / loss_scale[t]
        else:
            out[t] = F.cross_entropy(logits, batch.labels[t])
    return out


def _adamw_first_step(model, names_decayed) -> dict[str, torch.Tensor]:
    """AdamW's first step by hand: m̂ = g and v̂ = g², so θ ← θ(1 − lr·λ) − lr·g / (|g| + ε);
    a parameter without a gradient does not move."""
    out = {}
    for n, p in model.named_parameters():
        if p.grad is None:
            out[n] = p.detach().clone()
            continue
        wd = WD if n in names_decayed else 0.0
        out[n] = p.detach() * (1 - LR * wd) - LR * p.grad / (p.grad.abs() + EPS)
    return out


def _batch_with(step, tasks: list[str]):
    """The first step whose draw over `tasks` holds every one of them."""
    for st in range(100):
        b = step.batch(Ranks(), st, 0, tasks, {})
        if set(b.rows) == set(tasks):
            return st, b
    raise AssertionError("no draw holds every task")


def test_a_uniform_step_is_adamw_on_the_sum_of_the_losses_and_returns_the_losses_before_it(setup):
    s, losses, exporter, step = setup
    modes = {"pos": TaskPhase.TRAINING, "topic": TaskPhase.TRAINING, "score": TaskPhase.TRAINING,
             "idle": TaskPhase.PENDING}
    st, batch = _batch_with(step, ["pos", "topic", "score"])
    decayed = {n for g in s.optimizer.param_groups if g["weight_decay"] > 0
               for n, p in s.model.named_parameters() for q in g["params"] if p is q}

    ref = copy.deepcopy(s.model)
    ref.train()
    hand = _hand_losses(ref, batch, modes, {}, s.loss_scale)
    sum(hand.values()).backward()  # uniform: λ = 1 for every task (Eq. 3)
    expected = _adamw_first_step(ref, decayed)
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}

    got = step(Ranks(), batch, st, modes)

    assert set(got) == {"pos", "topic", "score"}
    for t in got:
        assert got[t].dim() == 0 and not got[t].requires_grad
        assert float(got[t]) == pytest.approx(float(hand[t].detach()), rel=1e-5, abs=1e-6)
    for n, p in s.model.named_parameters():
        assert torch.allclose(p.detach(), expected[n], atol=2e-6, rtol=1e-5), n
        assert p.grad is None  # zeroed (set to None) after the step
    assert torch.equal(s.model.heads["idle"].weight, before["heads.idle.weight"])  # not in the batch: untouched
    assert not torch.equal(s.model.heads["pos"].weight, before["heads.pos.weight"])
    assert s.scheduler.get_last_lr()[0] == pytest.approx(LR * 99 / 100)  # linear decay, one step on

    exporter_loss = lambda t: exporter.registry.get_sample_value(M.TRAIN_LOSS, {"run": "r", "task": t,  # noqa: E731
                                                                                   "kind": "supervised"})
    step.meter.flush(st + 1, {})
    assert exporter_loss("pos") == pytest.approx(float(got["pos"]))


def test_a_task_in_kd_learns_from_its_soft_labels_and_one_in_another_phase_gets_no_gradient(setup):
    s, losses, exporter, step = setup
    torch.manual_seed(1)
    losses.soft["topic"] = torch.randn(len(s.train["topic"]), 3)
    modes = {"pos": TaskPhase.TRAINING, "topic": TaskPhase.KD, "score": TaskPhase.FROZEN, "idle": TaskPhase.PENDING}
    st, batch = _batch_with(step, ["pos", "topic", "score"])
    ref = copy.deepcopy(s.model)
    ref.train()
    hand = _hand_losses(ref, batch, modes, losses.soft, s.loss_scale)
    assert set(hand) == {"pos", "topic"}
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}

    got = step(Ranks(), batch, st, modes)

    assert set(got) == {"pos", "topic"}  # score is in the batch, but Frozen: no loss
    for t in got:
        assert float(got[t]) == pytest.approx(float(hand[t].detach()), rel=1e-5, abs=1e-6)
    after = dict(s.model.named_parameters())
    for head in ("score", "idle"):
        for part in ("weight", "bias"):
            assert torch.equal(after[f"heads.{head}.{part}"], before[f"heads.{head}.{part}"]), head
    for head in ("pos", "topic"):
        assert not torch.equal(after[f"heads.{head}.weight"], before[f"heads.{head}.weight"]), head
    step.meter.flush(st + 1, {})
    kd = exporter.registry.get_sample_value(M.TRAIN_LOSS, {"run": "r", "task": "topic", "kind": "kd"})
    assert kd == pytest.approx(float(got["topic"]))


def test_the_kd_weight_scales_a_kd_loss(tmp_path, nodrop):
    s, losses, _, step = _setup(tmp_path, nodrop)
    losses.soft["topic"] = torch.randn(len(s.train["topic"]), 3)
    modes = {"pos": TaskPhase.TRAINING, "topic": TaskPhase.KD, "score": TaskPhase.TRAINING, "idle": TaskPhase.PENDING}
    st, batch = _batch_with(step, ["topic"])
    hand = _hand_losses(copy.deepcopy(s.model).train(), batch, modes, losses.soft, s.loss_scale)
    losses.distillation = losses.distillation.model_copy(update={"kd_weight": 0.25})
    got = step(Ranks(), batch, st, modes)
    assert float(got["topic"]) == pytest.approx(0.25 * float(hand["topic"].detach()), rel=1e-5)
