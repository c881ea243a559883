"""Everything a training run is made of, built from its spec: data, tokenizer, model (replicated or sharded
over the ranks), optimizer, scheduler, gradient scaler, weighting method, sampler, evaluator.

`build_training` is the trainer's setup; it is deterministic in `training.seed` (the same initial weights
on every rank, then a dropout stream per rank).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from asyncmtl.data import load_task_splits
from asyncmtl.spec import RunSpec, TaskType
from asyncmtl_trainer.batching import TaskSampler, TokenizedSplit, tokenize_split
from asyncmtl_trainer.distributed import DistributedSetupError, Ranks
from asyncmtl_trainer.evaluation import Evaluator
from asyncmtl_trainer.metrics import chance_scores
from asyncmtl_trainer.model import MultiTaskModel, TaskForward, build_model
from asyncmtl_trainer.sharding import StateIO, distribute
from asyncmtl_trainer.weighting import Weighting, make_weighting

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm", "norm.weight")  # parameters without weight decay (as HF)


@dataclass
class TrainingSetup:
    """What `build_training` made.

    Attributes:
        model: the multi-task model on the rank's device. forward: the module a training step calls (a
            `TaskForward`, wrapped in DDP under torchrun with `parallelism: ddp`). tokenizer: its tokenizer.
        train, val, test: task -> tokenized split (`test` only for tasks that have one).
        optimizer: AdamW; scheduler: linear warmup and decay to 0 over `training.maxSteps` (HF
            `get_linear_schedule_with_warmup`); scaler: fp16 loss scaling (disabled otherwise).
        weighting: the task-weighting method (`weighting.method`). sampler: the mixed-batch sampler.
        evaluator: validation/test scoring. chance: task -> validation score (0-100) of a constant predictor.
        loss_scale: regression task -> divisor of its loss (`training.regressionLoss: normalizedMse`).
        last_shared: GradNorm's W (the encoder's last Linear weight), or None. pad_id: the tokenizer's pad id.
        autocast: a context manager factory for the forward pass (`training.precision`).
        seconds: wall-clock seconds the setup took.
    """

    model: MultiTaskModel
    forward: torch.nn.Module
    tokenizer: Any
    train: dict[str, TokenizedSplit]
    val: dict[str, TokenizedSplit]
    test: dict[str, TokenizedSplit]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    weighting: Weighting
    sampler: TaskSampler
    evaluator: Evaluator
    chance: dict[str, float]
    loss_scale: dict[str, float]
    last_shared: torch.nn.Parameter | None
    pad_id: int
    autocast: Callable[[], Any]
    seconds: float


def build_training(spec: RunSpec, ranks: Ranks, io: StateIO, *, workdir: Path, base_dir: Path | None,
                   tweeteval_dir: str | None) -> TrainingSetup:
    """Load data (validated), tokenizer and model; make the model data-parallel (`sharding.distribute`);
    build optimizer, scheduler and weighting method.

    Args:
        workdir: scratch space (the token cache goes in `workdir/cache`). base_dir: folder that relative
            data and model paths resolve against. tweeteval_dir: TweetEval root (or `$TWEETEVAL_DIR`).
    Raises:
        DistributedSetupError: under torchrun, a batch smaller than the number of ranks, or a weighting
            method that is not data-parallel.
        asyncmtl.data.DataError, asyncmtl_trainer.model.ModelLoadError: bad data or model.
    """
    from transformers import get_linear_schedule_with_warmup

    tr = spec.training
    if ranks.distributed and tr.batch_size < ranks.world:
        raise DistributedSetupError(f"spec.training.batchSize: {tr.batch_size} is smaller than the "
                                    f"{ranks.world} ranks it is split over")
    torch.manual_seed(tr.seed)
    np.random.seed(tr.seed)
    t0 = time.perf_counter()
    model, tokenizer, _ = build_model(spec, base_dir)
    model.to(ranks.device)
    if ranks.distributed:  # the same initial weights everywhere; each rank its own dropout stream
        torch.manual_seed(tr.seed + ranks.rank)
    forward = distribute(model, TaskForward(model), ranks, io)
    pad_id = int(tokenizer.pad_token_id or 0)
    autocast = _autocast_factory(ranks.device, tr.precision)
    evaluator = Evaluator(model, ranks, tr.eval_batch_size_per_rank, pad_id, autocast, lockstep=io.sharded)
    cache = workdir / "cache"
    train: dict[str, TokenizedSplit] = {}
    val: dict[str, TokenizedSplit] = {}
    test: dict[str, TokenizedSplit] = {}
    for t in spec.tasks:
        splits = load_task_splits(t, base_dir=base_dir, tweeteval_dir=tweeteval_dir,
                                  endpoint_url=spec.storage.endpoint_url)
        train[t.name] = tokenize_split(t, splits["train"], tokenizer, spec.model.max_length, cache)
        val[t.name] = tokenize_split(t, splits["validation"], tokenizer, spec.model.max_length, cache)
        if "test" in splits:
            test[t.name] = tokenize_split(t, splits["test"], tokenizer, spec.model.max_length, cache)
    sampler = TaskSampler({n: len(s) for n, s in train.items()}, {t.name: t.sampling_weight for t in spec.tasks},
                          tr.batch_size, tr.seed)
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not any(k in n for k in NO_DECAY)], "weight_decay": tr.weight_decay},
        {"params": [p for n, p in named if any(k in n for k in NO_DECAY)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=tr.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, tr.warmup, tr.max_steps)
    scaler = torch.amp.GradScaler(enabled=(tr.precision == "fp16" and ranks.device.type == "cuda"))
    weighting = make_weighting(spec)
    if ranks.distributed and not weighting.data_parallel:
        raise DistributedSetupError(
            f"spec.weighting.method: {spec.weighting.method} needs every task's gradient of the whole batch "
            f"on one process; under torchrun ({ranks.world} ranks) use uniform, static, muppet or dwa")
    chance: dict[str, float] = {}
    loss_scale: dict[str, float] = {}
    for t in spec.tasks:
        chance[t.name] = chance_scores(t.type, int(t.num_labels or 1), train[t.name].labels.numpy(),
                                       val[t.name].labels.numpy())[t.metric.value]
        if t.type is TaskType.regression and tr.regression_loss == "normalizedMse":
            # MSE / Var(training targets): the training mean costs 1 (floor: a constant training split)
            loss_scale[t.name] = max(float(train[t.name].labels.float().var(unbiased=False)), 1e-6)
    return TrainingSetup(model=model, forward=forward, tokenizer=tokenizer, train=train, val=val, test=test,
                         optimizer=optimizer, scheduler=scheduler, scaler=scaler, weighting=weighting, sampler=sampler,
                         evaluator=evaluator, chance=chance, loss_scale=loss_scale,
                         last_shared=last_shared_weight(model.encoder), pad_id=pad_id, autocast=autocast,
                         seconds=time.perf_counter() - t0)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   scaler: torch.amp.GradScaler, max_grad_norm: float | None) -> None:
    """After the backward pass: clip the gradients' global norm to `max_grad_norm` (unscaled first; None: no
    clipping), step the optimizer through the fp16 scaler, step the scheduler, zero the gradients."""
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def last_layer_grad_norms(losses: dict[str, torch.Tensor], weight: torch.nn.Parameter | None) -> dict[str, float] | None:
    """‖∇_W L_t‖ per task on the last shared layer W (`last_shared_weight`), detached: GradNorm's analytic
    update reads them (Chen et al. 2018). Keeps the graph for the backward pass. None when there is no W."""
    if weight is None:
        return None
    return {t: float(torch.linalg.vector_norm(torch.autograd.grad(l, weight, retain_graph=True)[0]))
            for t, l in losses.items()}


def _autocast_factory(device: torch.device, precision: str) -> Callable[[], Any]:
    """`training.precision` as an autocast context factory (bf16/fp16; fp32: autocast disabled)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return lambda: torch.autocast(device.type, enabled=False)
    return lambda: torch.autocast(device.type, dtype=dtype)


def last_shared_weight(encoder: torch.nn.Module) -> torch.nn.Parameter | None:
    """The weight of the encoder's last Linear layer on the path to our pooling (the last
    transformer layer's output projection; BERT's pooler is skipped, we never use it):
    GradNorm's W, the last shared layer."""
    last = None
    for name, m in encoder.named_modules():
        if isinstance(m, torch.nn.Linear) and "pooler" not in name:
            last = m
    return last.weight if last is not None else None
