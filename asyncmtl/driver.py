"""The run policy, once, for both runtimes: `RunDriver` around the pure decision core.

`reconcile(spec, status, observations) -> (status, actions)` decides; what surrounds it is the
same on a laptop and on a cluster, and lives here:
- the references a run reads from other runs before it starts (easiest-first's order, BAM's teacher
  checkpoints, each checked to exist), read once and kept;
- building each poll's `Observations`: the trainer through the runtime, the training-set sizes
  the trainer reports (remembered), the state of every soft-label inference attempt;
- checking soft labels before they are used: every shard present, matching its sha256, and the
  rows adding up to the task's training-set size, then writing the manifest;
- an inference attempt the runtime no longer has (a resumed local run, a deleted inference Job)
  whose manifest is missing is launched again, so a run never waits on something nobody runs;
- dispatching the core's actions to the runtime, in order;
- the end of a run: the report (`asyncmtl.report`) and what is kept of the checkpoints
  (`asyncmtl.retention`; a retention failure leaves the run Succeeded, with a Warning Event).

A runtime is a `RuntimePort`: how it sees its trainer and its inference attempts, and how it
writes control, launches inference and posts Events. The local runtime implements it with
processes and files (`asyncmtl.local.runtime`), the operator with the Kubernetes API and
Prometheus (`asyncmtl_operator.controller`). Tests use a fake port (`tests/unit/test_driver.py`).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

from asyncmtl.artifacts import CHECKPOINT_STATE, FINAL, checkpoint_file, convergence_order, read_history, teacher_steps
from asyncmtl.control import ControlDocument
from asyncmtl.core.actions import Action, Complete, EmitEvent, Fail, LaunchInference, WriteControl
from asyncmtl.core.observations import InferenceObservation, Observations
from asyncmtl.core.reconcile import reconcile
from asyncmtl.core.status import RunStatus
from asyncmtl.lifecycle import TaskPhase
from asyncmtl.logs import run_logger
from asyncmtl.report import write_report
from asyncmtl.retention import Retained, retain_after_run
from asyncmtl.softlabels import manifest_key, write_manifest
from asyncmtl.spec import RunSpec, SpecError, SpecIssue
from asyncmtl.storage import RunStorage, StorageError

EventType = Literal["Normal", "Warning"]
Outcome = Literal["Succeeded", "Failed"]


@dataclass(frozen=True)
class InferenceAttempt:
    """What a runtime knows of one soft-label inference attempt (its shard processes, or its Job).

    `Succeeded` means every shard's process or pod ended well: the shards are written but not yet
    verified (the driver verifies them). `Failed` carries the reason shown to the user.
    `shards` is the number of shards the attempt writes (Job completions).
    """

    state: Literal["Running", "Succeeded", "Failed"]
    shards: int
    message: str = ""


class RuntimePort(Protocol):
    """What a runtime does for the driver. Every method may raise `asyncmtl.storage.StorageError`
    (or a runtime's own error), which ends the poll; the next poll repeats it."""

    def observe_trainer(self, obs: Observations) -> None:
        """Fill the trainer's part of `obs`: `trainer_state`, `trainer_message`, the blocked reason,
        and `metrics` or `metrics_error`."""

    def inference_attempt(self, task: str, step: int, attempt: int) -> InferenceAttempt | None:
        """The state of `task`'s inference `attempt` from the checkpoint at `step`, or None when this
        runtime has no such attempt (never launched by this process, or its Job is gone)."""

    def write_control(self, document: ControlDocument) -> None:
        """Publish the control document (a file written atomically; the control ConfigMap)."""

    def launch_inference(self, action: LaunchInference) -> None:
        """Start the shards of one inference attempt (processes; an Indexed Job). Idempotent."""

    def post_event(self, type_: EventType, reason: str, message: str) -> None:
        """Record a transition (a log line and the progress view; a Kubernetes Event)."""


StorageOf = Callable[[str], RunStorage]
"""The storage of another run (by name) under this run's storage settings (BAM's teacher, easiest-first's reference)."""


@dataclass
class StepResult:
    """One poll: the new status, what was observed, and the run's outcome once it has one."""

    status: RunStatus
    observations: Observations
    outcome: Outcome | None = None


@dataclass
class FinishResult:
    """What the end of a run left: the report's URIs by file name, and the checkpoints kept (None
    when the run did not succeed, or retention failed)."""

    report: dict[str, str] = field(default_factory=dict)
    retained: Retained | None = None


@dataclass
class RunDriver:
    """The run policy of one run (see the module docstring). One per run, kept for the run's life
    (the local runtime's; the operator keeps one per run in memory and makes a new one after a restart).

    Attributes:
        spec: the spec the run's pods or processes were started with.
        name: the run's name.
        storage: this run's storage.
        storage_of: the storage of another run by name (`StorageOf`).
        where: where the spec came from, for error messages (a file, or `namespace/name`).
        train_sizes: training examples per task (from the trainer's series; the local runtime seeds
            them from its preflight), the row count soft labels must add up to.
    """

    spec: RunSpec
    name: str
    storage: RunStorage
    storage_of: StorageOf
    where: str = ""
    log: logging.Logger | logging.LoggerAdapter | None = None  # default: run_logger("asyncmtl.driver", name)
    train_sizes: dict[str, int] = field(default_factory=dict)
    _reference_order: list[str] | None = None
    _teacher_steps: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = run_logger("asyncmtl.driver", self.name)  # every message names the run

    # ---- references to other runs --------------------------------------------------------------
    def prepare(self, status: RunStatus) -> None:
        """Read what this run needs of other runs and has not read yet: easiest-first's reference
        order (while the task order is not fixed) and BAM's teacher steps (while an inference from
        them is still to be launched). Called before a run starts and at every poll (it reads once).

        Raises:
            SpecError: `spec.orderFromRun` names no finished run, or `spec.teacherRun` names a run with
                no final evaluation or without a task's best checkpoint.
            StorageError: storage could not be read.
        """
        if self._reference_order is None and self.spec.order == "easiest-first" and status.task_order is None:
            self._reference_order = self.reference_order()
        if self._teacher_steps is None and self.spec.resolved_method.teacher and _teacher_launch_due(status):
            self._teacher_steps = self.teacher_steps()

    def reference_order(self) -> list[str]:
        """Sequential easiest-first: the order the tasks of `spec.orderFromRun` converged in, from its history.

        Raises:
            SpecError: that run has no history (path spec.orderFromRun).
        """
        ref = self.storage_of(str(self.spec.order_from_run))
        history = read_history(ref)
        if not history:
            raise self._spec_error("spec.orderFromRun", f"no finished run {self.spec.order_from_run!r} in {ref.uri()}")
        order = convergence_order(history, [t.name for t in self.spec.tasks])
        self.log.info("easiest-first order from %s: %s", ref.uri(), ", ".join(order))
        return order

    def teacher_steps(self) -> dict[str, int]:
        """BAM: each task's best checkpoint step in the teacher run (its final evaluation), every one
        checked to exist.

        Raises:
            SpecError: naming spec.teacherRun when that run has no final evaluation, or no best
                checkpoint of a task.
        """
        teacher = self.soft_label_storage()
        if not teacher.exists(FINAL):
            raise self._spec_error("spec.teacherRun", f"{teacher.uri()} has no finished run ({FINAL})")
        steps = teacher_steps(teacher, [t.name for t in self.spec.tasks])
        for t in self.spec.tasks:
            if t.name not in steps or not teacher.exists(checkpoint_file(steps[t.name], CHECKPOINT_STATE)):
                raise self._spec_error("spec.teacherRun", f"no best checkpoint of task {t.name} in {teacher.uri()}")
        return steps

    def soft_label_storage(self) -> RunStorage:
        """Where the checkpoints soft labels come from, and the soft labels go: the teacher run's
        storage under BAM, else this run's."""
        if self.spec.resolved_method.teacher and self.spec.teacher_run and self.spec.teacher_run != self.name:
            return self.storage_of(self.spec.teacher_run)
        return self.storage

    def _spec_error(self, path: str, message: str) -> SpecError:
        return SpecError([SpecIssue(path=path, file=self.where or None, message=message)])

    # ---- the poll ----------------------------------------------------------------------------------
    def start(self, port: RuntimePort, now: float) -> RunStatus:
        """A new run's first decision (control generation 0, Events), dispatched to `port`.

        Raises:
            SpecError, StorageError: as `prepare`.
        """
        status = RunStatus()
        self.prepare(status)
        status, actions = reconcile(self.spec, status, self.observations(status, now, metrics_error="starting"),
                                    run=self.name)
        self.dispatch(port, actions)
        return status

    def step(self, port: RuntimePort, status: RunStatus, now: float) -> StepResult:
        """One poll: observe (trainer through `port`, inference attempts, storage), decide, dispatch.

        Raises:
            SpecError, StorageError: as `prepare`; StorageError also from the port or soft-label checks.
        """
        self.prepare(status)
        obs = self.observations(status, now)
        port.observe_trainer(obs)
        if obs.metrics is not None and obs.metrics.train_sizes:
            self.train_sizes.update(obs.metrics.train_sizes)
        self._observe_inference(port, status, obs)
        new, actions = reconcile(self.spec, status, obs, run=self.name,
                                 ack_timeout_seconds=self.spec.metrics.ack_timeout_seconds)
        return StepResult(status=new, observations=obs, outcome=self.dispatch(port, actions))

    def observations(self, status: RunStatus, now: float, **kw) -> Observations:
        """A poll's observations before the runtime adds its own: the time (seconds since the epoch), BAM's
        teacher steps and, while the task order is not fixed, easiest-first's reference order."""
        return Observations(time=now, teacher_steps=self._teacher_steps or {},
                            reference_order=self._reference_order if status.task_order is None else None, **kw)

    def _observe_inference(self, port: RuntimePort, status: RunStatus, obs: Observations) -> None:
        storage = self.soft_label_storage()
        for task, ts in status.tasks.items():
            if ts.phase != TaskPhase.AWAITING_SOFT_LABELS or ts.best_step is None or not ts.inference_attempts:
                continue  # BAM before its first launch: reconcile launches once the teacher steps are known
            step = ts.best_step
            attempt = port.inference_attempt(task, step, ts.inference_attempts)
            if attempt is None:
                if storage.exists(manifest_key(task, step)):  # verified before a restart: nothing to redo
                    obs.inference[task] = InferenceObservation(checkpoint_step=step, state="Succeeded",
                                                               uri=storage.uri(manifest_key(task, step)))
                    continue
                msg = (f"task {task}: soft-label inference (step {step}, attempt {ts.inference_attempts}) is not "
                       f"running and left no soft labels: started again")
                self.log.warning("%s", msg)
                port.post_event("Warning", "InferenceRelaunched", msg)
                port.launch_inference(LaunchInference(task=task, checkpoint_step=step, shards=self.spec.distillation.shards,
                                                      attempt=ts.inference_attempts,
                                                      source_run=self.spec.teacher_run if self.spec.resolved_method.teacher else None))
                obs.inference[task] = InferenceObservation(checkpoint_step=step, state="Running")
            elif attempt.state == "Succeeded":
                try:
                    uri = write_manifest(storage, task, step, attempt.shards, self.train_sizes.get(task))
                    obs.inference[task] = InferenceObservation(checkpoint_step=step, state="Succeeded", uri=uri)
                except StorageError as exc:  # counted as a failed attempt: retried, then the task is Frozen
                    self.log.warning("task %s: inference done but its soft labels do not check out: %s", task, exc)
                    obs.inference[task] = InferenceObservation(checkpoint_step=step, state="Failed", message=str(exc))
            else:
                obs.inference[task] = InferenceObservation(checkpoint_step=step, state=attempt.state, message=attempt.message)

    def dispatch(self, port: RuntimePort, actions: list[Action]) -> Outcome | None:
        """Execute the core's actions through `port`, in order. Returns the run's outcome when an
        action ends it (Complete: Succeeded; Fail: Failed)."""
        outcome: Outcome | None = None
        for a in actions:
            if isinstance(a, WriteControl):
                port.write_control(a.document)
            elif isinstance(a, LaunchInference):
                port.launch_inference(a)
            elif isinstance(a, EmitEvent):
                (self.log.warning if a.type == "Warning" else self.log.info)("%s: %s", a.reason, a.message)
                port.post_event(a.type, a.reason, a.message)
            elif isinstance(a, Complete):
                outcome = "Succeeded"
            elif isinstance(a, Fail):
                outcome = "Failed"
        return outcome

    # ---- the end -----------------------------------------------------------------------------------
    def finish(self, port: RuntimePort, status: RunStatus) -> FinishResult:
        """A run that has ended (Succeeded or Failed): write its report, then, if it Succeeded, prune
        its checkpoints as `spec.storage.keepCheckpoints` says. A retention failure is a Warning Event
        (`RetentionFailed`): the run has Succeeded and its checkpoints just stay.

        Raises:
            StorageError: the report could not be written (`StorageFault` for a full or read-only store).
        """
        with tempfile.TemporaryDirectory(prefix="asyncmtl-report-") as scratch:
            result = FinishResult(report=write_report(self.name, status, self.storage, scratch))
        if status.phase == "Succeeded":
            try:
                result.retained = retain_after_run(self.storage, [t.name for t in self.spec.tasks],
                                                   self.spec.storage.keep_checkpoints)
                self.log.info("checkpoints kept: %s; deleted: %s", result.retained.kept,
                              result.retained.deleted)
            except StorageError as exc:
                msg = f"checkpoint retention (storage.keepCheckpoints {self.spec.storage.keep_checkpoints}) failed: {exc}"
                self.log.warning("%s", msg)
                port.post_event("Warning", "RetentionFailed", msg)
        return result


def _teacher_launch_due(status: RunStatus) -> bool:
    """BAM: a run that has not started, or a task still waiting for its first inference from the teacher."""
    return not status.tasks or any(ts.phase == TaskPhase.AWAITING_SOFT_LABELS and not ts.inference_attempts
                                   for ts in status.tasks.values())
