"""How the trainer's model is replicated or sharded over ranks, and how its state is read and restored.

`training.parallelism: ddp` (the default) keeps a whole replica on every rank (`DistributedDataParallel`);
`fsdp` shards parameters, gradients and optimizer state over the ranks with PyTorch FSDP2
(`torch.distributed.fsdp.fully_shard`: each transformer layer and each task head is a unit, the
multi-task model the root), for encoders that do not fit one GPU.

Checkpoints and the exported model keep one on-disk format whatever the parallelism: full (unsharded)
weights by parameter name, and the optimizer state as `torch.optim.Optimizer.state_dict()` writes it
(parameters numbered in param-group order). Under FSDP the full state is gathered to rank 0's host
memory with PyTorch's distributed state-dict API (`torch.distributed.checkpoint.state_dict`,
`full_state_dict=True, cpu_offload=True`) and restored with `set_model_state_dict` /
`set_optimizer_state_dict` from the full state on every rank, so a run may resume under either
parallelism. Source: https://pytorch.org/docs/stable/distributed.checkpoint.html (state_dict utilities),
https://pytorch.org/docs/stable/distributed.fsdp.fully_shard.html.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from asyncmtl_trainer.distributed import Ranks
from asyncmtl_trainer.model import MultiTaskModel


def shard_model(model: MultiTaskModel) -> None:
    """Apply FSDP2 in place: every transformer layer of the encoder and every task head become an FSDP
    unit (all-gathered for its forward, gradients reduce-scattered after its backward), the model the root
    (embeddings, pooling, the rest). Call under an initialised process group, before building the optimizer.

    Every rank must then run the same units in the same order (each all-gather is a collective, matched by
    its position in the sequence): the trainer runs each task head of the global batch on every rank, in the
    spec's task order, on zero rows where a rank's slice has none, and `Evaluator` pads the ranks' shares
    to the same number of batches.
    """
    from torch.distributed.fsdp import fully_shard

    for layer in transformer_layers(model.encoder):
        fully_shard(layer)
    for head in model.heads.values():
        fully_shard(head)
    fully_shard(model)


def distribute(model: MultiTaskModel, forward: nn.Module, ranks: Ranks, io: "StateIO") -> nn.Module:
    """Make the model data-parallel over `ranks`, in place where it shards: returns the module the training step
    calls (`forward`, the `TaskForward` over `model`, or its `DistributedDataParallel` wrapper).

    One process: unchanged. `io.sharded` (`training.parallelism: fsdp`): `shard_model`. Otherwise DDP
    (https://pytorch.org/docs/stable/generated/torch.nn.parallel.DistributedDataParallel.html): a whole replica
    per rank, gradients all-reduced; `find_unused_parameters`, since a rank's slice may hold no row of some
    task and its head is then unused there. Call after the model is on its device and before the optimizer.
    """
    if io.sharded:
        shard_model(model)
        return forward
    if not ranks.distributed:
        return forward
    from torch.nn.parallel import DistributedDataParallel

    device = ranks.device
    return DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def transformer_layers(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's repeated blocks (BERT-style `encoder.layer`, else any `layers`/`layer` ModuleList); [] if none."""
    for path in ("encoder.layer", "layers", "layer", "transformer.layer"):
        m: Any = encoder
        for part in path.split("."):
            m = getattr(m, part, None)
            if m is None:
                break
        if isinstance(m, nn.ModuleList):
            return list(m)
    return []


def parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in param-group order: index i is parameter i of
    `optimizer.state_dict()`."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _by_index(fqn_state: dict[str, Any], names: list[str], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer state keyed by parameter name (the distributed state-dict API's) as `Optimizer.state_dict()`'s
    (its hyperparameters' tuples, such as Adam's betas, which that API turns into lists, as tuples again)."""
    index = {n: i for i, n in enumerate(names)}
    groups = [{**{k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in g.items()},
               "params": [index[n] for n in g["params"]]}
              for g, live in zip(fqn_state["param_groups"], optimizer.param_groups)]
    return {"state": {index[n]: s for n, s in fqn_state["state"].items()}, "param_groups": groups}


def _by_name(indexed: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of `_by_index`."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in indexed["param_groups"]]
    return {"state": {names[i]: s for i, s in indexed["state"].items()}, "param_groups": groups}


@dataclass(frozen=True)
class StateIO:
    """Reads and restores the model's and optimizer's state in the checkpoint format (see the module docstring).

    sharded: the model is FSDP-sharded; every method is then a collective (every rank calls it).
    """

    sharded: bool = False

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full weights by name (on the model's device, or CPU when sharded; empty on ranks > 0 when sharded)."""
        if not self.sharded:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`optimizer.state_dict()` of the whole model (empty on ranks > 0 when sharded)."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return _by_index(full, parameter_names(model, optimizer), optimizer) if full else {}

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Restore full weights by name (every rank passes the whole state when sharded).

        Raises:
            RuntimeError: missing or unexpected names, or mismatched shapes.
        """
        if not self.sharded:
            model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True))

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Restore an `optimizer.state_dict()` of the whole model (every rank passes it when sharded).

        Parameters without state (never stepped, such as an encoder's unused pooler) keep none, as with
        `Optimizer.load_state_dict`.

        Raises:
            ValueError: the state's parameter groups do not match the optimizer's (`Optimizer.load_state_dict`'s rule).
        """
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if [len(g["params"]) for g in state["param_groups"]] != [len(g["params"]) for g in optimizer.param_groups]:
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of optimizer's group")
        tuples = [{k for k, v in g.items() if isinstance(v, tuple)} for g in optimizer.param_groups]
        set_optimizer_state_dict(model, optimizer, _by_name(state, parameter_names(model, optimizer)),
                                 options=StateDictOptions(full_state_dict=True, strict=False))
        for g, keys in zip(optimizer.param_groups, tuples):  # the API loads tuples (Adam's betas) as lists
            g.update({k: tuple(g[k]) for k in keys})
