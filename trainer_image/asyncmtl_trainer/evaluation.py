"""Predictions and metrics of the model on a split, data-parallel across the trainer's ranks.

Each rank runs its contiguous share of the split (`Ranks.slice_bounds`) in length-sorted batches
(`batching.eval_batches`) and the shares are gathered, so every rank holds the whole split's
outputs and computes the same metrics (scikit-learn, `asyncmtl_trainer.metrics`). With a sharded
model (FSDP) every forward pass is a collective, so the ranks run the same number of batches: a rank
whose share needs fewer runs the rest on a one-example batch and discards the outputs.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

import numpy as np
import torch

from asyncmtl.spec import TaskSpec
from asyncmtl_trainer.batching import TokenizedSplit, eval_batches, pad_batch, subset
from asyncmtl_trainer.distributed import Ranks
from asyncmtl_trainer.metrics import compute_metrics
from asyncmtl_trainer.model import MultiTaskModel


class Evaluator:
    """Runs `model`'s task heads over splits.

    Args:
        model: the (unwrapped) multi-task model. ranks: the process group (a world of one: no gathering).
        batch_size: examples per batch on this rank (`training.evalBatchSizePerRank`). pad_id: the tokenizer's pad id.
        autocast: returns the forward passes' autocast context (`training.precision`).
        lockstep: every rank runs the same number of forward passes (the model is FSDP-sharded).
    """

    def __init__(self, model: MultiTaskModel, ranks: Ranks, batch_size: int, pad_id: int,
                 autocast: Callable[[], AbstractContextManager], lockstep: bool = False) -> None:
        self.model = model
        self.ranks = ranks
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.autocast = autocast
        self.lockstep = lockstep

    def batches_per_rank(self, n: int) -> int:
        """Forward passes the largest rank share of n examples needs (batches of `batch_size`)."""
        largest = -(-n // self.ranks.world)
        return -(-largest // self.batch_size)

    @torch.no_grad()
    def predict(self, task: TaskSpec, split: TokenizedSplit) -> np.ndarray:
        """Raw outputs for every example of `split`, in split order: (n, num_labels) float32, the same on every rank.

        Raises:
            RuntimeError: the ranks' shares did not cover the split (a rank diverged).
        """
        self.model.eval()
        device = self.ranks.device
        start, end = self.ranks.slice_bounds(len(split))
        part = subset(split, start, end)
        out = torch.empty(len(part), int(task.num_labels or 1), dtype=torch.float32)
        runs = 0
        for idx, ids, mask, tt in eval_batches(part, self.batch_size, self.pad_id):
            with self.autocast():
                pooled = self.model(ids.to(device), mask.to(device), tt.to(device))
                out[idx] = self.model.head(task.name, pooled).float().cpu()
            runs += 1
        if self.lockstep and len(split):
            first = [(split.input_ids[0], split.token_type_ids[0] if split.token_type_ids is not None else None)]
            ids, mask, tt = (t.to(device) for t in pad_batch(first, self.pad_id))
            for _ in range(self.batches_per_rank(len(split)) - runs):  # the other ranks' extra collectives
                with self.autocast():
                    self.model.head(task.name, self.model(ids, mask, tt))
        return self.ranks.gather_rows(np.arange(start, end), out.numpy(), len(split))

    def evaluate(self, task: TaskSpec, split: TokenizedSplit) -> dict[str, float]:
        """All metrics of `task` on `split` (0-100)."""
        return compute_metrics(task.type, self.predict(task, split), split.labels.numpy())
