"""The AsyncMTL trainer (entry point `asyncmtl-train`).

Trains one shared encoder with a head per task on mixed-task batches, minimising the sum of
the task losses (paper Eq. 3): supervised losses (Eq. 1) for tasks still training, KD losses
(Eq. 2) against soft labels for converged tasks. It validates every `validationInterval`
steps, checkpoints at each validation step, exports sampling-proof metrics, and obeys the
control file (see `asyncmtl.control`): rewind on `converged`, switch to KD on
`softLabelsReady`, final evaluation on `stop`. It knows nothing of Kubernetes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asyncmtl import termination
from asyncmtl.artifacts import (FINAL, CheckpointScore, FinalReport, ValidationRecord, read_best_scores,
                                write_best_scores, write_final)
from asyncmtl.control import ControlDocument, read_control_file
from asyncmtl.core.convergence import BestTracker, Track, has_converged
from asyncmtl.core.convergence import rule_for
from asyncmtl.data import load_task_splits
from asyncmtl.logs import configure, run_logger
from asyncmtl.lifecycle import LEARNING, TaskPhase
from asyncmtl.spec import RunSpec, TaskType
from asyncmtl.storage import RunStorage
from asyncmtl.storage_factory import open_run_storage
from asyncmtl_trainer.batching import TaskSampler, TokenizedSplit, draw_width, make_batch, tokenize_split
from asyncmtl_trainer.checkpoint import AsyncCheckpointer, Checkpointer, CheckpointState, checkpoints_to_keep, rng_state
from asyncmtl_trainer.control_protocol import TaskControl, apply_generation, replay
from asyncmtl_trainer.distributed import DistributedSetupError, Ranks
from asyncmtl_trainer.evaluation import Evaluator
from asyncmtl_trainer.exporter import TrainerExporter
from asyncmtl_trainer.final import export_model, final_report
from asyncmtl_trainer.history import HistoryLog
from asyncmtl_trainer.losses import bam_loss, kd_loss, supervised_loss
from asyncmtl_trainer.metrics import chance_scores
from asyncmtl_trainer.model import TaskForward, build_model
from asyncmtl_trainer.sharding import StateIO, shard_model
from asyncmtl_trainer.softlabels import read_soft_labels

LOSS_EXPORT_EVERY = 10  # steps between loss/throughput exports


@dataclass
class TrainerOptions:
    """Where the trainer reads and writes (command-line flags of `asyncmtl-train`).

    Attributes:
        run: run name. namespace: storage namespace (`local` for local runs).
        control_path: the control file (a ConfigMap key mounted as a file on a cluster).
        workdir: scratch space (token cache, checkpoint staging, `trainer.json` with the bound port).
        base_dir: folder that relative data and model paths in the spec resolve against.
        metrics_port: Prometheus port (0 = any free port). resume: continue from the latest checkpoint.
        report_delay_seconds: seconds to sleep after each task's validation report (fault injection for
            tests, from `$ASYNCMTL_TRAINER_REPORT_DELAY`; 0 in normal use).
        checkpoints: write checkpoints (False only for the benchmarks' no-checkpoint baseline).
        async_checkpoints: write them on a background thread (`checkpoint.AsyncCheckpointer`).
    """

    run: str
    namespace: str
    control_path: Path
    workdir: Path
    base_dir: Path | None = None
    tweeteval_dir: str | None = None
    metrics_port: int = 9400
    metrics_addr: str = "0.0.0.0"
    resume: bool = False
    control_poll_seconds: float = 0.5
    report_delay_seconds: float = 0.0  # fault injection (tests): sleep between tasks' validation reports
    checkpoints: bool = True  # False: no checkpoints at all (benchmarks' baseline only: no rewind is possible)
    async_checkpoints: bool = True  # write checkpoints on a background thread (False: inside the step)


class TaskState:
    """What the trainer tracks per task: its control state (phase, pinned step, decided: set only through
    `asyncmtl_trainer.control_protocol`), best-so-far (with previous best) and history."""

    def __init__(self, mode: TaskPhase = TaskPhase.TRAINING) -> None:
        self.mode = mode  # one of asyncmtl.lifecycle.TRAINER_PHASES
        self.best = BestTracker()
        self.prev_best_step: int | None = None
        self.last_step: int | None = None
        self.last_value: float | None = None
        self.history: list[list[float]] = []
        self.validations = 0
        self.pinned_step: int | None = None  # checkpoint the soft labels are made from
        self.decided = False  # a decision barrier on this task's convergence was answered (continual keeps training)

    @property
    def control(self) -> TaskControl:
        return TaskControl(self.mode, self.pinned_step, self.decided)

    @control.setter
    def control(self, c: TaskControl) -> None:
        self.mode, self.pinned_step, self.decided = c.phase, c.pinned_step, c.decided

    def to_json(self) -> dict:
        return {"bestStep": self.best.best_step, "bestValue": self.best.best_value, "prevBestStep": self.prev_best_step,
                "lastStep": self.last_step, "lastValue": self.last_value, "smoothed": self.best.smoothed}

    def restore(self, d: dict, history: list[list[float]]) -> None:
        self.best = BestTracker(best_step=d.get("bestStep"), best_value=d.get("bestValue"), smoothed=d.get("smoothed"))
        self.prev_best_step = d.get("prevBestStep")
        self.last_step, self.last_value = d.get("lastStep"), d.get("lastValue")
        self.history = [list(p) for p in history]


@dataclass(frozen=True)
class ControlTick:
    """What rank 0 broadcasts before every step, so that every rank does the same thing at the same step.

    Attributes:
        generations: (generation, its signals) read from the control file since the last tick, in order.
        release_on_timeout: the decision barrier has waited past `metrics.ackTimeoutSeconds` (rank 0's clock).
    """

    generations: list[tuple[int, list]]
    release_on_timeout: bool = False


class Trainer:
    """One training run, in one process or as one of torchrun's ranks. Construct, `setup()`, then `run()`;
    raises on unrecoverable errors.

    Args:
        ranks: the process group (`asyncmtl_trainer.distributed.init_ranks`); default: one process on
            `spec.training.device`.
    Raises:
        DistributedSetupError: (setup) under torchrun with a weighting method that is not data-parallel, or
            a batch smaller than the number of ranks.
    """

    def __init__(self, spec: RunSpec, opts: TrainerOptions, storage: RunStorage, ranks: Ranks | None = None) -> None:
        self.spec = spec
        self.opts = opts
        self.storage = storage
        self.log = run_logger(__name__, opts.run if ranks is None or ranks.is_coordinator else f"{opts.run}[{ranks.rank}]")
        self.task_specs = {t.name: t for t in spec.tasks}
        self.ranks = ranks or Ranks(device=self._device())
        self.device = self.ranks.device
        first = spec.resolved_strategy.initial_phase(spec.setting)
        self.states = {t.name: TaskState(first) for t in spec.tasks}
        self.soft: dict[str, torch.Tensor] = {}
        self.step = 0
        self.applied_generation = 0
        self.rewinds = 0  # rewinds applied so far along the run's timeline (the batch draw's key)
        self.history = HistoryLog(storage, enabled=self.ranks.is_coordinator)
        self.awaiting: tuple[int, float, list[str]] | None = None  # decision barrier: (generation, since, tasks)
        self.stop_requested = False
        self.exporter = TrainerExporter(opts.run, list(self.task_specs))
        staging = opts.workdir / ("staging" if self.ranks.is_coordinator else f"staging-rank{self.ranks.rank}")
        # FSDP2 shards the model over the ranks (a single process ignores training.parallelism)
        self.state_io = StateIO(sharded=self.ranks.distributed and spec.training.parallelism == "fsdp")
        self.checkpointer = AsyncCheckpointer(storage, staging, background=opts.async_checkpoints, io=self.state_io)
        self._control_sig: tuple | None = None
        self._loss_sums: dict[tuple[str, str], list] = {}
        self._examples_since = 0
        self._train_time = 0.0
        self.best_scores: dict[str, CheckpointScore] = {}
        self.chance: dict[str, float] = {}  # task -> validation score of a constant predictor (0-100)
        self.loss_scale: dict[str, float] = {}  # regression task -> divisor of its loss (normalizedMse)

    # ---- setup -------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        want = self.spec.training.device
        if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
            return torch.device("cuda")
        return torch.device("cpu")

    def setup(self) -> None:
        """Load data (validated), tokenizer and model; build optimizer and scheduler; under torchrun wrap the
        model in DDP, or shard it with FSDP2 (`training.parallelism: fsdp`)."""
        from transformers import get_linear_schedule_with_warmup

        tr = self.spec.training
        if self.ranks.distributed and tr.batch_size < self.ranks.world:
            raise DistributedSetupError(f"spec.training.batchSize: {tr.batch_size} is smaller than the "
                                        f"{self.ranks.world} ranks it is split over")
        torch.manual_seed(tr.seed)
        np.random.seed(tr.seed)
        t0 = time.perf_counter()
        self.model, self.tokenizer, _ = build_model(self.spec, self.opts.base_dir)
        self.model.to(self.device)
        if self.ranks.distributed:  # the same initial weights everywhere; each rank its own dropout stream
            torch.manual_seed(tr.seed + self.ranks.rank)
        self.forward = TaskForward(self.model)
        if self.state_io.sharded:
            shard_model(self.model)
        elif self.ranks.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # a rank's slice may hold no row of some task: its head is unused there (find_unused_parameters)
            self.forward = DistributedDataParallel(
                self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tr.precision)
        self.evaluator = Evaluator(self.model, self.ranks, tr.eval_batch_size, self.pad_id, self._autocast,
                                   lockstep=self.state_io.sharded)
        cache = self.opts.workdir / "cache"
        self.train: dict[str, TokenizedSplit] = {}
        self.val: dict[str, TokenizedSplit] = {}
        self.test: dict[str, TokenizedSplit] = {}
        for name, t in self.task_specs.items():
            splits = load_task_splits(t, base_dir=self.opts.base_dir, tweeteval_dir=self.opts.tweeteval_dir,
                                      endpoint_url=self.spec.storage.endpoint_url)
            self.train[name] = tokenize_split(t, splits["train"], self.tokenizer, self.spec.model.max_length, cache)
            self.val[name] = tokenize_split(t, splits["validation"], self.tokenizer, self.spec.model.max_length, cache)
            if "test" in splits:
                self.test[name] = tokenize_split(t, splits["test"], self.tokenizer, self.spec.model.max_length, cache)
        self.sampler = TaskSampler({n: len(s) for n, s in self.train.items()},
                                   {n: t.sampling_weight for n, t in self.task_specs.items()}, tr.batch_size, tr.seed)
        no_decay = ("bias", "LayerNorm.weight", "layer_norm", "norm.weight")
        groups = [
            {"params": [p for n, p in self.model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": tr.weight_decay},
            {"params": [p for n, p in self.model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=tr.learning_rate)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, tr.warmup, tr.max_steps)
        self.scaler = torch.amp.GradScaler(enabled=(tr.precision == "fp16" and self.device.type == "cuda"))
        from asyncmtl_trainer.weighting import make_weighting

        self.weighting = make_weighting(self.spec)
        if self.ranks.distributed and not self.weighting.data_parallel:
            raise DistributedSetupError(
                f"spec.weighting.method: {self.spec.weighting.method} needs every task's gradient of the whole batch "
                f"on one process; under torchrun ({self.ranks.world} ranks) use uniform, static, muppet or dwa")
        self.last_shared = _last_shared_weight(self.model.encoder)
        for name, st in self.states.items():
            self.exporter.set_mode(name, st.mode)
            self.exporter.train_size.labels(self.opts.run, name).set(len(self.train[name]))
            t = self.task_specs[name]
            self.chance[name] = chance_scores(t.type, int(t.num_labels or 1), self.train[name].labels.numpy(),
                                              self.val[name].labels.numpy())[t.metric.value]
            self.exporter.chance.labels(self.opts.run, name).set(self.chance[name])
            if t.type is TaskType.regression and tr.regression_loss == "normalizedMse":
                # MSE / Var(training targets): the training mean costs 1 (floor: a constant training split)
                self.loss_scale[name] = max(float(self.train[name].labels.float().var(unbiased=False)), 1e-6)
        self.log.info("setup done in %.1fs: %d tasks, train sizes %s, chance scores %s, device %s, rank %d of %d (%s)",
                      time.perf_counter() - t0, len(self.train), {n: len(s) for n, s in self.train.items()},
                      {n: round(v, 2) for n, v in self.chance.items()}, self.device, self.ranks.rank, self.ranks.world,
                      "fsdp" if self.state_io.sharded else "ddp" if self.ranks.distributed else "one process")

    def serve_metrics(self) -> int:
        """Serve the metrics and write `trainer.json` (rank 0 only: the one Prometheus target). Returns the port."""
        port = self.exporter.serve(self.opts.metrics_port, self.opts.metrics_addr)
        self.opts.workdir.mkdir(parents=True, exist_ok=True)
        info = {"metricsPort": port, "pid": os.getpid()}
        (self.opts.workdir / "trainer.json").write_text(json.dumps(info))
        self.log.info("metrics on port %d", port)
        return port

    # ---- control -----------------------------------------------------------------------------
    def _read_control(self) -> ControlDocument | None:
        p = self.opts.control_path
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self._control_sig:
            return None
        doc = read_control_file(p)
        self._control_sig = sig
        return doc

    def _control_tick(self) -> ControlTick:
        """Rank 0: the generations issued since the last applied one, and whether the barrier timed out."""
        gens: list[tuple[int, list]] = []
        doc = self._read_control()
        if doc is not None and doc.generation > self.applied_generation:
            new = doc.since(self.applied_generation)
            gens = [(g, [s for s in new if s.generation == g]) for g in sorted({s.generation for s in new})]
        timed_out = (self.awaiting is not None and not gens
                     and time.monotonic() - self.awaiting[1] > self.spec.metrics.ack_timeout_seconds)
        return ControlTick(gens, timed_out)

    def poll_control(self) -> ControlTick:
        """Apply the control generations issued since the last applied one, on every rank at this step
        (rank 0 reads the control file and broadcasts; cheap when unchanged). Returns the tick."""
        tick = self.ranks.broadcast(self._control_tick() if self.ranks.is_coordinator else None)
        for gen, signals in tick.generations:
            self.apply_generation(signals, gen)
        return tick

    def apply_generation(self, signals: list, generation: int) -> None:
        """Apply one generation's signals together (`control_protocol.apply_generation`), carry out their
        effects, then acknowledge the generation through the metrics."""
        fx = apply_generation({n: st.control for n, st in self.states.items()}, signals,
                              distills_on_convergence=self.spec.resolved_strategy.distills_on_convergence)
        for task, best in fx.converged:  # in decision order: what a later run's easiest-first order reads. At the
            # task's best step (from the signal, not the step it is applied at), so a trainer resumed from an earlier
            # checkpoint that applies the signal again writes the same record, kept once
            self.history.event("converged", step=best, task=task, rewinds=self.rewinds)
        for name, c in fx.tasks.items():
            self.states[name].control = c
        for task, best in fx.converged:
            self._score_best_checkpoint(task, best)
            if task in fx.continual:
                self.log.info("task %s converged (best step %d): it keeps training on its labels (continual)", task, best)
            else:
                self.exporter.set_mode(task, TaskPhase.DISTILLING)
                self.log.info("task %s converged (best step %d): supervised loss dropped", task, best)
        if fx.rewind_to is not None:
            self.rewind(fx.rewind_to)
        for a in fx.actions:
            self.exporter.set_mode(a.task, self.states[a.task].mode)
            if a.kind == "startTask":
                self.history.event("start", step=self.step, task=a.task, rewinds=self.rewinds)
                self.log.info("task %s started at step %d (sequential)", a.task, self.step)
            elif a.kind == "softLabelsReady":
                self.soft[a.task] = read_soft_labels(a.detail, expected_examples=len(self.train[a.task])).to(self.device)
                self.history.event("kd", step=self.step, task=a.task, rewinds=self.rewinds)
                self.log.info("task %s: soft labels loaded from %s; KD loss from step %d", a.task, a.detail, self.step)
            elif a.kind == "skipDistillation":
                self.log.warning("task %s frozen: %s", a.task, a.detail)
        if fx.stop:
            self.stop_requested = True
            self.log.info("stop signal: final evaluation follows")
        self.applied_generation = generation
        self.exporter.control_step.labels(self.opts.run).set(self.step)
        self.exporter.control_generation.labels(self.opts.run).set(generation)

    def _checkpoints_settled(self) -> None:
        """Every checkpoint saved so far is complete and visible to every rank (rank 0 writes them)."""
        self.checkpointer.wait()
        self.ranks.barrier()

    def _load(self, step: int):
        """Restore checkpoint `step` (weights, optimizer, scheduler, this rank's RNG) on every rank."""
        self._checkpoints_settled()
        state = self.checkpointer.load(step, self.model, self.optimizer, self.scheduler, self.ranks.rank, self.ranks.world)
        if state.weighting:
            self.weighting.load_state_dict(state.weighting)
        return state

    def rewind(self, step: int) -> None:
        """Restore model, optimizer, scheduler, RNG and trackers from the checkpoint at `step`
        and delete later checkpoints (paper Sec. 3: rewind to θ̂_t). Every rank loads the same checkpoint."""
        trained_to = self.step  # the history's rewind event records it: the steps it discards count as run
        state = self._load(step)
        self.step = state.step
        for name, st in self.states.items():
            st.restore(state.trackers.get(name, {}), state.history.get(name, []))
            self.exporter.set_task_state(name, st.last_step, st.last_value, st.best.best_step, st.best.best_value)
        self.ranks.barrier()  # every rank has read it before rank 0 prunes
        if self.ranks.is_coordinator:
            self.checkpointer.prune({s for s in self.checkpointer.steps() if s <= step})
        self.rewinds += 1
        self.exporter.complete_validation(self.step)
        self.exporter.global_step.labels(self.opts.run).set(self.step)
        self.exporter.rewinds.labels(self.opts.run).inc()
        self.history.event("rewind", step=step, rewinds=self.rewinds, from_step=trained_to)
        self.log.info("rewound to step %d", step)

    def _score_best_checkpoint(self, task: str, step: int) -> None:
        """Score `task` on validation and test with the weights of checkpoint `step` (its best)."""
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._checkpoints_settled()
        self.checkpointer.load_weights(step, self.model)
        scores = CheckpointScore(step=step, validation=self.evaluate(task, self.val[task]),
                                 test=self.evaluate(task, self.test[task]) if task in self.test else None)
        self.model.load_state_dict(current)
        self.best_scores[task] = scores
        if self.ranks.is_coordinator:
            write_best_scores(self.storage, self.best_scores)

    # ---- training ----------------------------------------------------------------------------
    def active_tasks(self) -> list[str]:
        return [n for n, s in self.states.items() if s.mode in LEARNING]

    def _sampling_scale(self) -> dict[str, float]:
        w = self.spec.distillation.kd_sampling_weight
        return {n: w for n, s in self.states.items() if s.mode == TaskPhase.KD} if w != 1.0 else {}

    def paused(self) -> bool:
        pending = any(s.mode == TaskPhase.DISTILLING for s in self.states.values())
        if pending and self.spec.distillation.while_pending == "Pause":
            return True
        return not self.active_tasks()

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def task_losses(self, batch, pooled: torch.Tensor, logits: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Per-task losses of a mixed batch: supervised (Eq. 1) or KD (Eq. 2) by the task's mode.

        Under torchrun `batch` is this rank's slice: each task's mean over its local rows is rescaled by
        world · local rows / global rows, so that DDP's average over ranks is the task's mean over the
        whole batch (the single-process loss of the same global batch).

        Args:
            batch: the step's `Batch`; pooled: (batch, hidden) encoder output; logits: task -> (rows, num_labels)
                when the forward pass computed them (else the heads run here).
        Returns:
            task -> 0-dim loss for each task with rows in the batch (tasks in other modes are skipped).
        """
        losses: dict[str, torch.Tensor] = {}
        for task, rows in batch.rows.items():
            mode = self.states[task].mode
            out = logits[task] if logits is not None else self.model.head(task, pooled[rows])
            ttype = self.task_specs[task].type
            scale = self.loss_scale.get(task, 1.0)
            if rows.numel() == 0:  # FSDP: a head of the global batch this rank's slice lacks runs on no row
                loss = out.sum() * 0.0  # (a zero gradient, so every rank reduce-scatters the same parameters)
            elif mode == TaskPhase.TRAINING:
                loss = supervised_loss(ttype, out, batch.labels[task], scale)
            elif mode == TaskPhase.KD:
                teacher = self.soft[task][batch.example_ids[task].to(self.device)]
                if self.spec.resolved_strategy.anneals:  # teacher annealing towards the gold labels
                    p = min(1.0, self.step / self.spec.training.max_steps)
                    loss = bam_loss(ttype, out, batch.labels[task], teacher, p, self.spec.distillation.temperature, scale)
                else:
                    loss = self.spec.distillation.kd_weight * kd_loss(
                        ttype, out, teacher, self.spec.distillation.temperature, scale)
            else:
                continue
            if batch.global_rows is not None and self.ranks.distributed:
                loss = loss * (self.ranks.world * int(rows.numel()) / batch.global_rows[task])
            losses[task] = loss
        return losses

    def _global_losses(self, batch, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each task's loss over the whole global batch (detached, 0-dim): the ranks' rescaled shares summed."""
        if not self.ranks.distributed or batch.global_rows is None:
            return {t: l.detach() for t, l in losses.items()}
        names = [t for t in self.task_specs if t in batch.global_rows and self.states[t].mode in LEARNING]
        v = torch.zeros(len(names), device=self.device)
        for i, t in enumerate(names):
            if t in losses:
                v[i] = losses[t].detach().float() / self.ranks.world
        self.ranks.all_reduce_sum(v)
        return {t: v[i] for i, t in enumerate(names)}

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        """One optimizer step on a mixed batch (this rank's slice under torchrun); returns per-task losses of
        the whole global batch (detached, 0-dim).

        The weighting method owns how the losses become gradients (`Weighting.backward`; the paper's
        Eq. 3 sum by default), and learns from them after the step where it does."""
        self.forward.train()
        batch = batch.to(self.device)
        with self._autocast():
            pooled, logits = self.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids, batch.rows)
            losses = self.task_losses(batch, pooled, logits)
        grad_norms = None
        if self.weighting.needs_grad_norms and self.last_shared is not None:
            # ‖∇_W L_t‖ on the last shared layer, detached (GradNorm's analytic update)
            grad_norms = {t: float(torch.linalg.vector_norm(
                torch.autograd.grad(l, self.last_shared, retain_graph=True)[0])) for t, l in losses.items()}
        self.weighting.backward(losses, pooled, self.scaler, self.model.encoder.parameters())
        if self.spec.training.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.training.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.weighting.step()
        whole = self._global_losses(batch, losses)
        if self.weighting.learns:
            self.weighting.update(self.step, {t: float(l) for t, l in whole.items()}, grad_norms)
        if self.weighting.needs_losses_after_step:  # FAMO: the same batch's losses after the update
            with torch.no_grad(), self._autocast():
                after = self.task_losses(batch, self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids))
            self.weighting.after_step(after)
        rows = batch.global_rows or {t: int(r.numel()) for t, r in batch.rows.items()}
        for task, loss in whole.items():
            kind = "kd" if self.states[task].mode == TaskPhase.KD else "supervised"  # the loss (Eq. 2 or Eq. 1)
            acc = self._loss_sums.setdefault((task, kind), [torch.zeros((), device=self.device), 0, 0])
            acc[0] += loss
            acc[1] += 1
            acc[2] += rows[task]
        return whole

    def _export_losses(self) -> None:
        for (task, kind), (s, n, ex) in self._loss_sums.items():
            if n:
                self.exporter.train_loss.labels(self.opts.run, task, kind).set(float(s) / n)
                self.exporter.train_examples.labels(self.opts.run, task, kind).inc(ex)
        self._loss_sums.clear()
        for task, w in self.weighting.weights().items():
            self.exporter.loss_weight.labels(self.opts.run, task).set(w)
        if self._train_time > 0:
            self.exporter.examples_per_second.labels(self.opts.run).set(self._examples_since / self._train_time)
        self._examples_since, self._train_time = 0, 0.0
        self.exporter.global_step.labels(self.opts.run).set(self.step)

    def predict(self, task: str, split: TokenizedSplit) -> np.ndarray:
        """Raw outputs for every example of `split`, in split order: (n, num_labels) float32 (data-parallel
        over the ranks, gathered on every rank)."""
        return self.evaluator.predict(self.task_specs[task], split)

    def evaluate(self, task: str, split: TokenizedSplit) -> dict[str, float]:
        """All metrics of `task` on `split` (0-100)."""
        return self.evaluator.evaluate(self.task_specs[task], split)

    def validate(self) -> None:
        """Validation step: score every task, update trackers and metrics, append to the history."""
        now = time.time()
        for name, t in self.task_specs.items():
            if self.states[name].mode == TaskPhase.PENDING:
                continue
            metrics = self.evaluate(name, self.val[name])
            value = metrics[t.metric.value]
            st = self.states[name]
            old_best = st.best.best_step
            if st.best.update(self.step, value, rule_for(self.spec, t)) and old_best is not None:
                st.prev_best_step = old_best
            st.last_step, st.last_value = self.step, value
            st.history.append([self.step, value])
            st.validations += 1
            self.exporter.record_validation(name, self.step, value, st.best.best_step, st.best.best_value)
            self.history.record(ValidationRecord(
                time=now, step=self.step, task=name, metric=t.metric.value, value=value, metrics=metrics,
                mode=st.mode, generation=self.applied_generation, best_step=st.best.best_step,
                best_value=st.best.best_value), self.rewinds)
            if self.opts.report_delay_seconds:  # fault injection (determinism test): a slow report between tasks
                time.sleep(self.opts.report_delay_seconds)
        self.exporter.complete_validation(self.step)  # after the last task: the step may now be decided on
        self.log.info("step %d validation: %s", self.step,
                      ", ".join(f"{n}={s.last_value:.2f}{'*' if s.best.best_step == self.step else ''}[{s.mode}]"
                                for n, s in self.states.items() if s.last_value is not None))

    def save_checkpoint(self) -> None:
        """Checkpoint this validation step (rank 0 writes, in the background), then apply retention."""
        rank_rngs = self.ranks.all_gather(rng_state()) if self.ranks.distributed else None
        if not self.opts.checkpoints or not (self.ranks.is_coordinator or self.state_io.sharded):
            return  # (a sharded model's state is gathered to rank 0 by every rank)
        state = CheckpointState(
            step=self.step, applied_generation=self.applied_generation,
            trackers={n: s.to_json() for n, s in self.states.items()},
            validations={n: s.validations for n, s in self.states.items()},
            history={n: s.history for n, s in self.states.items()},
            weighting=self.weighting.state_dict(), rewinds=self.rewinds,
        )
        # tasks whose best checkpoint may still be used: as a rewind target or teacher (training tasks), or,
        # under BAM (every task distilled from the start, none ever converges), for the report's Best row
        needing = {n for n, s in self.states.items()
                   if s.mode == TaskPhase.TRAINING or (s.mode == TaskPhase.KD and self.spec.resolved_strategy.teacher)}
        bests = {n: (s.best.best_step, s.prev_best_step) for n, s in self.states.items()}
        pinned = {s.pinned_step for s in self.states.values() if s.pinned_step is not None}
        step = self.step

        def keep(written: Checkpointer) -> set[int]:  # on the writer thread, once `step` is complete
            return checkpoints_to_keep(step, bests, needing, recorded=written.recorded_bests) | pinned

        self.checkpointer.save(self.step, self.model, self.optimizer, self.scheduler, state, keep=keep,
                               rank_rngs=rank_rngs, write=self.ranks.is_coordinator)

    # ---- resume ------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the latest checkpoint and re-derive task modes from the control signals the
        checkpoint had applied (`control_protocol.replay`; later signals are applied by the loop as usual).
        Checkpoints a failed or killed writer left without their state.json are deleted first."""
        self.history.load()
        if self.ranks.is_coordinator:
            gone = self.checkpointer.discard_incomplete()
            if gone:
                self.log.info("resume: deleted incomplete checkpoints at steps %s", ", ".join(map(str, gone)))
        self.ranks.barrier()
        steps = self.checkpointer.steps()
        if not steps:
            self.log.info("resume: no checkpoint yet, starting from step 0")
            return
        state = self._load(steps[-1])
        self.step = state.step
        self.rewinds = state.rewinds
        for name, st in self.states.items():
            st.restore(state.trackers.get(name, {}), state.history.get(name, []))
            st.validations = state.validations.get(name, 0)
            if st.validations:
                self.exporter.validations.labels(self.opts.run, name).inc(st.validations)
            self.exporter.set_task_state(name, st.last_step, st.last_value, st.best.best_step, st.best.best_value)
        self.exporter.complete_validation(self.step)
        self.best_scores = read_best_scores(self.storage)
        doc = self.ranks.broadcast(read_control_file(self.opts.control_path) if self.ranks.is_coordinator else None)
        if doc is not None:
            fx = replay({n: st.control for n, st in self.states.items()}, doc.signals, state.applied_generation,
                        distills_on_convergence=self.spec.resolved_strategy.distills_on_convergence)
            for name, c in fx.tasks.items():
                self.states[name].control = c
            for task, uri in fx.soft_labels.items():
                self.soft[task] = read_soft_labels(uri, expected_examples=len(self.train[task])).to(self.device)
            self.stop_requested = self.stop_requested or fx.stop
            self.applied_generation = state.applied_generation
        for name, st in self.states.items():
            self.exporter.set_mode(name, st.mode)
        self.exporter.control_generation.labels(self.opts.run).set(self.applied_generation)
        self.log.info("resumed at step %d, control generation %d", self.step, self.applied_generation)

    # ---- main loop ---------------------------------------------------------------------------
    def run(self) -> FinalReport:
        """Train until `stop` or `maxSteps`, then run the final evaluation. Returns the final report."""
        tr = self.spec.training
        if self.opts.resume:
            self.resume()
        self.exporter.set_state("training")
        self.exporter.global_step.labels(self.opts.run).set(self.step)
        while True:
            tick = self.poll_control()
            if self.stop_requested or self.step >= tr.max_steps:
                break
            if self.awaiting is not None and self._hold_for_decision(tick):
                self._idle()
                continue
            if self.paused():
                self._idle()
                continue
            self.exporter.set_state("training")
            self.step_once()
        return self.finalize()

    def _idle(self) -> None:
        self.exporter.set_state("paused")
        time.sleep(self.opts.control_poll_seconds)

    def next_batch(self):
        """This rank's slice of the step's mixed batch (the global draw is deterministic in seed, step and
        rewinds, and the same on every rank)."""
        draw = self.sampler.draw(self.step, self.rewinds, self.active_tasks(), self._sampling_scale())
        if not self.ranks.distributed:
            return make_batch(draw, self.train, self.pad_id)
        # padded as the whole batch: each rank's forward is the single-process forward's rows
        batch = make_batch(self.ranks.local_slice(draw), self.train, self.pad_id, draw_width(draw, self.train))
        batch.global_rows = dict(Counter(t for t, _ in draw))
        if self.state_io.sharded:  # every rank runs every head of the global batch, in one order (`shard_model`)
            empty = torch.zeros(0, dtype=torch.long)
            order = [t for t in self.task_specs if t in batch.global_rows]
            batch.rows = {t: batch.rows.get(t, empty) for t in order}
            batch.example_ids = {t: batch.example_ids.get(t, empty) for t in order}
            batch.labels = {t: batch.labels[t] if t in batch.labels else self.train[t].labels[empty] for t in order}
        return batch

    def step_once(self) -> dict[str, torch.Tensor]:
        """Train one step; at a validation step, validate and checkpoint. Returns the step's task losses."""
        t0 = time.perf_counter()
        batch = self.next_batch()
        losses = self.train_step(batch)
        self.step += 1
        self._train_time += time.perf_counter() - t0
        self._examples_since += self.spec.training.batch_size  # the whole global batch (a rank trains a slice)
        if self.step % LOSS_EXPORT_EVERY == 0:
            self._export_losses()
        if self.step % self.spec.training.validation_interval == 0:
            self._export_losses()
            self.validate()
            self.save_checkpoint()
            due = self.decision_due()
            if due:
                self.awaiting = (self.applied_generation, time.monotonic(), due)
                self.log.info("step %d: %s met the convergence rule; holding until the decision arrives",
                              self.step, ", ".join(due))
        return losses

    def decision_due(self) -> list[str]:
        """Tasks whose convergence the runtime decides on at this validation step (paper Sec. 3 rule,
        the same `has_converged` the decision core applies to the same best and last steps).

        Under `distillation.whilePending: Pause` (the paper's setting) the trainer holds at such a step
        until the decision's control generation arrives, so a signal always takes effect at the step it
        was decided on, never at a later step that depends on how fast the runtime polled. Under
        `Continue`, and for strategies that decide no convergence (fixedSteps, bam), nothing holds."""
        if self.spec.distillation.while_pending != "Pause" or not self.spec.resolved_strategy.decides_convergence:
            return []
        due = []
        for name, st in self.states.items():
            if st.mode != TaskPhase.TRAINING or st.decided or st.last_step is None:
                continue
            track = Track(best_step=st.best.best_step, best_value=st.best.best_value, last_step=st.last_step,
                          last_value=st.last_value, chance=self.chance.get(name))
            if has_converged(track, rule_for(self.spec, self.task_specs[name])):
                due.append(name)
        return due

    def _hold_for_decision(self, tick: ControlTick) -> bool:
        """True while the decision barrier holds: no control generation since it was raised. Released
        by any new generation, or after `metrics.ackTimeoutSeconds` on rank 0's clock (a runtime that
        disagrees or is gone: training goes on, the decision then depends on timing, and a warning says so)."""
        assert self.awaiting is not None
        generation, _since, tasks = self.awaiting
        if self.applied_generation > generation:
            for n in tasks:
                self.states[n].decided = True
            self.awaiting = None
            return False
        if tick.release_on_timeout:
            self.log.warning("no decision on %s within %.0fs of step %d: training on", ", ".join(tasks),
                             self.spec.metrics.ack_timeout_seconds, self.step)
            for n in tasks:
                self.states[n].decided = True
            self.awaiting = None
            return False
        return True

    def finalize(self) -> FinalReport:
        """Final evaluation (validation and test of the final model, test of each unconverged task's
        best checkpoint), the final model for serving, and `reports/final.json` (rank 0 writes)."""
        self.exporter.set_state("finalizing")
        self.log.info("final evaluation at step %d", self.step)
        self._checkpoints_settled()
        kept = self.checkpointer.steps()
        for name, st in self.states.items():
            if name not in self.best_scores and st.best.best_step is not None and st.best.best_step in kept:
                self._score_best_checkpoint(name, st.best.best_step)
        report = final_report(self.opts.run, self.step, self.stop_requested, self.applied_generation,
                              {n: s.mode for n, s in self.states.items()}, self.task_specs, self.best_scores,
                              lambda n: self.evaluate(n, self.val[n]),
                              lambda n: self.evaluate(n, self.test[n]) if n in self.test else None)
        weights = self.state_io.model_state(self.model) if self.state_io.sharded else None  # gathered to rank 0
        if self.ranks.is_coordinator:
            export_model(self.storage, self.model, self.tokenizer, self.spec, self.opts.workdir / "staging" / "model",
                         weights)
            write_final(self.storage, report)
            self.log.info("finished: report at %s", self.storage.uri(FINAL))
        self.checkpointer.close()
        self.ranks.barrier()
        self.exporter.set_state("finished")
        return report


def _last_shared_weight(encoder: torch.nn.Module) -> torch.nn.Parameter | None:
    """The weight of the encoder's last Linear layer on the path to our pooling (the last
    transformer layer's output projection; BERT's pooler is skipped, we never use it):
    GradNorm's W, the last shared layer."""
    last = None
    for name, m in encoder.named_modules():
        if isinstance(m, torch.nn.Linear) and "pooler" not in name:
            last = m
    return last.weight if last is not None else None


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asyncmtl-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="AsyncMTLRun YAML/JSON (the whole resource or its spec).")
    p.add_argument("--run", "--run-name", dest="run",
                   help="Run name (default: metadata.name). Under torchrun spell it --run-name: torchrun's own "
                        "parser takes --run for an abbreviation of its --run-path.")
    p.add_argument("--namespace", default="local", help="Storage namespace (default: local).")
    p.add_argument("--control", required=True, help="Control file path (JSON).")
    p.add_argument("--workdir", required=True, help="Scratch folder (token cache, staging).")
    p.add_argument("--base-dir", help="Folder relative data/model paths resolve against (default: the spec's folder).")
    p.add_argument("--tweeteval-dir", default=None, help="TweetEval root (or $TWEETEVAL_DIR).")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: spec.metrics.port).")
    p.add_argument("--metrics-addr", default="0.0.0.0")
    p.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="Terminate when this parent process is gone (the local runtime passes its pid).")
    termination.add_argument(p, "the trainer")
    return p


def load_spec_for_entrypoint(path: str) -> tuple[RunSpec, str | None]:
    """Read a spec file given to an entry point: a full AsyncMTLRun or a bare spec.

    Raises:
        asyncmtl.spec.SpecError: invalid.
    """
    import yaml

    from asyncmtl.spec import load_run_file, parse_run

    raw = yaml.safe_load(Path(path).read_text())
    if isinstance(raw, dict) and "apiVersion" in raw:
        run = load_run_file(path)
        return run.spec, run.name
    doc = {"apiVersion": "asyncmtl.dev/v1alpha1", "kind": "AsyncMTLRun", "metadata": {"name": "run"}, "spec": raw}
    return parse_run(doc, file=path).spec, None


def main(argv: list[str] | None = None) -> int:
    """`asyncmtl-train`: exit 0 after the final evaluation, 2 for a bad spec or data, 3 when a storage
    write failed (asyncmtl.termination: a one-line termination message says which path and why), 1
    otherwise.

    Under `torchrun` every rank runs this; rank 0 serves the metrics. A worker group torchrun restarted
    after a failure (`TORCHELASTIC_RESTART_COUNT` > 0) resumes from the latest checkpoint, as `--resume`."""
    from asyncmtl.data import DataError
    from asyncmtl.spec import SpecError
    from asyncmtl_trainer.distributed import init_ranks, restarted_by_torchrun, under_torchrun
    from asyncmtl_trainer.model import ModelLoadError

    configure()
    args = build_arg_parser().parse_args(argv)
    if args.parent_pid:  # a local run: never outlive the runtime that started us (asyncmtl_trainer.parent_watch)
        from asyncmtl_trainer.parent_watch import watch_parent

        watch_parent(args.parent_pid, depth=2 if under_torchrun() else 1)  # under torchrun: via its agent
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        spec, name = load_spec_for_entrypoint(args.spec)
    except SpecError as exc:
        print(f"invalid spec:\n{exc}", file=sys.stderr)
        return 2
    run = args.run or name or "run"
    base_dir = Path(args.base_dir) if args.base_dir else Path(args.spec).resolve().parent
    opts = TrainerOptions(run=run, namespace=args.namespace, control_path=Path(args.control), workdir=Path(args.workdir),
                          base_dir=base_dir, tweeteval_dir=args.tweeteval_dir,
                          metrics_port=spec.metrics.port if args.metrics_port is None else args.metrics_port,
                          metrics_addr=args.metrics_addr, resume=args.resume or restarted_by_torchrun(),
                          report_delay_seconds=float(os.environ.get("ASYNCMTL_TRAINER_REPORT_DELAY") or 0.0))
    log = run_logger(__name__, run)
    term_log = args.termination_log or termination.default_path()
    trainer: Trainer | None = None
    ranks: Ranks | None = None
    try:
        ranks = init_ranks(spec.training.device)
        storage = open_run_storage(spec.storage.uri, namespace=args.namespace, run=run, base_dir=os.getcwd(),
                                   endpoint_url=spec.storage.endpoint_url)
        trainer = Trainer(spec, opts, storage, ranks)
        if ranks.is_coordinator:
            trainer.serve_metrics()
        trainer.setup()
        trainer.run()
    except Exception as exc:
        code = termination.exit_status(exc, term_log, log, "trainer",
                                       bad_input=(DataError, ModelLoadError, DistributedSetupError))
        if under_torchrun():  # torchrun exits 1 for any failed worker: tell asyncmtl-launch which failure this was
            termination.write_exit_code(opts.workdir, code)
        return code
    finally:
        if trainer is not None:
            trainer.exporter.close()
        if ranks is not None:
            ranks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
