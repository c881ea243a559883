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
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asyncmtl import termination
from asyncmtl.artifacts import (FINAL, CheckpointScore, FinalReport, ValidationRecord, read_best_scores, validation_rows_key,
                                write_array, write_best_scores, write_final)
from asyncmtl.control import Signal
from asyncmtl.core.convergence import rule_for
from asyncmtl.lifecycle import TaskPhase
from asyncmtl.logs import configure, run_logger
from asyncmtl.spec import RunSpec
from asyncmtl.storage import RunStorage
from asyncmtl.method import Method
from asyncmtl.storage_factory import open_run_storage
from asyncmtl_trainer.batching import Batch, TokenizedSplit, drawn_rows
from asyncmtl_trainer.builder import build_training
from asyncmtl_trainer.checkpoint import AsyncCheckpointer, CheckpointState, TrainingCheckpoints, retention
from asyncmtl_trainer.control_client import ControlClient, ControlTick
from asyncmtl_trainer.control_protocol import apply_generation, replay
from asyncmtl_trainer.distributed import DistributedSetupError, Ranks, local_device
from asyncmtl_trainer.exporter import TrainerExporter, TrainingMeter
from asyncmtl_trainer.final import export_model, final_report
from asyncmtl_trainer.history import HistoryLog
from asyncmtl_trainer.losses import TaskLosses
from asyncmtl_trainer.metrics import compute_metrics
from asyncmtl_trainer.significance import bootstrap_seed, example_rows, paired_lower_bound
from asyncmtl_trainer.sharding import StateIO
from asyncmtl_trainer.softlabels import read_soft_labels
from asyncmtl_trainer.step import TrainingStep
from asyncmtl_trainer.task_state import (TaskState, active_tasks, checkpoint_state, due_for_decision, kd_sampling_scale,
                                         paused, restore_states)

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


class Trainer:
    """One training run, in one process or as one of torchrun's ranks. Construct, `setup()`, then `run()`;
    raises on unrecoverable errors.

    The loop (`run`): poll the control channel (`control_client`), apply its generations (the pure
    `control_protocol` says what they mean), hold at a decision barrier, train a step on a mixed batch
    (`losses.TaskLosses`, combined by the weighting method), and at every validation step validate,
    checkpoint (`checkpoint.TrainingCheckpoints`) and raise the barrier for tasks that met the rule.

    Args:
        ranks: the process group (`asyncmtl_trainer.distributed.init_ranks`); default: one process on
            `spec.training.device`.
    Raises:
        DistributedSetupError: (setup) under torchrun with a weighting method that is not data-parallel, or
            a batch smaller than the number of ranks.
    """

    def __init__(self, spec: RunSpec, opts: TrainerOptions, storage: RunStorage, ranks: Ranks | None = None) -> None:
        self.spec, self.opts, self.storage = spec, opts, storage
        self.log = run_logger(__name__, opts.run if ranks is None or ranks.is_coordinator else f"{opts.run}[{ranks.rank}]")
        self.task_specs = {t.name: t for t in spec.tasks}
        self.ranks = ranks or Ranks(device=local_device(spec.training.device))
        self.device = self.ranks.device
        self.states = {t.name: TaskState(spec.resolved_method.initial_phase(spec.setting)) for t in spec.tasks}
        self.step = 0
        self.rewinds = 0  # rewinds applied so far along the run's timeline (the batch draw's key)
        self.stop_requested = False
        self.best_scores: dict[str, CheckpointScore] = {}
        self.history = HistoryLog(storage, enabled=self.ranks.is_coordinator)
        self.control = ControlClient(opts.control_path, self.ranks, spec.metrics.ack_timeout_seconds)
        self.exporter = TrainerExporter(opts.run, list(self.task_specs))
        self.meter = TrainingMeter(self.exporter)
        staging = opts.workdir / ("staging" if self.ranks.is_coordinator else f"staging-rank{self.ranks.rank}")
        # FSDP2 shards the model over the ranks (a single process ignores training.parallelism)
        self.state_io = StateIO(sharded=self.ranks.distributed and spec.training.parallelism == "fsdp")
        self.checkpointer = AsyncCheckpointer(storage, staging, background=opts.async_checkpoints, io=self.state_io)

    @property
    def method(self) -> Method:
        return self.spec.resolved_method

    def setup(self) -> None:
        """Build the run (`builder.build_training`: data, model, optimizer, weighting) and export each task's
        training size and chance score."""
        b = build_training(self.spec, self.ranks, self.state_io, workdir=self.opts.workdir,
                           base_dir=self.opts.base_dir, tweeteval_dir=self.opts.tweeteval_dir)
        self.model, self.forward, self.tokenizer, self.autocast = b.model, b.forward, b.tokenizer, b.autocast
        self.train, self.val, self.test, self.pad_id = b.train, b.val, b.test, b.pad_id
        self.optimizer, self.scheduler, self.scaler, self.weighting = b.optimizer, b.scheduler, b.scaler, b.weighting
        self.sampler, self.evaluator, self.chance, self.last_shared = b.sampler, b.evaluator, b.chance, b.last_shared
        self.loss_scale = b.loss_scale
        self.losses = TaskLosses({n: t.type for n, t in self.task_specs.items()}, self.spec.distillation,
                                 self.method.anneals, self.spec.training.max_steps, b.loss_scale)
        self.stepper = TrainingStep(b, self.losses, self.meter, self.spec.training.max_grad_norm,
                                    list(self.task_specs) if self.state_io.sharded else None)
        self.checkpoints = TrainingCheckpoints(self.checkpointer, self.ranks, self.model, self.optimizer,
                                               self.scheduler, self.weighting, enabled=self.opts.checkpoints,
                                               log=self.log)
        self.exporter.describe_tasks({n: s.mode for n, s in self.states.items()},
                                     {n: len(s) for n, s in self.train.items()}, self.chance)
        if self.ranks.is_coordinator:  # the labels the stored validation rows are scored against
            for name, split in self.val.items():
                write_array(self.storage, validation_rows_key(name), split.labels.numpy())
        self.log.info("setup done in %.1fs: %d tasks, train sizes %s, chance scores %s, device %s, rank %d of %d (%s)",
                      b.seconds, len(self.train), {n: len(s) for n, s in self.train.items()},
                      {n: round(v, 2) for n, v in self.chance.items()}, self.device, self.ranks.rank, self.ranks.world,
                      "fsdp" if self.state_io.sharded else "ddp" if self.ranks.distributed else "one process")

    def serve_metrics(self) -> int:
        """Serve the metrics and write `trainer.json` (rank 0 only: the one Prometheus target). Returns the port."""
        port = self.exporter.serve_announced(self.opts.metrics_port, self.opts.metrics_addr, self.opts.workdir)
        self.log.info("metrics on port %d", port)
        return port

    # ---- control -----------------------------------------------------------------------------
    def poll_control(self) -> ControlTick:
        """Apply the control generations issued since the last applied one, on every rank at this step."""
        tick = self.control.poll()
        for gen, signals in tick.generations:
            self.apply_generation(signals, gen)
        return tick

    def apply_generation(self, signals: list[Signal], generation: int) -> None:
        """Apply one generation's signals together (`control_protocol.apply_generation`), carry out their
        effects, then acknowledge the generation through the metrics."""
        fx = apply_generation({n: st.control for n, st in self.states.items()}, signals,
                              distills_on_convergence=self.method.distills_on_convergence)
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
                self.exporter.set_mode(task, TaskPhase.AWAITING_SOFT_LABELS)
                self.log.info("task %s converged (best step %d): supervised loss dropped", task, best)
        if fx.rewind_to is not None:
            self.rewind(fx.rewind_to)
        for a in fx.actions:
            self.exporter.set_mode(a.task, self.states[a.task].mode)
            if a.kind == "startTask":
                self.history.event("start", step=self.step, task=a.task, rewinds=self.rewinds)
                self.log.info("task %s started at step %d (sequential)", a.task, self.step)
            elif a.kind == "softLabelsReady":
                self._load_soft_labels(a.task, a.detail)
                self.history.event("kd", step=self.step, task=a.task, rewinds=self.rewinds)
                self.log.info("task %s: soft labels loaded from %s; KD loss from step %d", a.task, a.detail, self.step)
            elif a.kind == "skipDistillation":
                self.log.warning("task %s frozen: %s", a.task, a.detail)
        if fx.stop:
            self.stop_requested = True
            self.log.info("stop signal: final evaluation follows")
        self.control.applied_generation = generation
        self.exporter.control_step.labels(self.opts.run).set(self.step)
        self.exporter.control_generation.labels(self.opts.run).set(generation)

    def _load_soft_labels(self, task: str, uri: str) -> None:
        self.losses.soft[task] = read_soft_labels(uri, expected_examples=len(self.train[task])).to(self.device)

    def _hold_for_decision(self, tick: ControlTick) -> bool:
        """True while the decision barrier holds (`ControlClient.released`); once released its tasks are
        decided. A release on timeout (a runtime that disagrees or is gone) warns: the decision then depends
        on timing."""
        released = self.control.released(tick)
        if released is None:
            return True
        tasks, timed_out = released
        if timed_out:
            self.log.warning("no decision on %s within %.0fs of step %d: training on", ", ".join(tasks),
                             self.spec.metrics.ack_timeout_seconds, self.step)
        for n in tasks:
            self.states[n].decided = True
        return False

    # ---- checkpoints -------------------------------------------------------------------------
    def _restore(self, state: CheckpointState, *, resumed: bool) -> None:
        """Step, task trackers and their metrics from a loaded checkpoint."""
        self.step = state.step
        restore_states(self.states, state, validations=resumed)
        for name, st in self.states.items():
            if resumed and st.validations:
                self.exporter.validations.labels(self.opts.run, name).inc(st.validations)
            self.exporter.set_task_state(name, st.last_step, st.last_value, st.best.best_step, st.best.best_value,
                                         st.last_epochs, st.streak)
        self.exporter.complete_validation(self.step)

    def rewind(self, step: int) -> None:
        """Restore model, optimizer, scheduler, RNG and trackers from the checkpoint at `step`
        and delete later checkpoints (paper Sec. 3: rewind to θ̂_t). Every rank loads the same checkpoint."""
        trained_to = self.step  # the history's rewind event records it: the steps it discards count as run
        self._restore(self.checkpoints.rewind(step), resumed=False)
        self.rewinds += 1
        self.exporter.global_step.labels(self.opts.run).set(self.step)
        self.exporter.rewinds.labels(self.opts.run).inc()
        self.history.event("rewind", step=step, rewinds=self.rewinds, from_step=trained_to)
        self.log.info("rewound to step %d", step)

    def resume(self) -> None:
        """Continue from the latest checkpoint and re-derive task modes from the control signals the
        checkpoint had applied (`control_protocol.replay`; later signals are applied by the loop as usual)."""
        self.history.load()
        state = self.checkpoints.resume()
        if state is None:
            self.log.info("resume: no checkpoint yet, starting from step 0")
            return
        self._restore(state, resumed=True)
        self.rewinds = state.rewinds
        self.best_scores = read_best_scores(self.storage)
        doc = self.control.document()
        if doc is not None:
            fx = replay({n: st.control for n, st in self.states.items()}, doc.signals, state.applied_generation,
                        distills_on_convergence=self.method.distills_on_convergence)
            for name, c in fx.tasks.items():
                self.states[name].control = c
            for task, uri in fx.soft_labels.items():
                self._load_soft_labels(task, uri)
            self.stop_requested = self.stop_requested or fx.stop
            self.control.applied_generation = state.applied_generation
        for name, st in self.states.items():
            self.exporter.set_mode(name, st.mode)
        self.exporter.control_generation.labels(self.opts.run).set(self.control.applied_generation)
        self.log.info("resumed at step %d, control generation %d", self.step, self.control.applied_generation)

    def save_checkpoint(self) -> None:
        """Checkpoint this validation step (rank 0 writes, in the background), then apply retention: keep the
        best checkpoints of tasks that may still need one, as a rewind target or teacher (training tasks), or,
        under BAM (every task distilled from the start, none ever converges), for the report's Best row."""
        needing = {n for n, s in self.states.items()
                   if s.mode == TaskPhase.TRAINING or (s.mode == TaskPhase.KD and self.method.teacher)}
        bests = {n: (s.best.best_step, s.prev_best_step) for n, s in self.states.items()}
        pinned = {s.pinned_step for s in self.states.values() if s.pinned_step is not None}
        state = checkpoint_state(self.step, self.control.applied_generation, self.rewinds, self.states,
                                 self.weighting.state_dict())
        self.checkpoints.save(state, retention(self.step, bests, needing, pinned))

    def _score_best_checkpoint(self, task: str, step: int) -> None:
        """Score `task` on validation and test with the weights of checkpoint `step` (its best)."""
        self.best_scores[task] = self.checkpoints.scored(step, lambda: CheckpointScore(
            step=step, validation=self.evaluate(task, self.val[task]),
            test=self.evaluate(task, self.test[task]) if task in self.test else None))
        if self.ranks.is_coordinator:
            write_best_scores(self.storage, self.best_scores)

    # ---- training ----------------------------------------------------------------------------
    def active_tasks(self) -> list[str]:
        return active_tasks(self.states)

    def _sampling_scale(self) -> dict[str, float]:
        return kd_sampling_scale(self.states, self.spec.distillation.kd_sampling_weight)

    def paused(self) -> bool:
        return paused(self.states, self.spec.distillation.while_pending)

    def modes(self) -> dict[str, TaskPhase]:
        return {n: s.mode for n, s in self.states.items()}

    def task_losses(self, batch: Batch, pooled: torch.Tensor,
                    logits: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Per-task losses of a batch at the tasks' current modes (`losses.TaskLosses`): task -> 0-dim."""
        return self.losses(batch, self.modes(), self.step, self.model, pooled, logits)

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimizer step on a mixed batch (`step.TrainingStep`); returns per-task losses of the whole
        global batch (detached, 0-dim)."""
        return self.stepper(self.ranks, batch, self.step, self.modes())

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
            st = self.states[name]
            if st.mode == TaskPhase.PENDING:
                continue
            labels = self.val[name].labels.numpy()
            outputs = self.predict(name, self.val[name])
            metrics = compute_metrics(t.type, outputs, labels)
            value = metrics[t.metric.value]
            epochs = st.epochs(len(self.train[name]))
            rule = rule_for(self.spec, t)
            st.record(self.step, value, rule, epochs)
            rows = example_rows(t.type, t.metric, outputs, labels)
            if rule.significance is not None:
                st.compare(rows, st.best.best_step == self.step, lambda best, cur, t=t, labels=labels: paired_lower_bound(
                    t.type, t.metric, best, cur, labels, rule.significance,
                    bootstrap_seed(self.spec.training.seed, t.name, self.step)))
            self.exporter.record_validation(name, self.step, value, st.best.best_step, st.best.best_value, epochs,
                                            st.streak)
            if self.ranks.is_coordinator:  # what benchmarks/replay_rule.py replays rules on
                write_array(self.storage, validation_rows_key(name, self.step, self.rewinds), rows)
            self.history.record(ValidationRecord(
                time=now, step=self.step, task=name, metric=t.metric.value, value=value, metrics=metrics,
                mode=st.mode, generation=self.control.applied_generation, best_step=st.best.best_step,
                best_value=st.best.best_value, epochs=epochs, streak=st.streak, lower_bound=st.last_lower),
                self.rewinds)
            if self.opts.report_delay_seconds:  # fault injection (determinism test): a slow report between tasks
                time.sleep(self.opts.report_delay_seconds)
        self.exporter.complete_validation(self.step)  # after the last task: the step may now be decided on
        self.log.info("step %d validation: %s", self.step,
                      ", ".join(f"{n}={s.last_value:.2f}{'*' if s.best.best_step == self.step else ''}[{s.mode}]"
                                for n, s in self.states.items() if s.last_value is not None))

    # ---- main loop ---------------------------------------------------------------------------
    def run(self) -> FinalReport:
        """Train until `stop` or `maxSteps`, then run the final evaluation. Returns the final report."""
        if self.opts.resume:
            self.resume()
        self.exporter.set_state("training")
        self.exporter.global_step.labels(self.opts.run).set(self.step)
        while True:
            tick = self.poll_control()
            if self.stop_requested or self.step >= self.spec.training.max_steps:
                break
            if (self.control.barrier is not None and self._hold_for_decision(tick)) or self.paused():
                self.exporter.set_state("paused")
                time.sleep(self.opts.control_poll_seconds)
                continue
            self.exporter.set_state("training")
            self.step_once()
        return self.finalize()

    def next_batch(self) -> Batch:
        """This rank's slice of the step's mixed batch (deterministic in seed, step and rewinds)."""
        return self.stepper.batch(self.ranks, self.step, self.rewinds, self.active_tasks(), self._sampling_scale())

    def count_examples(self, batch: Batch) -> None:
        """Add the step's draw to each task's examples drawn (the whole global batch's rows, the same on every
        rank: what the epoch floor `minEpochs` counts)."""
        for task, rows in drawn_rows(batch).items():
            self.states[task].examples += rows

    def step_once(self) -> dict[str, torch.Tensor]:
        """Train one step; at a validation step, validate and checkpoint. Returns the step's task losses."""
        t0 = time.perf_counter()
        batch = self.next_batch()
        self.count_examples(batch)
        losses = self.train_step(batch)
        self.step += 1
        self.meter.timed(time.perf_counter() - t0, self.spec.training.batch_size)  # the whole global batch
        if self.step % LOSS_EXPORT_EVERY == 0:
            self.meter.flush(self.step, self.weighting.weights())
        if self.step % self.spec.training.validation_interval == 0:
            self.meter.flush(self.step, self.weighting.weights())
            self.validate()
            self.save_checkpoint()
            due = self.decision_due()
            if due:
                self.control.hold(due)
                self.log.info("step %d: %s met the convergence rule; holding until the decision arrives",
                              self.step, ", ".join(due))
        return losses

    def decision_due(self) -> list[str]:
        """Tasks whose convergence the runtime decides on at this validation step (`task_state.due_for_decision`);
        none under `distillation.whilePending: Continue` or a method that decides no convergence."""
        if self.spec.distillation.while_pending != "Pause" or not self.method.decides_convergence:
            return []
        return due_for_decision(self.states, self.chance, lambda n: rule_for(self.spec, self.task_specs[n]))

    def finalize(self) -> FinalReport:
        """Final evaluation (validation and test of the final model, test of each unconverged task's
        best checkpoint), the final model for serving, and `reports/final.json` (rank 0 writes)."""
        self.exporter.set_state("finalizing")
        self.log.info("final evaluation at step %d", self.step)
        self.checkpoints.settled()
        kept = self.checkpointer.steps()
        for name, st in self.states.items():
            if name not in self.best_scores and st.best.best_step is not None and st.best.best_step in kept:
                self._score_best_checkpoint(name, st.best.best_step)
        report = final_report(self.opts.run, self.step, self.stop_requested, self.control.applied_generation,
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


def main(argv: list[str] | None = None) -> int:
    """`asyncmtl-train`: exit 0 after the final evaluation, 2 for a bad spec or data, 3 when a storage
    write failed (asyncmtl.termination: a one-line termination message says which path and why), 1
    otherwise.

    Under `torchrun` every rank runs this; rank 0 serves the metrics. A worker group torchrun restarted
    after a failure (`TORCHELASTIC_RESTART_COUNT` > 0) resumes from the latest checkpoint, as `--resume`."""
    from asyncmtl.data import DataError
    from asyncmtl.spec import SpecError, load_spec_file
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
        spec, name = load_spec_file(args.spec)
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
