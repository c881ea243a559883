"""One optimizer step on a mixed-task batch: draw, forward, per-task losses, the weighting method's backward,
the optimizer step, the whole batch's losses.

The draw is a pure function of (seed, step, rewinds) and the tasks' phases (`batching.TaskSampler`), the same
on every rank; each rank trains its slice (`batching.rank_batch`) and DDP or FSDP averages the gradients.
"""
from __future__ import annotations

from typing import Mapping

import torch

from asyncmtl.lifecycle import TaskPhase
from asyncmtl_trainer.batching import Batch, drawn_rows, rank_batch
from asyncmtl_trainer.builder import TrainingSetup, last_layer_grad_norms, optimizer_step
from asyncmtl_trainer.distributed import Ranks
from asyncmtl_trainer.exporter import TrainingMeter
from asyncmtl_trainer.losses import TaskLosses


class TrainingStep:
    """Draws and trains the steps of one run.

    Args:
        setup: what `builder.build_training` made. losses: the per-task loss assembly (soft labels included).
        meter: where each step's whole-batch losses go for export.
        max_grad_norm: `training.maxGradNorm` (None: no clipping).
        every_head: under FSDP, the spec's task order (every rank runs every head of the global batch, in it).
    """

    def __init__(self, setup: TrainingSetup, losses: TaskLosses, meter: TrainingMeter, max_grad_norm: float | None,
                 every_head: list[str] | None = None) -> None:
        self.s, self.losses, self.meter = setup, losses, meter
        self.max_grad_norm, self.every_head = max_grad_norm, every_head

    def batch(self, ranks: Ranks, step: int, rewinds: int, active: list[str], scale: dict[str, float]) -> Batch:
        """`ranks`' slice of step `step`'s mixed batch over the `active` tasks (`scale`: sampling-weight
        multipliers, `task_state.kd_sampling_scale`); the global draw is the same on every rank."""
        draw = self.s.sampler.draw(step, rewinds, active, scale)
        return rank_batch(draw, self.s.train, self.s.pad_id, ranks, self.every_head)

    def __call__(self, ranks: Ranks, batch: Batch, step: int, modes: Mapping[str, TaskPhase]) -> dict[str, torch.Tensor]:
        """One optimizer step on `batch` (the slice of this rank of `ranks` under torchrun) with the tasks' `modes`, at optimizer
        step `step` (before it is counted). Returns task -> the whole global batch's loss (detached, 0-dim).

        The weighting method owns how the losses become gradients (`Weighting.backward`; the paper's Eq. 3
        sum by default), and learns from them after the step where it does."""
        s, w = self.s, self.s.weighting
        s.forward.train()
        batch = batch.to(ranks.device)
        with s.autocast():
            pooled, logits = s.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids, batch.rows)
            losses = self.losses(batch, modes, step, s.model, pooled, logits)
        grad_norms = last_layer_grad_norms(losses, s.last_shared) if w.needs_grad_norms else None
        w.backward(losses, pooled, s.scaler, s.model.encoder.parameters())
        optimizer_step(s.model, s.optimizer, s.scheduler, s.scaler, self.max_grad_norm)
        w.step()
        whole = self.losses.whole_batch(batch, losses, modes, ranks)
        if w.learns:
            w.update(step, {t: float(l) for t, l in whole.items()}, grad_norms)
        if w.needs_losses_after_step:  # FAMO: the same batch's losses after the update
            with torch.no_grad(), s.autocast():
                after = self.losses(batch, modes, step, s.model,
                                    s.model(batch.input_ids, batch.attention_mask, batch.token_type_ids))
            w.after_step(after)
        kinds = {t: "kd" if modes[t] == TaskPhase.KD else "supervised" for t in whole}  # Eq. 2 or Eq. 1
        self.meter.add(whole, kinds, drawn_rows(batch))
        return whole
