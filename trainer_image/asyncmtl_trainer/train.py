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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asyncmtl import termination
from asyncmtl.artifacts import (FINAL, MODEL, CheckpointScore, EventRecord, FinalReport, HistoryRecord, TaskFinal,
                                ValidationRecord, append_history, history_key, model_file, read_best_scores,
                                read_history, write_best_scores, write_final)
from asyncmtl.control import ControlDocument, read_control_file
from asyncmtl.core.convergence import BestTracker, Track, has_converged
from asyncmtl.core.reconcile import rule_for
from asyncmtl.data import load_task_splits
from asyncmtl.logs import configure, run_logger
from asyncmtl.lifecycle import LEARNING, TaskPhase
from asyncmtl.spec import RunSpec, TaskType
from asyncmtl.storage import RunStorage, open_run_storage
from asyncmtl_trainer.batching import TaskSampler, TokenizedSplit, eval_batches, make_batch, tokenize_split
from asyncmtl_trainer.checkpoint import Checkpointer, CheckpointState, retained_steps
from asyncmtl_trainer.exporter import TrainerExporter
from asyncmtl_trainer.losses import bam_loss, kd_loss, supervised_loss
from asyncmtl_trainer.metrics import chance_scores, compute_metrics
from asyncmtl_trainer.model import build_model, save_multitask_model
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


class TaskState:
    """What the trainer tracks per task: its phase (asyncmtl.lifecycle), best-so-far (with previous best)
    and history."""

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

    def to_json(self) -> dict:
        return {"bestStep": self.best.best_step, "bestValue": self.best.best_value, "prevBestStep": self.prev_best_step,
                "lastStep": self.last_step, "lastValue": self.last_value, "smoothed": self.best.smoothed}

    def restore(self, d: dict, history: list[list[float]]) -> None:
        self.best = BestTracker(best_step=d.get("bestStep"), best_value=d.get("bestValue"), smoothed=d.get("smoothed"))
        self.prev_best_step = d.get("prevBestStep")
        self.last_step, self.last_value = d.get("lastStep"), d.get("lastValue")
        self.history = [list(p) for p in history]


class Trainer:
    """One training run. Construct, then `run()`; raises on unrecoverable errors."""

    def __init__(self, spec: RunSpec, opts: TrainerOptions, storage: RunStorage) -> None:
        self.spec = spec
        self.opts = opts
        self.storage = storage
        self.log = run_logger(__name__, opts.run)
        self.task_specs = {t.name: t for t in spec.tasks}
        self.device = self._device()
        first = spec.resolved_strategy.initial_phase(spec.setting)
        self.states = {t.name: TaskState(first) for t in spec.tasks}
        self.soft: dict[str, torch.Tensor] = {}
        self.step = 0
        self.applied_generation = 0
        self.rewinds = 0  # rewinds applied so far along the run's timeline (the batch draw's key)
        self._recorded: set[tuple] = set()  # history_key of every history record written (idempotent writes)
        self.awaiting: tuple[int, float, list[str]] | None = None  # decision barrier: (generation, since, tasks)
        self.stop_requested = False
        self.exporter = TrainerExporter(opts.run, list(self.task_specs))
        self.checkpointer = Checkpointer(storage, opts.workdir / "staging")
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
        """Load data (validated), tokenizer and model; build optimizer and scheduler; serve metrics."""
        from transformers import get_linear_schedule_with_warmup

        tr = self.spec.training
        torch.manual_seed(tr.seed)
        np.random.seed(tr.seed)
        t0 = time.perf_counter()
        self.model, self.tokenizer, _ = build_model(self.spec, self.opts.base_dir)
        self.model.to(self.device)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
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
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tr.precision)
        self.scaler = torch.amp.GradScaler(enabled=(tr.precision == "fp16" and self.device.type == "cuda"))
        from asyncmtl_trainer.weighting import make_weighting

        self.weighting = make_weighting(self.spec)
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
        self.log.info("setup done in %.1fs: %d tasks, train sizes %s, chance scores %s, device %s",
                      time.perf_counter() - t0, len(self.train), {n: len(s) for n, s in self.train.items()},
                      {n: round(v, 2) for n, v in self.chance.items()}, self.device)

    def serve_metrics(self) -> int:
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

    def poll_control(self) -> None:
        """Apply the control signals issued since the last applied generation (cheap when unchanged)."""
        doc = self._read_control()
        if doc is None or doc.generation <= self.applied_generation:
            return
        new = doc.since(self.applied_generation)
        for gen in sorted({s.generation for s in new}):
            self.apply_generation([s for s in new if s.generation == gen], gen)

    def apply_generation(self, signals: list, generation: int) -> None:
        """Apply one generation's signals together, then acknowledge it through the metrics."""
        converged = [s for s in signals if s.kind == "converged"]
        for s in converged:  # in decision order: what a later run's easiest-first order reads. At the task's best
            # step (from the signal, not the step it is applied at), so a trainer resumed from an earlier checkpoint
            # that applies the signal again writes the same record, kept once
            self._history_event("converged", step=s.best_step, task=s.task)
        if not self.spec.resolved_strategy.distills_on_convergence:  # Continual MTL: a converged task keeps its labels
            for s in converged:
                self.states[s.task].decided = True
                self._score_best_checkpoint(s.task, s.best_step)
                self.log.info("task %s converged (best step %d): it keeps training on its labels (continual)",
                              s.task, s.best_step)
            converged = []
        for s in converged:
            st = self.states[s.task]
            st.mode = TaskPhase.DISTILLING
            st.pinned_step = s.best_step
            self.exporter.set_mode(s.task, TaskPhase.DISTILLING)
            self._score_best_checkpoint(s.task, s.best_step)
            self.log.info("task %s converged (best step %d): supervised loss dropped", s.task, s.best_step)
        if converged and converged[0].rewind_to is not None:
            self.rewind(converged[0].rewind_to)
        for s in signals:
            if s.kind == "startTask":
                self.states[s.task].mode = TaskPhase.TRAINING
                self.exporter.set_mode(s.task, TaskPhase.TRAINING)
                self._history_event("start", step=self.step, task=s.task)
                self.log.info("task %s started at step %d (sequential)", s.task, self.step)
            if s.kind == "softLabelsReady":
                self.soft[s.task] = read_soft_labels(s.uri, expected_examples=len(self.train[s.task])).to(self.device)
                self.states[s.task].mode = TaskPhase.KD
                self.states[s.task].pinned_step = None
                self.exporter.set_mode(s.task, TaskPhase.KD)
                self._history_event("kd", step=self.step, task=s.task)
                self.log.info("task %s: soft labels loaded from %s; KD loss from step %d", s.task, s.uri, self.step)
            elif s.kind == "skipDistillation":
                self.states[s.task].mode = TaskPhase.FROZEN
                self.states[s.task].pinned_step = None
                self.exporter.set_mode(s.task, TaskPhase.FROZEN)
                self.log.warning("task %s frozen: %s", s.task, s.reason)
            elif s.kind == "stop":
                self.stop_requested = True
                self.log.info("stop signal: final evaluation follows")
        self.applied_generation = generation
        self.exporter.control_step.labels(self.opts.run).set(self.step)
        self.exporter.control_generation.labels(self.opts.run).set(generation)

    def rewind(self, step: int) -> None:
        """Restore model, optimizer, scheduler, RNG and trackers from the checkpoint at `step`
        and delete later checkpoints (paper Sec. 3: rewind to θ̂_t)."""
        state = self.checkpointer.load(step, self.model, self.optimizer, self.scheduler)
        self.step = state.step
        for name, st in self.states.items():
            st.restore(state.trackers.get(name, {}), state.history.get(name, []))
            self.exporter.set_task_state(name, st.last_step, st.last_value, st.best.best_step, st.best.best_value)
        if state.weighting:
            self.weighting.load_state_dict(state.weighting)
        self.checkpointer.prune({s for s in self.checkpointer.steps() if s <= step})
        self.rewinds += 1
        self.exporter.complete_validation(self.step)
        self.exporter.global_step.labels(self.opts.run).set(self.step)
        self.exporter.rewinds.labels(self.opts.run).inc()
        self._history_event("rewind", step=step)
        self.log.info("rewound to step %d", step)

    def _history_event(self, event: str, *, step: int, task: str | None = None) -> None:
        """Append a non-validation record (start, converged, kd, rewind) to the history, in order with
        validations."""
        self._record(EventRecord(event=event, time=time.time(), step=step, task=task))

    def _record(self, record: HistoryRecord) -> None:
        """Append `record` to the history unless it is already there: a trainer restarted from its
        latest checkpoint repeats the validations and events that followed it, and each is kept once
        (asyncmtl.artifacts.history_key: what, task, step and the rewinds before it)."""
        record.rewinds = self.rewinds
        key = history_key(record)
        if key in self._recorded:
            return
        self._recorded.add(key)
        append_history(self.storage, record)

    def _score_best_checkpoint(self, task: str, step: int) -> None:
        """Score `task` on validation and test with the weights of checkpoint `step` (its best)."""
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.checkpointer.load_weights(step, self.model)
        scores = CheckpointScore(step=step, validation=self.evaluate(task, self.val[task]),
                                 test=self.evaluate(task, self.test[task]) if task in self.test else None)
        self.model.load_state_dict(current)
        self.best_scores[task] = scores
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

    def task_losses(self, batch, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-task losses of a mixed batch: supervised (Eq. 1) or KD (Eq. 2) by the task's mode.

        Args:
            batch: the step's `Batch`; pooled: (batch, hidden) encoder output.
        Returns:
            task -> 0-dim loss for each task with rows in the batch (tasks in other modes are skipped).
        """
        losses: dict[str, torch.Tensor] = {}
        for task, rows in batch.rows.items():
            mode = self.states[task].mode
            logits = self.model.head(task, pooled[rows])
            ttype = self.task_specs[task].type
            scale = self.loss_scale.get(task, 1.0)
            if mode == TaskPhase.TRAINING:
                losses[task] = supervised_loss(ttype, logits, batch.labels[task], scale)
            elif mode == TaskPhase.KD:
                teacher = self.soft[task][batch.example_ids[task].to(self.device)]
                if self.spec.resolved_strategy.anneals:  # teacher annealing towards the gold labels
                    p = min(1.0, self.step / self.spec.training.max_steps)
                    losses[task] = bam_loss(ttype, logits, batch.labels[task], teacher, p,
                                            self.spec.distillation.temperature, scale)
                else:
                    losses[task] = self.spec.distillation.kd_weight * kd_loss(
                        ttype, logits, teacher, self.spec.distillation.temperature, scale)
        return losses

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        """One optimizer step on a mixed batch; returns per-task losses (detached, 0-dim).

        The weighting method owns how the losses become gradients (`Weighting.backward`; the paper's
        Eq. 3 sum by default), and learns from them after the step where it does."""
        self.model.train()
        batch = batch.to(self.device)
        with self._autocast():
            pooled = self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
            losses = self.task_losses(batch, pooled)
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
        if self.weighting.learns:
            self.weighting.update(self.step, {t: float(l.detach()) for t, l in losses.items()}, grad_norms)
        if self.weighting.needs_losses_after_step:  # FAMO: the same batch's losses after the update
            with torch.no_grad(), self._autocast():
                after = self.task_losses(batch, self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids))
            self.weighting.after_step(after)
        for task, loss in losses.items():
            kind = "kd" if self.states[task].mode == TaskPhase.KD else "supervised"  # the loss (Eq. 2 or Eq. 1)
            acc = self._loss_sums.setdefault((task, kind), [torch.zeros((), device=self.device), 0, 0])
            acc[0] += loss.detach()
            acc[1] += 1
            acc[2] += int(batch.rows[task].numel())
        return {t: l.detach() for t, l in losses.items()}

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

    @torch.no_grad()
    def predict(self, task: str, split: TokenizedSplit) -> np.ndarray:
        """Raw outputs for every example of `split`, in split order: (n, num_labels) float32."""
        self.model.eval()
        out = torch.empty(len(split), int(self.task_specs[task].num_labels or 1), dtype=torch.float32)
        for idx, ids, mask, tt in eval_batches(split, self.spec.training.eval_batch_size, self.pad_id):
            with self._autocast():
                pooled = self.model(ids.to(self.device), mask.to(self.device), tt.to(self.device))
                out[idx] = self.model.head(task, pooled).float().cpu()
        return out.numpy()

    def evaluate(self, task: str, split: TokenizedSplit) -> dict[str, float]:
        """All metrics of `task` on `split` (0-100)."""
        return compute_metrics(self.task_specs[task].type, self.predict(task, split), split.labels.numpy())

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
            self._record(ValidationRecord(
                time=now, step=self.step, task=name, metric=t.metric.value, value=value, metrics=metrics,
                mode=st.mode, generation=self.applied_generation, best_step=st.best.best_step,
                best_value=st.best.best_value))
            if self.opts.report_delay_seconds:  # fault injection (determinism test): a slow report between tasks
                time.sleep(self.opts.report_delay_seconds)
        self.exporter.complete_validation(self.step)  # after the last task: the step may now be decided on
        self.log.info("step %d validation: %s", self.step,
                      ", ".join(f"{n}={s.last_value:.2f}{'*' if s.best.best_step == self.step else ''}[{s.mode}]"
                                for n, s in self.states.items() if s.last_value is not None))

    def save_checkpoint(self) -> None:
        state = CheckpointState(
            step=self.step, applied_generation=self.applied_generation,
            trackers={n: s.to_json() for n, s in self.states.items()},
            validations={n: s.validations for n, s in self.states.items()},
            history={n: s.history for n, s in self.states.items()},
            weighting=self.weighting.state_dict(), rewinds=self.rewinds,
        )
        self.checkpointer.save(self.step, self.model, self.optimizer, self.scheduler, state)
        # tasks whose best checkpoint may still be used: as a rewind target or teacher (training tasks), or,
        # under BAM (every task distilled from the start, none ever converges), for the report's Best row
        needing = {n for n, s in self.states.items()
                   if s.mode == TaskPhase.TRAINING or (s.mode == TaskPhase.KD and self.spec.resolved_strategy.teacher)}
        keep = retained_steps(self.step, {n: (s.best.best_step, s.prev_best_step) for n, s in self.states.items()}, needing,
                              recorded=self.checkpointer.recorded_bests)
        keep |= {s.pinned_step for s in self.states.values() if s.pinned_step is not None}
        self.checkpointer.prune(keep)

    # ---- resume ------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the latest checkpoint and re-derive task modes from the control signals
        the checkpoint had applied (later signals are applied by the loop as usual). Checkpoints a
        failed or killed writer left without their state.json are deleted first."""
        self._recorded = {history_key(r) for r in read_history(self.storage)}
        gone = self.checkpointer.discard_incomplete()
        if gone:
            self.log.info("resume: deleted incomplete checkpoints at steps %s", ", ".join(map(str, gone)))
        steps = self.checkpointer.steps()
        if not steps:
            self.log.info("resume: no checkpoint yet, starting from step 0")
            return
        state = self.checkpointer.load(steps[-1], self.model, self.optimizer, self.scheduler)
        self.step = state.step
        self.rewinds = state.rewinds
        if state.weighting:
            self.weighting.load_state_dict(state.weighting)
        for name, st in self.states.items():
            st.restore(state.trackers.get(name, {}), state.history.get(name, []))
            st.validations = state.validations.get(name, 0)
            if st.validations:
                self.exporter.validations.labels(self.opts.run, name).inc(st.validations)
            self.exporter.set_task_state(name, st.last_step, st.last_value, st.best.best_step, st.best.best_value)
        self.exporter.complete_validation(self.step)
        self.best_scores = read_best_scores(self.storage)
        doc = read_control_file(self.opts.control_path)
        if doc is not None:
            for s in doc.signals:
                if s.generation > state.applied_generation:
                    continue
                if s.kind == "startTask":
                    self.states[s.task].mode = TaskPhase.TRAINING
                elif s.kind == "converged" and not self.spec.resolved_strategy.distills_on_convergence:
                    self.states[s.task].decided = True
                elif s.kind == "converged":
                    self.states[s.task].mode, self.states[s.task].pinned_step = TaskPhase.DISTILLING, s.best_step
                elif s.kind == "softLabelsReady":
                    self.soft[s.task] = read_soft_labels(s.uri, expected_examples=len(self.train[s.task])).to(self.device)
                    self.states[s.task].mode, self.states[s.task].pinned_step = TaskPhase.KD, None
                elif s.kind == "skipDistillation":
                    self.states[s.task].mode, self.states[s.task].pinned_step = TaskPhase.FROZEN, None
                elif s.kind == "stop":
                    self.stop_requested = True
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
            self.poll_control()
            if self.stop_requested or self.step >= tr.max_steps:
                break
            if self.awaiting is not None and self._hold_for_decision():
                self.exporter.set_state("paused")
                time.sleep(self.opts.control_poll_seconds)
                continue
            if self.paused():
                self.exporter.set_state("paused")
                time.sleep(self.opts.control_poll_seconds)
                continue
            self.exporter.set_state("training")
            self.step_once()
        return self.finalize()

    def next_batch(self):
        """The mixed batch for the current step (deterministic in seed, step and control generation)."""
        draw = self.sampler.draw(self.step, self.rewinds, self.active_tasks(), self._sampling_scale())
        return make_batch(draw, self.train, self.pad_id)

    def step_once(self) -> dict[str, torch.Tensor]:
        """Train one step; at a validation step, validate and checkpoint. Returns the step's task losses."""
        t0 = time.perf_counter()
        batch = self.next_batch()
        losses = self.train_step(batch)
        self.step += 1
        self._train_time += time.perf_counter() - t0
        self._examples_since += batch.size
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

    def _hold_for_decision(self) -> bool:
        """True while the decision barrier holds: no control generation since it was raised. Released
        by any new generation, or after `metrics.ackTimeoutSeconds` (a runtime that disagrees or is
        gone: training goes on, the decision then depends on timing, and a warning says so)."""
        assert self.awaiting is not None
        generation, since, tasks = self.awaiting
        if self.applied_generation > generation:
            for n in tasks:
                self.states[n].decided = True
            self.awaiting = None
            return False
        if time.monotonic() - since > self.spec.metrics.ack_timeout_seconds:
            self.log.warning("no decision on %s within %.0fs of step %d: training on", ", ".join(tasks),
                             self.spec.metrics.ack_timeout_seconds, self.step)
            for n in tasks:
                self.states[n].decided = True
            self.awaiting = None
            return False
        return True

    def finalize(self) -> FinalReport:
        """Final evaluation (validation and test of the final model, test of each unconverged task's
        best checkpoint), the final model for serving, and `reports/final.json`."""
        self.exporter.set_state("finalizing")
        self.log.info("final evaluation at step %d", self.step)
        for name, st in self.states.items():
            if name not in self.best_scores and st.best.best_step is not None and st.best.best_step in self.checkpointer.steps():
                self._score_best_checkpoint(name, st.best.best_step)
        report = FinalReport(run=self.opts.run, step=self.step, stopped="stop" if self.stop_requested else "maxSteps",
                             control_generation=self.applied_generation)
        for name, t in self.task_specs.items():
            report.tasks[name] = TaskFinal(
                type=t.type.value, metric=t.metric.value, mode=self.states[name].mode,
                final_validation=self.evaluate(name, self.val[name]), best_checkpoint=self.best_scores.get(name),
                final_test=self.evaluate(name, self.test[name]) if name in self.test else None)
        staging = self.opts.workdir / "staging" / "model"
        target = self.storage.local_path(MODEL)
        save_multitask_model(self.model, self.tokenizer, self.spec, target or staging)
        if target is None:
            for p in staging.rglob("*"):
                if p.is_file():
                    self.storage.put_file(model_file(str(p.relative_to(staging))), p)
        write_final(self.storage, report)
        self.exporter.set_state("finished")
        self.log.info("finished: report at %s", self.storage.uri(FINAL))
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
    p.add_argument("--run", help="Run name (default: metadata.name).")
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
    otherwise."""
    from asyncmtl.data import DataError
    from asyncmtl.spec import SpecError
    from asyncmtl_trainer.model import ModelLoadError

    configure()
    args = build_arg_parser().parse_args(argv)
    if args.parent_pid:  # a local run: never outlive the runtime that started us (asyncmtl.local.lifeline)
        from asyncmtl.local.lifeline import watch_parent

        watch_parent(args.parent_pid)
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
                          metrics_addr=args.metrics_addr, resume=args.resume,
                          report_delay_seconds=float(os.environ.get("ASYNCMTL_TRAINER_REPORT_DELAY") or 0.0))
    log = run_logger(__name__, run)
    storage = open_run_storage(spec.storage.uri, namespace=args.namespace, run=run, base_dir=os.getcwd(),
                               endpoint_url=spec.storage.endpoint_url)
    term_log = args.termination_log or termination.default_path()
    trainer = Trainer(spec, opts, storage)
    try:
        trainer.serve_metrics()
        trainer.setup()
        trainer.run()
    except Exception as exc:
        return termination.exit_status(exc, term_log, log, "trainer", bad_input=(DataError, ModelLoadError))
    finally:
        trainer.exporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
