"""asyncmtl_trainer.builder: what `build_training` makes of a spec (a tiny random BERT, small JSONL tasks):
splits per task, AdamW with HF's no-decay groups, linear warmup and decay to 0, chance scores of a constant
predictor, the normalizedMse loss scale, determinism in the seed and the DistributedSetupError cases under a
fake two-rank group; and the step helpers (`optimizer_step`, `last_layer_grad_norms`, `last_shared_weight`)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from asyncmtl.spec import parse_run
from asyncmtl_trainer import builder
from asyncmtl_trainer.builder import build_training, last_layer_grad_norms, last_shared_weight, optimizer_step
from asyncmtl_trainer.distributed import DistributedSetupError, Ranks
from asyncmtl_trainer.sharding import StateIO
from tests.conftest import run_doc

# hand-picked labels, so that every expectation below is computed from them, not from the code under test
BINARY_TRAIN, BINARY_VAL = [1, 1, 1, 0, 1, 0], [0, 1, 0, 0, 1]
TOPIC_TRAIN, TOPIC_VAL = [2, 2, 0, 1, 2, 0, 2], [2, 0, 1, 2]
RATING_TRAIN, RATING_VAL = [1.0, 3.0, 5.0, 5.0, 2.0], [2.0, 4.0, 1.0]  # labelRange [1, 5]


def _write(path: Path, labels: list) -> str:
    path.write_text("".join(json.dumps({"text": f"example number {i} says {l}", "label": l}) + "\n"
                            for i, l in enumerate(labels)))
    return str(path)


def _spec(tmp_path: Path, model: Path, *, training: dict | None = None, **spec):
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)

    def data(prefix: str, train: list, val: list, test: list | None = None) -> dict:
        out = {"train": _write(d / f"{prefix}-train.jsonl", train), "validation": _write(d / f"{prefix}-val.jsonl", val)}
        if test is not None:
            out["test"] = _write(d / f"{prefix}-test.jsonl", test)
        return out

    tasks = [
        {"name": "binary", "type": "binary", "metric": "accuracy",
         "data": data("b", BINARY_TRAIN, BINARY_VAL, BINARY_VAL[:3])},
        {"name": "topic", "type": "multiclass", "numLabels": 3, "metric": "accuracy",
         "data": data("t", TOPIC_TRAIN, TOPIC_VAL)},
        {"name": "rating", "type": "regression", "labelRange": [1, 5], "data": data("r", RATING_TRAIN, RATING_VAL)},
    ]
    tr = {"batchSize": 4, "learningRate": 1e-3, "weightDecay": 0.05, "warmup": 2, "maxSteps": 10,
          "validationInterval": 5, "seed": 7, "regressionLoss": "normalizedMse", **(training or {})}
    return parse_run(run_doc(tasks, model=str(model), training=tr, **spec)).spec


def _build(tmp_path: Path, spec, ranks: Ranks = Ranks()):
    return build_training(spec, ranks, StateIO(), workdir=tmp_path / "wd", base_dir=tmp_path, tweeteval_dir=None)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("builder")
    return _build(tmp, _spec(tmp, tiny_model))


def test_every_task_has_its_tokenized_splits_and_test_only_where_there_is_one(built):
    assert {t: len(s) for t, s in built.train.items()} == {"binary": 6, "topic": 7, "rating": 5}
    assert {t: len(s) for t, s in built.val.items()} == {"binary": 5, "topic": 4, "rating": 3}
    assert {t: len(s) for t, s in built.test.items()} == {"binary": 3}
    assert built.train["binary"].labels.tolist() == BINARY_TRAIN
    assert built.train["rating"].labels.tolist() == pytest.approx([(v - 1) / 4 for v in RATING_TRAIN])  # to [0, 1]
    assert set(built.model.heads) == {"binary", "topic", "rating"}
    assert [built.model.heads[t].out_features for t in ("binary", "topic", "rating")] == [2, 3, 1]
    assert built.pad_id == built.tokenizer.pad_token_id
    assert built.seconds > 0


def test_the_optimizer_is_adamw_with_biases_and_layer_norms_undecayed(built):
    opt = built.optimizer
    assert isinstance(opt, torch.optim.AdamW)
    name_of = {id(p): n for n, p in built.model.named_parameters()}
    grouped = [name_of[id(p)] for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(name_of.values())  # every parameter, once
    decay = {name_of[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {name_of[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {g["weight_decay"] for g in opt.param_groups} == {0.05, 0.0}
    assert all(g["initial_lr"] == 1e-3 for g in opt.param_groups)  # training.learningRate, before the schedule
    is_norm_or_bias = lambda n: n.endswith(".bias") or "LayerNorm" in n  # noqa: E731
    assert no_decay == {n for n in name_of.values() if is_norm_or_bias(n)}
    assert decay == {n for n in name_of.values() if not is_norm_or_bias(n)}
    assert {"heads.binary.weight", "encoder.embeddings.word_embeddings.weight"} <= decay
    assert {"heads.binary.bias", "encoder.embeddings.LayerNorm.weight"} <= no_decay


def test_the_learning_rate_warms_up_linearly_then_decays_to_zero_at_max_steps(tmp_path, tiny_model):
    s = _build(tmp_path, _spec(tmp_path, tiny_model))  # its own: the schedule is stepped here
    lrs = []
    for _ in range(10):
        lrs.append(s.scheduler.get_last_lr()[0])
        s.optimizer.step()  # no gradients: nothing moves, only the schedule is exercised
        s.scheduler.step()
    lrs.append(s.scheduler.get_last_lr()[0])
    warmup, total, lr = 2, 10, 1e-3
    expected = [lr * k / warmup if k < warmup else lr * (total - k) / (total - warmup) for k in range(11)]
    assert lrs == pytest.approx(expected)


def _accuracy_of_majority(train: list[int], val: list[int]) -> float:
    majority = max(set(train), key=train.count)
    return 100.0 * sum(v == majority for v in val) / len(val)


def test_chance_is_the_validation_score_of_the_training_prior(built):
    assert built.chance["binary"] == pytest.approx(_accuracy_of_majority(BINARY_TRAIN, BINARY_VAL))
    assert built.chance["topic"] == pytest.approx(_accuracy_of_majority(TOPIC_TRAIN, TOPIC_VAL))
    assert set(built.chance) == {"binary", "topic", "rating"} and math.isfinite(built.chance["rating"])


def test_normalized_mse_divides_a_regression_loss_by_the_training_targets_variance(built):
    targets = [(v - 1) / 4 for v in RATING_TRAIN]
    mean = sum(targets) / len(targets)
    variance = sum((t - mean) ** 2 for t in targets) / len(targets)  # population variance
    assert built.loss_scale == pytest.approx({"rating": variance})


def test_plain_mse_has_no_loss_scale_and_a_constant_target_is_floored(tmp_path, tiny_model):
    spec = _spec(tmp_path, tiny_model, training={"regressionLoss": "mse"})
    assert _build(tmp_path, spec).loss_scale == {}
    spec = _spec(tmp_path, tiny_model)
    _write(tmp_path / "data" / "r-train.jsonl", [3.0] * 4)  # constant: variance 0
    scale = _build(tmp_path, spec).loss_scale["rating"]
    assert 0 < scale <= 1e-5


def test_setup_is_deterministic_in_the_seed(tmp_path, tiny_model, built):
    same = _build(tmp_path, _spec(tmp_path, tiny_model))
    for name, p in built.model.state_dict().items():
        assert torch.equal(p, same.model.state_dict()[name]), name
    other = _build(tmp_path, _spec(tmp_path, tiny_model, training={"seed": 8}))
    assert not torch.equal(built.model.heads["binary"].weight, other.model.heads["binary"].weight)


def test_on_cpu_fp16_loss_scaling_is_disabled_and_fp32_does_not_autocast(built):
    assert not built.scaler.is_enabled()
    with built.autocast():
        assert not torch.is_autocast_enabled("cpu")
        x = torch.ones(2, 2) @ torch.ones(2, 2)
    assert x.dtype == torch.float32


def test_bf16_precision_autocasts_the_forward_pass(tmp_path, tiny_model):
    s = _build(tmp_path, _spec(tmp_path, tiny_model, training={"precision": "bf16"}))
    with s.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_the_forward_module_of_one_process_is_the_model_s_task_forward(built):
    ids = torch.tensor([[101, 2023, 102]])
    mask = torch.ones_like(ids)
    built.model.eval()
    pooled, logits = built.forward(ids, mask, None, {"topic": torch.tensor([0])})
    assert torch.equal(pooled, built.model(ids, mask))
    assert torch.equal(logits["topic"], built.model.head("topic", pooled[[0]]))


def test_the_last_shared_weight_is_the_encoder_s_last_linear_layer(built):
    assert built.last_shared is built.model.encoder.encoder.layer[-1].output.dense.weight


# ---- under torchrun (a fake two-rank group; no process group is started) ----------------------------------

def test_a_batch_smaller_than_the_ranks_is_a_setup_error(tmp_path, tiny_model):
    spec = _spec(tmp_path, tiny_model, training={"batchSize": 1})
    with pytest.raises(DistributedSetupError, match="batchSize: 1 is smaller than the 2 ranks"):
        _build(tmp_path, spec, Ranks(rank=0, world=2))


def _methods(tmp_path, model, data_parallel: bool) -> list[str]:
    from asyncmtl_trainer.weighting import make_weighting, registered

    return [m for m in sorted(registered())
            if make_weighting(_spec(tmp_path, model, weighting={"method": m})).data_parallel is data_parallel]


def test_a_weighting_method_that_is_not_data_parallel_is_a_setup_error_under_torchrun(tmp_path, tiny_model,
                                                                                      monkeypatch):
    # without a process group DDP cannot wrap the model: replication is `distribute`'s concern, not this check's
    monkeypatch.setattr(builder, "distribute", lambda model, forward, ranks, io: forward)
    methods = _methods(tmp_path, tiny_model, data_parallel=False)
    assert methods, "no weighting method needs the whole batch on one process"
    method = methods[0]
    with pytest.raises(DistributedSetupError, match=f"spec.weighting.method: {method} .*2 ranks"):
        _build(tmp_path, _spec(tmp_path, tiny_model, weighting={"method": method}), Ranks(rank=1, world=2))
    ok = _methods(tmp_path, tiny_model, data_parallel=True)
    assert "uniform" in ok
    _build(tmp_path, _spec(tmp_path, tiny_model, weighting={"method": "uniform"}), Ranks(rank=1, world=2))


# ---- step helpers -------------------------------------------------------------------------------------------

def _sgd_setup(max_norm: float | None, scale: float):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    before = [p.detach().clone() for p in model.parameters()]
    (scale * model(torch.ones(2, 4)).sum()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer_step(model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), max_norm)
    return model, opt, before, grads


def test_optimizer_step_clips_the_global_gradient_norm_steps_the_schedule_and_zeroes_the_gradients():
    model, opt, before, grads = _sgd_setup(max_norm=0.1, scale=100.0)
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    assert norm > 0.1
    for p, b, g in zip(model.parameters(), before, grads):
        assert torch.allclose(p.detach(), b - 0.5 * g * (0.1 / norm), atol=1e-6)  # SGD on the clipped gradient
        assert p.grad is None
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 / 2)  # the schedule moved on one step


def test_optimizer_step_without_a_norm_does_not_clip():
    model, _, before, grads = _sgd_setup(max_norm=None, scale=100.0)
    for p, b, g in zip(model.parameters(), before, grads):
        assert torch.allclose(p.detach(), b - 0.5 * g, atol=1e-5)


def test_last_layer_grad_norms_are_each_task_s_gradient_norm_on_w_and_keep_the_graph():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 3))
    x = torch.randn(5, 3)
    losses = {"a": (x @ w).pow(2).mean(), "b": (x @ w).sum()}
    got = last_layer_grad_norms(losses, w)
    for task, loss in losses.items():
        (g,) = torch.autograd.grad(loss, w, retain_graph=True)
        assert got[task] == pytest.approx(float(g.norm()))
    sum(losses.values()).backward()  # the graph is still there for the step's own backward
    assert w.grad is not None
    assert last_layer_grad_norms(losses, None) is None


def test_last_shared_weight_skips_the_pooler_and_is_none_without_a_linear_layer():
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(2, 2)
            self.norm = torch.nn.LayerNorm(2)
            self.last = torch.nn.Linear(2, 2)
            self.pooler = torch.nn.Sequential(torch.nn.Linear(2, 2))

    enc = Encoder()
    assert last_shared_weight(enc) is enc.last.weight
    assert last_shared_weight(torch.nn.Sequential(torch.nn.LayerNorm(2), torch.nn.ReLU())) is None
