"""`reconcile(spec, status, observations) -> (status, actions)`: every decision of a run.

Pure and I/O-free: the kopf operator and the local runtime both call it on each poll and
execute the returned actions. Given the same inputs it returns the same outputs.

The method (Lu et al., NAACL 2022, Sec. 3), as decisions:
1. Fold each task's observation into its track (`convergence.observe`) — unless a rewind
   signal is out and not yet acknowledged, in which case the observations may describe
   steps the rewind discards and are ignored. Only whole validation steps are folded: a task
   that has reported a step beyond the trainer's `validation_complete_step` waits for the next
   poll (`TaskObservation.through`), so which tasks converge together never depends on when a
   poll lands within a validation step.
2. Tasks in Training whose track satisfies the rule (`has_converged`) converge. One signal
   generation carries `converged(task, bestStep, rewindTo)` for all of them, where rewindTo
   is the latest of their best steps (when several tasks converge in the same poll, the
   least progress is discarded; each task's soft labels still come from its own best
   checkpoint). Every task's track is cut back to rewindTo.
3. If no task is left in Training, the same generation also carries `stop`. Otherwise
   soft-label inference is launched for each newly converged task (phase AwaitingSoftLabels).
4. When a task's inference succeeded, `softLabelsReady(task, uri)` (phase KD). A failed
   inference is retried up to `distillation.maxAttempts`, then the task is Frozen with a
   `skipDistillation` signal and the run is Degraded.
5. The trainer finishing after `stop` (or at maxSteps) completes the run; a trainer failure
   fails it.

Variants (issue "the paper's experiments as features"):
- setting sequential: tasks start Pending; once the training-set sizes are known (the trainer
  exports them) the order is fixed and `startTask` starts the first; each time the running task
  converges the next one is started in the same generation; `stop` after the last.
- method fixedSteps (the baselines): no convergence decision at all; the run ends at maxSteps.
- method continual (Continual MTL): sequential, a converged task keeps its true labels (no
  rewind, no KD); only the next task is started.
- rewind none: the converged signal carries no rewind step and tracks are not cut.
- method bam (BAM, Clark et al. 2019): every task starts AwaitingSoftLabels; once the runtime has read
  the teacher run's best checkpoint steps, inference runs from them (source_run = the teacher);
  each task's softLabelsReady switches it to the teacher-annealed loss; no convergence decisions,
  the run ends at maxSteps.
"""
from __future__ import annotations

from asyncmtl.control import (
    ControlDocument,
    ConvergedSignal,
    SkipDistillationSignal,
    SoftLabelsReadySignal,
    StartTaskSignal,
    StopSignal,
)
from asyncmtl.core.actions import Action, Complete, EmitEvent, Fail, LaunchInference, WriteControl
from asyncmtl.core.convergence import has_converged, observe, retained_steps, rule_for, thin
from asyncmtl.core.observations import Observations
from asyncmtl.core.status import HISTORY_LIMIT, TRACK_POINTS, Condition, ConditionType, HistoryEntry, RunStatus, TaskStatus
from asyncmtl.lifecycle import TaskPhase
from asyncmtl.spec import RunSpec


class _Ctx:
    """Mutable scratch for one reconcile call: the new status and the actions so far."""

    def __init__(self, status: RunStatus, now: float, run: str) -> None:
        self.st = status
        self.now = now
        self.run = run
        self.actions: list[Action] = []
        self.pending_signals: list = []

    def event(self, reason: str, message: str, *, task: str | None = None, step: int | None = None,
              warning: bool = False) -> None:
        self.st.history.append(HistoryEntry(time=self.now, reason=reason, message=message, task=task, step=step))
        del self.st.history[:-HISTORY_LIMIT]
        self.actions.append(EmitEvent(reason=reason, message=message, type="Warning" if warning else "Normal"))

    def condition(self, type_: ConditionType, status: str, reason: str, message: str = "") -> None:
        old = self.st.condition(type_)
        if old is not None and old.status == status and old.reason == reason and old.message == message:
            return
        changed_at = self.now if old is None or old.status != status else old.last_transition_time
        new = Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=changed_at)
        self.st.conditions = [c for c in self.st.conditions if c.type != type_] + [new]

    def signal(self, sig) -> None:
        self.pending_signals.append(sig)

    def flush_signals(self) -> None:
        if not self.pending_signals:
            return
        assert self.st.control is not None
        self.st.control = self.st.control.with_signals(*self.pending_signals)
        self.st.signal_sent_at = self.now
        self.pending_signals = []
        self.actions.append(WriteControl(document=self.st.control))


def reconcile(
    spec: RunSpec,
    status: RunStatus,
    obs: Observations,
    *,
    run: str,
    ack_timeout_seconds: float = 600.0,
) -> tuple[RunStatus, list[Action]]:
    """Decide what to do for one run at one poll.

    Args:
        spec: the validated run spec.
        status: the status after the previous call (a fresh `RunStatus()` at first).
        obs: what was seen at this poll.
        run: the run's name (used in the control document and messages).
        ack_timeout_seconds: a signal not acknowledged within this time (seconds) sets
            SignalAcknowledged=False.

    Returns:
        (new status, actions to execute in order). The input status is not modified.
    """
    ctx = _Ctx(status.model_copy(deep=True), obs.time, run)
    st = ctx.st
    if st.phase in ("Succeeded", "Failed"):
        return st, []

    if st.phase == "Pending":
        _start(spec, ctx)

    if obs.trainer_state == "Failed":
        _fail(ctx, f"trainer failed: {obs.trainer_message}".strip())
        return st, ctx.actions

    if obs.trainer_state == "Queued":  # a suspended Job waits for admission: nothing trains, nothing is stale
        if st.phase != "Queued":
            ctx.event("Queued", "the training Job is suspended until its queue admits it (Kueue)")
        st.phase = "Queued"
        ctx.condition("Ready", "False", "Queued", "waiting for admission: the training Job is suspended")
        ctx.condition("MetricsAvailable", "Unknown", "Queued", "no trainer runs while the Job is suspended")
        ctx.flush_signals()
        return st, ctx.actions
    if st.phase == "Queued":
        st.phase = "Running"
        ctx.event("Admitted", "the training Job was admitted and unsuspended")

    if obs.metrics is None:
        ctx.condition("MetricsAvailable", "False", "MetricsUnavailable", obs.metrics_error or "no metrics yet")
    else:
        ctx.condition("MetricsAvailable", "True", "Scraped")
        if spec.setting == "sequential" and st.task_order is None:
            _start_sequence(spec, ctx, obs.metrics.train_sizes, obs.reference_order)
        _observe(spec, ctx, obs)
        bound_tracks(st)

    _trainer_readiness(ctx, obs)
    if spec.resolved_method.teacher:
        _launch_teachers(spec, ctx, obs)
    _collect_inference(spec, ctx, obs)
    ctx.flush_signals()
    _ack_condition(ctx, ack_timeout_seconds)

    if obs.trainer_state == "Finished":
        _finish(ctx)
    return st, ctx.actions


def _trainer_readiness(ctx: _Ctx, obs: Observations) -> None:
    """Ready=False with the cause while the trainer cannot run (image pull, scheduling, quota)."""
    ready = ctx.st.condition("Ready")
    if obs.trainer_blocked_reason:
        if ready is None or ready.reason != obs.trainer_blocked_reason:
            ctx.event("TrainerBlocked", f"{obs.trainer_blocked_reason}: {obs.trainer_blocked_message}", warning=True)
        ctx.condition("Ready", "False", obs.trainer_blocked_reason, obs.trainer_blocked_message)
    elif ready is not None and ready.status != "True":
        ctx.condition("Ready", "True", "Running", "trainer running")


def task_order(spec: RunSpec, sizes: dict[str, int], reference_order: list[str] | None = None) -> list[str] | None:
    """The sequential order (None while what it depends on is not known yet).

    smallest-first / largest-first sort by training-set size (ties by declaration order); explicit
    uses `spec.task_order`; easiest-first the order the reference run's tasks converged in, which
    the runtime resolves and passes in `Observations.reference_order` (the spec is never changed).
    """
    names = [t.name for t in spec.tasks]
    if spec.order == "explicit":
        return list(spec.task_order) if spec.task_order else None
    if spec.order == "easiest-first":
        return list(reference_order) if reference_order else None  # until the runtime resolved it
    if any(n not in sizes for n in names):
        return None
    return sorted(names, key=lambda n: (sizes[n], names.index(n)), reverse=False) if spec.order == "smallest-first" \
        else sorted(names, key=lambda n: (-sizes[n], names.index(n)))


def _start(spec: RunSpec, ctx: _Ctx) -> None:
    st = ctx.st
    st.phase = "Running"
    first = spec.resolved_method.initial_phase(spec.setting)
    st.tasks = {t.name: TaskStatus(phase=first) for t in spec.tasks}
    st.control = ControlDocument(run=ctx.run)
    ctx.actions.append(WriteControl(document=st.control))
    ctx.condition("Ready", "True", "Running", "trainer started")
    ctx.condition("Degraded", "False", "AsExpected")
    ctx.event("Started", f"run {ctx.run}: training {len(spec.tasks)} tasks ({spec.setting})")


def _launch_teachers(spec: RunSpec, ctx: _Ctx, obs: Observations) -> None:
    st = ctx.st
    for n, ts in st.tasks.items():
        if ts.phase != "AwaitingSoftLabels" or ts.inference_attempts or n not in obs.teacher_steps:
            continue
        ts.best_step = obs.teacher_steps[n]
        ts.inference_attempts = 1
        ctx.actions.append(LaunchInference(task=n, checkpoint_step=ts.best_step, shards=spec.distillation.shards,
                                           attempt=1, source_run=spec.teacher_run))
        ctx.event("InferenceLaunched", f"task {n}: teacher soft labels from {spec.teacher_run} step {ts.best_step}",
                  task=n, step=ts.best_step)


def _start_sequence(spec: RunSpec, ctx: _Ctx, sizes: dict[str, int], reference_order: list[str] | None) -> None:
    order = task_order(spec, sizes, reference_order)
    if order is None:
        return
    ctx.st.task_order = order
    ctx.st.tasks[order[0]].phase = "Training"
    ctx.signal(StartTaskSignal(generation=1, task=order[0]))
    ctx.event("TaskStarted", f"sequential ({spec.order}): order {', '.join(order)}; starting {order[0]}", task=order[0])


def _observe(spec: RunSpec, ctx: _Ctx, obs: Observations) -> None:
    st = ctx.st
    m = obs.metrics
    assert m is not None
    st.step = m.global_step
    if m.applied_generation > st.acknowledged_generation:
        st.acknowledged_generation = m.applied_generation
        ctx.event("SignalAcknowledged", f"trainer applied control generation {m.applied_generation}"
                  f" at step {m.applied_at_step}", step=m.applied_at_step)
    if st.rewind_generation is not None and st.acknowledged_generation < st.rewind_generation:
        return  # the trainer has not rewound yet: these observations may be from discarded steps
    rebaseline = st.rewind_generation is not None  # the first observation since the rewind was applied
    st.rewind_generation = None
    for name, ts in st.tasks.items():
        task_obs = m.tasks.get(name)
        if task_obs is not None:  # decide on whole validation steps only (every task reported)
            task_obs = task_obs.through(m.validation_complete_step)
        if task_obs is None or ts.phase == "Pending":
            continue
        ts.track, missed = observe(ts.track, task_obs, rule_for(spec, spec.task(name)), rebaseline=rebaseline)
        if missed:
            ctx.condition("MetricsAvailable", "True", "ValidationsMissed",
                          f"task {name}: {ts.track.missed} validation(s) seen only through the trainer's counter")
            ctx.event("ValidationMissed", f"task {name}: {missed} validation(s) not seen "
                      f"(counter {task_obs.validations}); decided from the trainer's best-so-far",
                      task=name, step=ts.track.last_step, warning=True)
    if st.stopping or not spec.resolved_method.decides_convergence:
        return
    newly = [n for n, ts in st.tasks.items()
             if ts.phase == "Training" and has_converged(ts.track, rule_for(spec, spec.task(n)))]
    if newly:
        _converge(spec, ctx, newly)


def _converge(spec: RunSpec, ctx: _Ctx, newly: list[str]) -> None:
    st = ctx.st
    method = spec.resolved_method
    rewind_to = max(st.tasks[n].track.best_step or 0 for n in newly) if method.rewinds(spec.rewind) else None
    for n in newly:
        ts = st.tasks[n]
        ts.phase = "Converged"
        ts.converged_at_step = ts.track.last_step
        ts.best_step, ts.best_value = ts.track.best_step, ts.track.best_value
        ts.rewind_to = rewind_to
        # continual too (rewind_to None): the trainer keeps the task on its labels, but learns that the
        # decision was made, so its decision barrier never waits for a signal that would not come
        ctx.signal(ConvergedSignal(generation=1, task=n, best_step=ts.best_step or 0, rewind_to=rewind_to))
        how = f"rewinding to step {rewind_to}" if rewind_to is not None else "no rewind"
        if rewind_to is not None and rewind_to != ts.best_step:
            at = ", ".join(m for m in newly if st.tasks[m].track.best_step == rewind_to)
            how += (f" (the latest best of the tasks converging together: {at}'s; one rewind serves them all, and "
                    f"{n}'s soft labels still come from its own best checkpoint at step {ts.best_step})")
        task = spec.task(n)
        why = (f"{task.patience} consecutive validations significantly below the best (paired bootstrap, "
               f"significance {task.significance:g})" if task.significance is not None else
               f"no improvement for {task.patience} validation steps")
        if ts.track.epochs is not None:
            why += f", {ts.track.epochs:.2f} epochs of its training data seen"
        ctx.event("TaskConverged", f"task {n}: {why}; "
                  f"best {ts.best_value:.2f} at step {ts.best_step}, {how}", task=n, step=ts.converged_at_step)
    if rewind_to is not None:
        for name, ts in st.tasks.items():
            ts.track = ts.track.cut(rewind_to, rule_for(spec, spec.task(name)))
    if spec.setting == "sequential" and st.task_order:
        waiting = [n for n in st.task_order if st.tasks[n].phase == "Pending"]
        if waiting:
            st.tasks[waiting[0]].phase = "Training"
            ctx.signal(StartTaskSignal(generation=1, task=waiting[0]))
            ctx.event("TaskStarted", f"starting task {waiting[0]} (sequential)", task=waiting[0])
    remaining = [n for n, ts in st.tasks.items() if ts.phase in ("Training", "Pending")]
    if not remaining:
        st.stopping = True
        ctx.signal(StopSignal(generation=1))
        ctx.event("Stopping", "every task has converged: final evaluation", step=rewind_to)
    elif method.distills_on_convergence:
        for n in newly:
            ts = st.tasks[n]
            ts.phase = "AwaitingSoftLabels"
            ts.inference_attempts = 1
            ctx.actions.append(LaunchInference(task=n, checkpoint_step=ts.best_step or 0,
                                               shards=spec.distillation.shards, attempt=1))
            ctx.event("InferenceLaunched", f"task {n}: soft labels from step {ts.best_step} "
                      f"in {spec.distillation.shards} shard(s)", task=n, step=ts.best_step)
    ctx.flush_signals()
    if rewind_to is not None:
        st.rewind_generation = st.control.generation if st.control else None


def bound_tracks(st: RunStatus, limit: int = TRACK_POINTS) -> None:
    """Keep each task's track to the points a future rewind could restore (`retained_steps` over the
    tasks that may still converge: Training and Pending) plus its last point, at most `limit` per
    task, so the status stays bounded however long the run (etcd refuses objects over 1.5 MiB).
    Decisions are those of a track that kept every point unless a run has more than `limit`
    distinct rewind targets at once."""
    tracks = {n: ts.track for n, ts in st.tasks.items()}
    steps = retained_steps(tracks, [n for n, ts in st.tasks.items()
                                    if ts.phase in (TaskPhase.TRAINING, TaskPhase.PENDING)])
    for ts in st.tasks.values():
        ts.track = thin(ts.track, steps, limit)


def _collect_inference(spec: RunSpec, ctx: _Ctx, obs: Observations) -> None:
    st = ctx.st
    if st.stopping:
        return
    for n, ts in st.tasks.items():
        if ts.phase != "AwaitingSoftLabels":
            continue
        io = obs.inference.get(n)
        if io is None or io.checkpoint_step != ts.best_step:
            continue
        if io.state == "Succeeded" and io.uri:
            ts.phase = "KD"
            ts.soft_labels_uri = io.uri
            ctx.signal(SoftLabelsReadySignal(generation=1, task=n, uri=io.uri))
            ts.kd_from_generation = st.control.generation + 1 if st.control else None
            ctx.event("SoftLabelsReady", f"task {n}: soft labels at {io.uri}; switching to the KD loss", task=n)
        elif io.state == "Failed":
            if ts.inference_attempts < spec.distillation.max_attempts:
                ts.inference_attempts += 1
                ctx.actions.append(LaunchInference(task=n, checkpoint_step=ts.best_step or 0,
                                                   shards=spec.distillation.shards, attempt=ts.inference_attempts,
                                                   source_run=spec.teacher_run if spec.resolved_method.teacher else None))
                ctx.event("InferenceRetried", f"task {n}: inference failed ({io.message}); "
                          f"attempt {ts.inference_attempts} of {spec.distillation.max_attempts}",
                          task=n, warning=True)
            else:
                ts.phase = "Frozen"
                ctx.signal(SkipDistillationSignal(generation=1, task=n, reason=io.message))
                ctx.condition("Degraded", "True", "InferenceFailed",
                              f"task {n}: soft-label inference failed {ts.inference_attempts} times: {io.message}")
                ctx.event("InferenceFailed", f"task {n}: giving up after {ts.inference_attempts} attempts; "
                          "the task is frozen", task=n, warning=True)


def _ack_condition(ctx: _Ctx, timeout: float) -> None:
    st = ctx.st
    gen = st.control.generation if st.control else 0
    if gen <= st.acknowledged_generation:
        ctx.condition("SignalAcknowledged", "True", "Acknowledged", f"generation {gen}")
    elif st.signal_sent_at is not None and ctx.now - st.signal_sent_at > timeout:
        ctx.condition("SignalAcknowledged", "False", "NotAcknowledged",
                      f"generation {gen} not applied after {timeout:.0f}s (trainer at {st.acknowledged_generation})")
    else:
        ctx.condition("SignalAcknowledged", "Unknown", "Waiting", f"generation {gen} sent")


def _finish(ctx: _Ctx) -> None:
    st = ctx.st
    st.phase = "Succeeded"
    if st.stopping:
        st.message = "every task converged"
    else:
        st.message = "trainer finished at training.maxSteps before every task converged"
    ctx.condition("Ready", "True", "Succeeded", st.message)
    ctx.condition("Complete", "True", "Succeeded", st.message)
    ctx.event("Succeeded", st.message)
    ctx.actions.append(Complete())


def _fail(ctx: _Ctx, reason: str) -> None:
    st = ctx.st
    st.phase = "Failed"
    st.message = reason
    ctx.condition("Ready", "False", "Failed", reason)
    ctx.condition("Failed", "True", "Failed", reason)
    ctx.event("Failed", reason, warning=True)
    ctx.actions.append(Fail(reason=reason))
