"""Prometheus exporter of the trainer (prometheus-client), on its own registry (no global state).

Metric names and meanings: `asyncmtl.metric_names`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from asyncmtl.metrics_endpoint import MetricsEndpoint
from prometheus_client import CollectorRegistry, Counter, Gauge

from asyncmtl import metric_names as M


class TrainerExporter(MetricsEndpoint):
    """Holds and serves the trainer's series for one run. `port` 0 binds a free port."""

    def __init__(self, run: str, tasks: list[str], *, registry: CollectorRegistry | None = None) -> None:
        self.run = run
        super().__init__(registry or CollectorRegistry())
        r = self.registry
        # registered first: the exposition lists it before the per-task series (see metric_names)
        self.validation_complete_step = Gauge(
            M.VALIDATION_COMPLETE_STEP, "Last validation step reported for every validated task", ["run"], registry=r)
        self.validation_complete_step.labels(run).set(0)
        # registered after the complete step and before the last step, and set after the last step: a scrape that
        # reads complete step C and a task's last step C (the only observations decided on, `TaskObservation.through`)
        # reads the epochs and streak of step C exactly — they were set before C was complete, and not yet for a later
        # step when the last step still read C
        self.last_epochs = Gauge(M.VALIDATION_LAST_EPOCHS, "Epochs of the task's training data drawn by the last validation",
                                 ["run", "task"], registry=r)
        self.streak = Gauge(M.VALIDATION_SIGNIFICANT_STREAK, "Consecutive validations significantly below the task's best "
                            "(significance rule)", ["run", "task"], registry=r)  # as last_epochs
        self.validations = Counter(M.VALIDATIONS, "Validation steps run, per task", ["run", "task"], registry=r)
        self.last_step = Gauge(M.VALIDATION_LAST_STEP, "Step of the last validation", ["run", "task"], registry=r)
        self.last_value = Gauge(M.VALIDATION_LAST_VALUE, "Metric value (0-100) at the last validation", ["run", "task"], registry=r)
        self.best_step = Gauge(M.VALIDATION_BEST_STEP, "Step of the best-so-far validation value", ["run", "task"], registry=r)
        self.best_value = Gauge(M.VALIDATION_BEST_VALUE, "Best-so-far validation value (minDelta rule)", ["run", "task"], registry=r)
        self.train_loss = Gauge(M.TRAIN_LOSS, "Mean training loss since the last export", ["run", "task", "kind"], registry=r)
        self.train_examples = Counter(M.TRAIN_EXAMPLES, "Training examples seen", ["run", "task", "kind"], registry=r)
        self.global_step = Gauge(M.GLOBAL_STEP, "Optimizer steps", ["run"], registry=r)
        self.examples_per_second = Gauge(M.EXAMPLES_PER_SECOND, "Training examples per second", ["run"], registry=r)
        self.control_generation = Gauge(M.CONTROL_GENERATION, "Last control generation applied", ["run"], registry=r)
        self.control_step = Gauge(M.CONTROL_APPLIED_STEP, "Step at which the last control generation was applied", ["run"], registry=r)
        self.task_mode = Gauge(M.TASK_MODE, "1 for the task's current training mode", ["run", "task", "mode"], registry=r)
        self.trainer_state = Gauge(M.TRAINER_STATE, "1 for the trainer's current state", ["run", "state"], registry=r)
        self.rewinds = Counter(M.REWINDS, "Rewinds applied", ["run"], registry=r)
        self.train_size = Gauge(M.TRAIN_SIZE, "Examples in the task's training split", ["run", "task"], registry=r)
        self.chance = Gauge(M.TASK_CHANCE, "Validation score (0-100) of a constant predictor: the task's chance score",
                            ["run", "task"], registry=r)
        self.loss_weight = Gauge(M.LOSS_WEIGHT, "The task's loss weight (weighting methods)", ["run", "task"], registry=r)
        for t in tasks:
            self.validations.labels(run, t)
            for kind in M.LOSS_KINDS:
                self.train_examples.labels(run, t, kind)
        self.rewinds.labels(run)
        self.set_state("starting")


    def serve_announced(self, port: int, addr: str, workdir: Path) -> int:
        """Serve the metrics and write `workdir/trainer.json` ({"metricsPort", "pid"}: how a local runtime
        finds the port when `port` is 0). Returns the bound port."""
        bound = self.serve(port, addr)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "trainer.json").write_text(json.dumps({"metricsPort": bound, "pid": os.getpid()}))
        return bound

    def describe_tasks(self, modes: dict[str, str], train_sizes: dict[str, int], chance: dict[str, float]) -> None:
        """Each task's mode, training-split size (examples) and chance score (0-100), once at setup."""
        for task, mode in modes.items():
            self.set_mode(task, mode)
            self.train_size.labels(self.run, task).set(train_sizes[task])
            self.chance.labels(self.run, task).set(chance[task])

    def set_state(self, state: str) -> None:
        for s in M.TRAINER_STATES:
            self.trainer_state.labels(self.run, s).set(1.0 if s == state else 0.0)

    def set_mode(self, task: str, mode: str) -> None:
        for m in M.TASK_MODES:
            self.task_mode.labels(self.run, task, m).set(1.0 if m == mode else 0.0)

    def record_validation(self, task: str, step: int, value: float, best_step: int | None, best_value: float | None,
                          epochs: float | None = None, streak: int | None = None) -> None:
        """Export one validation result (`epochs`: of the task's training data drawn by then; `streak`: of the
        significance rule). The best is set before the counter so a scrape never sees a counted validation
        without its best."""
        self.set_task_state(task, step, value, best_step, best_value, epochs, streak)
        self.validations.labels(self.run, task).inc()

    def complete_validation(self, step: int) -> None:
        """Mark validation step `step` complete: every validated task's values for it are exported.
        Set after the last task's `record_validation` (and after a rewind or resume, to the restored
        step), so runtimes decide only on whole validation steps."""
        self.validation_complete_step.labels(self.run).set(step)

    def set_task_state(self, task: str, step: int | None, value: float | None, best_step: int | None,
                       best_value: float | None, epochs: float | None = None, streak: int | None = None) -> None:
        """Set last/best gauges, the epochs and the significance streak at the last step (also after a rewind, to
        the restored state; NaN when unknown)."""
        nan = float("nan")
        self.last_step.labels(self.run, task).set(nan if step is None else step)
        self.last_value.labels(self.run, task).set(nan if value is None else value)
        self.best_step.labels(self.run, task).set(nan if best_step is None else best_step)
        self.best_value.labels(self.run, task).set(nan if best_value is None else best_value)
        self.last_epochs.labels(self.run, task).set(nan if epochs is None else epochs)  # after the step: see __init__
        self.streak.labels(self.run, task).set(nan if streak is None else streak)


class TrainingMeter:
    """Running training losses and throughput between two exports (every few steps and at each validation
    step), so that a scrape reads a mean over steps, not one noisy step.

    Losses stay on the device until `flush` (no host sync per step).
    """

    def __init__(self, exporter: TrainerExporter) -> None:
        self.exporter = exporter
        self._sums: dict[tuple[str, str], list] = {}  # (task, kind) -> [loss sum (0-dim tensor), steps, examples]
        self._examples = 0
        self._seconds = 0.0

    def add(self, losses: dict[str, Any], kinds: dict[str, str], rows: dict[str, int]) -> None:
        """One step's whole-batch losses (task -> 0-dim tensor), each task's loss kind (`supervised`, `kd`)
        and its rows in the global batch."""
        for task, loss in losses.items():
            acc = self._sums.setdefault((task, kinds[task]), [0.0, 0, 0])
            acc[0] = acc[0] + loss
            acc[1] += 1
            acc[2] += rows[task]

    def timed(self, seconds: float, examples: int) -> None:
        """A step took `seconds` (wall clock) for `examples` examples of the global batch."""
        self._seconds += seconds
        self._examples += examples

    def flush(self, step: int, weights: dict[str, float]) -> None:
        """Export the means since the last flush, the tasks' loss `weights` and the global `step`; reset."""
        run, e = self.exporter.run, self.exporter
        for (task, kind), (s, n, ex) in self._sums.items():
            if n:
                e.train_loss.labels(run, task, kind).set(float(s) / n)
                e.train_examples.labels(run, task, kind).inc(ex)
        self._sums.clear()
        for task, w in weights.items():
            e.loss_weight.labels(run, task).set(w)
        if self._seconds > 0:
            e.examples_per_second.labels(run).set(self._examples / self._seconds)
        self._examples, self._seconds = 0, 0.0
        e.global_step.labels(run).set(step)
