"""asyncmtl_trainer.sharding on one CPU process (no process group): the checkpoint format of an unsharded
`StateIO` (full weights by name; `Optimizer.state_dict()` with parameters numbered in param-group order), the
conversion between that numbering and the distributed state-dict API's by-name optimizer state (tuples such as
Adam's betas kept tuples), `parameter_names`, `transformer_layers` and `distribute` for a world of one."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from asyncmtl_trainer.distributed import Ranks
from asyncmtl_trainer.model import MultiTaskModel, TaskForward
from asyncmtl_trainer.sharding import StateIO, _by_index, _by_name, distribute, parameter_names, transformer_layers


class Toy(nn.Module):
    """Two parameter groups' worth of parameters, one of them never stepped (no gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 2)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.out(self.norm(self.body(x)))


def _toy(seed: int = 0):
    torch.manual_seed(seed)
    model = Toy()
    groups = [{"params": [model.out.weight, model.body.weight, model.unused.weight], "weight_decay": 0.1},
              {"params": [model.norm.weight, model.body.bias, model.out.bias, model.norm.bias, model.unused.bias],
               "weight_decay": 0.0}]
    return model, torch.optim.AdamW(groups, lr=1e-2, betas=(0.8, 0.95))


def _train(model, opt, steps: int = 2, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model(torch.randn(5, 3, generator=g)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert a["state"][k].keys() == b["state"][k].keys()
        for name, v in a["state"][k].items():
            assert torch.equal(v, b["state"][k][name]), (k, name)


def test_parameter_names_are_the_optimizer_s_parameters_in_param_group_order():
    model, opt = _toy()
    assert parameter_names(model, opt) == ["out.weight", "body.weight", "unused.weight", "norm.weight", "body.bias",
                                           "out.bias", "norm.bias", "unused.bias"]


def test_index_i_of_the_optimizer_state_is_parameter_names_i():
    model, opt = _toy()
    for n, p in model.named_parameters():  # a gradient that names its parameter: exp_avg = (1 − β1) · g
        p.grad = torch.full_like(p, float(len(n)) + (0.5 if "bias" in n else 0.0))
    opt.step()
    names, state = parameter_names(model, opt), opt.state_dict()["state"]
    params = dict(model.named_parameters())
    for i, n in enumerate(names):
        assert state[i]["exp_avg"].shape == params[n].shape
        g = len(n) + (0.5 if "bias" in n else 0.0)
        assert torch.allclose(state[i]["exp_avg"], torch.full_like(params[n], 0.2 * g))


def test_the_by_name_form_keys_state_and_groups_by_parameter_name():
    model, opt = _toy()
    _train(model, opt)
    indexed = opt.state_dict()
    names = parameter_names(model, opt)
    by_name = _by_name(indexed, names)
    assert [g["params"] for g in by_name["param_groups"]] == [names[:3], names[3:]]
    assert set(by_name["state"]) == {n for n in names if "unused" not in n}  # never stepped: no state
    for i, s in indexed["state"].items():
        assert all(torch.equal(v, by_name["state"][names[i]][k]) for k, v in s.items())
    assert [g["weight_decay"] for g in by_name["param_groups"]] == [0.1, 0.0]


def test_by_index_inverts_by_name_and_turns_listed_tuples_back_into_tuples():
    model, opt = _toy()
    _train(model, opt)
    indexed = opt.state_dict()
    names = parameter_names(model, opt)
    as_api = copy.deepcopy(_by_name(indexed, names))
    for g in as_api["param_groups"]:  # the distributed state-dict API hands tuples back as lists
        g["betas"] = list(g["betas"])
    back = _by_index(as_api, names, opt)
    _assert_same_state(back, indexed)
    assert all(type(g["betas"]) is tuple for g in back["param_groups"])
    fresh_model, fresh_opt = _toy(seed=5)
    fresh_opt.load_state_dict(back)  # what a checkpoint's reader does with it
    _assert_same_state(fresh_opt.state_dict(), indexed)


def test_an_unsharded_state_io_reads_and_restores_the_model_and_optimizer_exactly():
    io = StateIO()
    model, opt = _toy()
    _train(model, opt)
    weights, ostate = copy.deepcopy(io.model_state(model)), copy.deepcopy(io.optimizer_state(model, opt))
    assert weights.keys() == model.state_dict().keys()
    _assert_same_state(ostate, opt.state_dict())

    other, other_opt = _toy(seed=9)
    io.load_model_state(other, weights)
    io.load_optimizer_state(other, other_opt, ostate)
    for n, p in other.state_dict().items():
        assert torch.equal(p, weights[n]), n
    # the restored pair trains on exactly as the original does
    _train(model, opt, seed=3)
    _train(other, other_opt, seed=3)
    for (n, p), q in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(p, q), n
    assert "unused.weight" not in {parameter_names(other, other_opt)[i] for i in other_opt.state_dict()["state"]}


def test_restoring_weights_with_missing_or_unexpected_names_or_wrong_shapes_raises():
    io = StateIO()
    model, _ = _toy()
    full = model.state_dict()
    with pytest.raises(RuntimeError):
        io.load_model_state(model, {k: v for k, v in full.items() if k != "out.bias"})
    with pytest.raises(RuntimeError):
        io.load_model_state(model, {**full, "extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError):
        io.load_model_state(model, {**full, "out.weight": torch.zeros(5, 5)})


def test_restoring_an_optimizer_state_of_other_groups_raises_value_error():
    io = StateIO()
    model, opt = _toy()
    _train(model, opt)
    state = opt.state_dict()
    state["param_groups"][0]["params"] = state["param_groups"][0]["params"][:2]
    _, fresh = _toy()
    with pytest.raises(ValueError):
        io.load_optimizer_state(model, fresh, state)


def test_transformer_layers_finds_the_repeated_blocks(tiny_model):
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(tiny_model), local_files_only=True)
    layers = transformer_layers(bert)
    assert len(layers) == bert.config.num_hidden_layers == 2
    assert all(a is b for a, b in zip(layers, bert.encoder.layer))

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    plain = Plain()
    assert transformer_layers(plain) == list(plain.layers)
    assert transformer_layers(nn.Sequential(nn.Linear(2, 2))) == []


def test_distribute_leaves_a_single_process_model_as_it_is(tiny_model):
    from transformers import AutoModel

    model = MultiTaskModel(AutoModel.from_pretrained(str(tiny_model), local_files_only=True), {"a": 2})
    forward = TaskForward(model)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    assert distribute(model, forward, Ranks(), StateIO()) is forward
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
