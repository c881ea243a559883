"""Table-driven tests of `reconcile(spec, status, observations)`."""
from __future__ import annotations

import pytest

from asyncmtl.control import ConvergedSignal, SkipDistillationSignal, SoftLabelsReadySignal, StopSignal
from asyncmtl.core.actions import Complete, EmitEvent, Fail, LaunchInference, WriteControl
from asyncmtl.core.convergence import TaskObservation, ValidationPoint
from asyncmtl.core.observations import InferenceObservation, Observations, TrainerObservation
from asyncmtl.core.reconcile import reconcile
from asyncmtl.core.status import RunStatus
from asyncmtl.spec import parse_run
from tests.conftest import builtin_task, run_doc

IV = 100


def make_spec(names=("a", "b", "c"), patience=2, **spec):
    tasks = [builtin_task("sentiment", patience=patience) | {"name": n} for n in names]
    doc = run_doc(tasks, training={"validationInterval": IV, "maxSteps": 10000}, **spec)
    return parse_run(doc).spec


class Sim:
    """Drives reconcile like a runtime: per-task value series, trainer best-so-far, ack."""

    def __init__(self, spec):
        self.spec = spec
        self.status = RunStatus()
        self.t = 1000.0
        self.best: dict[str, tuple[int, float]] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, tuple[int, float]] = {}
        self.applied = 0
        self.actions_log: list = []
        self.extra: dict[str, dict] = {}  # task -> more TaskObservation fields at its last step (last_epochs, ...)

    def validate(self, step: int, values: dict[str, float]):
        for task, v in values.items():
            self.counts[task] = self.counts.get(task, 0) + 1
            self.last[task] = (step, v)
            b = self.best.get(task)
            if b is None or v > b[1]:
                self.best[task] = (step, v)

    def rewind(self, step: int):
        """What the trainer does on a rewind: restore best-so-far as of `step`."""
        for task in list(self.best):
            self.last[task] = (step, self.last[task][1])
            if self.best[task][0] > step:
                self.best[task] = (step, self.last[task][1])

    def obs(self, *, metrics=True, trainer_state="Running", inference=None, step=None, complete=None):
        tasks = {t: TaskObservation(validations=self.counts[t], last_step=self.last[t][0], last_value=self.last[t][1],
                                    best_step=self.best[t][0], best_value=self.best[t][1], **self.extra.get(t, {}))
                 for t in self.last}
        m = TrainerObservation(global_step=step or max([s for s, _ in self.last.values()] or [0]),
                               applied_generation=self.applied, tasks=tasks,
                               validation_complete_step=complete) if metrics else None
        return Observations(time=self.t, metrics=m, trainer_state=trainer_state, inference=inference or {},
                            metrics_error="" if metrics else "connection refused")

    def poll(self, **kw):
        self.t += 1.0
        self.status, actions = reconcile(self.spec, self.status, self.obs(**kw), run="r", ack_timeout_seconds=30)
        self.actions_log.append(actions)
        return actions

    def signals(self):
        return self.status.control.signals if self.status.control else []


def converge_a(sim: "Sim") -> list:
    """Start, then task a peaks at step 100 and drops at 200 (converges with patience 1); b and c rise."""
    sim.poll(metrics=False)
    sim.validate(100, {"a": 70, "b": 10, "c": 10})
    sim.poll()
    sim.validate(200, {"a": 60, "b": 20, "c": 20})
    return sim.poll()


def kinds(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def test_start_writes_an_empty_control_document_and_runs():
    sim = Sim(make_spec())
    actions = sim.poll(metrics=False)
    assert sim.status.phase == "Running"
    assert [a.document.generation for a in kinds(actions, WriteControl)] == [0]
    assert set(sim.status.tasks) == {"a", "b", "c"}
    assert sim.status.condition("MetricsAvailable").status == "False"


@pytest.mark.parametrize("patience,series,converge_at", [
    (2, [60, 70, 69, 68], 400),
    (3, [60, 70, 69, 68, 67], 500),
    (1, [60, 70, 69], 300),
])
def test_one_task_converges_after_patience(patience, series, converge_at):
    sim = Sim(make_spec(patience=patience))
    sim.poll(metrics=False)
    for i, v in enumerate(series, start=1):
        sim.validate(i * IV, {"a": v, "b": 10.0 * i, "c": 10.0 * i})
        actions = sim.poll()
        converged = [s for s in sim.signals() if isinstance(s, ConvergedSignal)]
        if i * IV < converge_at:
            assert not converged
    assert [(s.task, s.best_step, s.rewind_to) for s in converged] == [("a", 200, 200)]
    assert sim.status.tasks["a"].phase == "AwaitingSoftLabels"
    assert sim.status.tasks["a"].converged_at_step == converge_at
    assert [(a.task, a.checkpoint_step, a.shards) for a in kinds(actions, LaunchInference)] == [("a", 200, 2)]
    # every task's track is cut back to the rewind step
    assert all(p.step <= 200 for ts in sim.status.tasks.values() for p in ts.track.points)


def test_observations_before_the_rewind_is_acknowledged_are_ignored():
    sim = Sim(make_spec(patience=1))
    sim.poll(metrics=False)
    sim.validate(100, {"a": 70, "b": 10, "c": 10})
    sim.poll()
    sim.validate(200, {"a": 60, "b": 20, "c": 20})
    sim.poll()  # a converges, rewind to 100, generation 1
    assert sim.status.rewind_generation == 1
    # the trainer has not applied generation 1 yet: b and c plateau on steps the rewind discards
    sim.validate(300, {"a": 60, "b": 5, "c": 5})
    sim.validate(400, {"a": 60, "b": 5, "c": 5})
    sim.poll()
    assert sim.status.tasks["b"].phase == "Training" and sim.status.tasks["c"].phase == "Training"
    assert sim.status.tasks["b"].track.last_step == 100  # nothing after the rewind step was taken in
    # the trainer rewinds and acknowledges; the discarded observations never count
    sim.applied = 1
    sim.rewind(100)
    actions = sim.poll()
    assert sim.status.tasks["b"].phase == "Training"
    assert sim.status.condition("SignalAcknowledged").status == "True"
    # the validations run on the discarded steps were not missed: no warning, no missed count
    assert not [e for e in kinds(actions, EmitEvent) if e.reason == "ValidationMissed"]
    assert sim.status.tasks["b"].track.missed == 0
    # a validation genuinely missed afterwards is still reported
    sim.validate(200, {"b": 30, "c": 30})
    sim.validate(300, {"b": 40, "c": 40})
    actions = sim.poll()
    assert [e.message.split(":")[0] for e in kinds(actions, EmitEvent) if e.reason == "ValidationMissed"] == ["task b", "task c"]
    assert sim.status.tasks["b"].track.missed == 1


def test_two_tasks_converging_in_the_same_poll_share_one_generation():
    sim = Sim(make_spec(patience=1))
    sim.poll(metrics=False)
    sim.validate(100, {"a": 50, "b": 70, "c": 10})
    sim.poll()
    sim.validate(200, {"a": 60, "b": 60, "c": 20})
    sim.validate(300, {"a": 55, "b": 60, "c": 30})  # seen in one poll: a (best 200) and b (best 100)
    actions = sim.poll()
    conv = [s for s in sim.signals() if isinstance(s, ConvergedSignal)]
    assert {(s.task, s.best_step) for s in conv} == {("a", 200), ("b", 100)}
    assert {s.generation for s in conv} == {1} and {s.rewind_to for s in conv} == {200}  # the later best
    assert sorted((a.task, a.checkpoint_step) for a in kinds(actions, LaunchInference)) == [("a", 200), ("b", 100)]
    assert len(kinds(actions, WriteControl)) == 1


def test_a_half_reported_validation_step_is_not_decided_on():
    """The trainer reports a validation step task by task; a poll in between sees a at step 300 and b
    still at 200. Deciding then would converge a alone (its own rewind) and b at the next poll (a second
    one); waiting for the complete step converges both in one generation, as a calm poll would."""
    sim = Sim(make_spec(names=("a", "b"), patience=1))
    sim.poll(metrics=False)
    sim.validate(100, {"a": 50, "b": 50})
    sim.poll(complete=100)
    sim.validate(200, {"a": 60, "b": 70})  # both peak at 200
    sim.poll(complete=200)
    sim.validate(300, {"a": 55})  # a reported step 300 (it meets the rule), b not yet: the step is not complete
    actions = sim.poll(complete=200)
    assert sim.status.tasks["a"].track.last_step == 200 and sim.status.tasks["a"].phase == "Training"
    assert not kinds(actions, WriteControl) and not [s for s in sim.signals() if isinstance(s, ConvergedSignal)]
    sim.validate(300, {"b": 65})
    sim.poll(complete=300)
    conv = [s for s in sim.signals() if isinstance(s, ConvergedSignal)]
    assert {(s.task, s.best_step, s.generation, s.rewind_to) for s in conv} == {("a", 200, 1, 200), ("b", 200, 1, 200)}


def test_an_observation_through_the_complete_step_keeps_only_whole_steps():
    obs = TaskObservation(validations=3, last_step=300, last_value=1.0, best_step=100, best_value=2.0,
                          points=[ValidationPoint(step=200, value=1.5), ValidationPoint(step=300, value=1.0)])
    assert obs.through(None) is obs and obs.through(300) is obs
    assert obs.through(200) is None  # its last step is beyond the complete one: folded at a later poll
    early = obs.model_copy(update={"last_step": 200, "last_value": 1.5})
    assert [p.step for p in early.through(200).points] == [200]


def test_soft_labels_ready_switches_the_task_to_kd():
    sim = Sim(make_spec(patience=1))
    converge_a(sim)
    sim.applied = 1
    sim.rewind(100)
    sim.poll(inference={"a": InferenceObservation(checkpoint_step=100, state="Running")})
    assert sim.status.tasks["a"].phase == "AwaitingSoftLabels"
    actions = sim.poll(inference={"a": InferenceObservation(checkpoint_step=100, state="Succeeded", uri="file:///m.json")})
    assert sim.status.tasks["a"].phase == "KD" and sim.status.tasks["a"].soft_labels_uri == "file:///m.json"
    ready = [s for s in sim.signals() if isinstance(s, SoftLabelsReadySignal)]
    assert [(s.task, s.uri, s.generation) for s in ready] == [("a", "file:///m.json", 2)]
    assert kinds(actions, WriteControl)[0].document.generation == 2
    # inference results for another checkpoint step are not taken for this one
    sim2 = Sim(make_spec(patience=1))
    sim2.status = sim.status.model_copy(deep=True)
    sim2.status.tasks["b"].phase = "AwaitingSoftLabels"
    sim2.status.tasks["b"].best_step = 500
    sim2.applied, sim2.last, sim2.best, sim2.counts = sim.applied, sim.last, sim.best, sim.counts
    sim2.poll(inference={"b": InferenceObservation(checkpoint_step=400, state="Succeeded", uri="file:///old.json")})
    assert sim2.status.tasks["b"].phase == "AwaitingSoftLabels"


def test_failed_inference_is_retried_then_the_task_is_frozen_and_the_run_degraded():
    sim = Sim(make_spec(patience=1, distillation={"maxAttempts": 2}))
    converge_a(sim)
    sim.applied = 1
    sim.rewind(100)
    failed = {"a": InferenceObservation(checkpoint_step=100, state="Failed", message="OOM")}
    actions = sim.poll(inference=failed)
    assert [(a.task, a.attempt) for a in kinds(actions, LaunchInference)] == [("a", 2)]
    assert sim.status.tasks["a"].phase == "AwaitingSoftLabels"
    actions = sim.poll(inference=failed)
    assert not kinds(actions, LaunchInference)
    assert sim.status.tasks["a"].phase == "Frozen"
    assert any(isinstance(s, SkipDistillationSignal) and s.task == "a" for s in sim.signals())
    deg = sim.status.condition("Degraded")
    assert deg.status == "True" and deg.reason == "InferenceFailed" and "OOM" in deg.message
    assert any(isinstance(a, EmitEvent) and a.type == "Warning" for a in actions)


def test_last_task_converging_stops_the_run_and_finishing_completes_it():
    sim = Sim(make_spec(names=("a", "b"), patience=1))
    sim.poll(metrics=False)
    sim.validate(100, {"a": 70, "b": 50})
    sim.poll()
    sim.validate(200, {"a": 60, "b": 60})
    sim.poll()  # a converges
    sim.applied = 1
    sim.rewind(100)
    sim.poll(inference={"a": InferenceObservation(checkpoint_step=100, state="Succeeded", uri="file:///a.json")})
    sim.applied = 2
    sim.validate(200, {"a": 71, "b": 80})
    sim.poll()
    sim.validate(300, {"a": 71, "b": 79})
    actions = sim.poll()  # b converges: last task -> converged + stop, no inference
    last = sim.signals()[-2:]
    assert isinstance(last[0], ConvergedSignal) and last[0].task == "b" and last[0].rewind_to == 200
    assert isinstance(last[1], StopSignal) and last[0].generation == last[1].generation == 3
    assert not kinds(actions, LaunchInference)
    assert sim.status.stopping and sim.status.phase == "Running"
    actions = sim.poll(trainer_state="Finished")
    assert sim.status.phase == "Succeeded" and kinds(actions, Complete)
    # terminal conditions, as a Job's (`kubectl wait --for=condition=Complete`)
    assert sim.status.condition("Complete").status == "True" and sim.status.condition("Failed") is None
    assert sim.poll() == []  # terminal: nothing more


def test_trainer_failure_fails_the_run():
    sim = Sim(make_spec())
    sim.poll(metrics=False)
    actions = sim.poll(metrics=False, trainer_state="Failed")
    assert sim.status.phase == "Failed" and kinds(actions, Fail)
    assert sim.status.condition("Ready").status == "False"
    assert sim.status.condition("Failed").status == "True" and sim.status.condition("Complete") is None


def test_no_decision_without_metrics():
    sim = Sim(make_spec(patience=1))
    sim.poll(metrics=False)
    sim.validate(100, {"a": 70, "b": 10, "c": 10})
    sim.validate(200, {"a": 60, "b": 20, "c": 20})
    sim.poll(metrics=False)
    assert sim.status.tasks["a"].phase == "Training"
    cond = sim.status.condition("MetricsAvailable")
    assert cond.status == "False" and "connection refused" in cond.message


def test_unacknowledged_signal_sets_the_condition_after_the_timeout():
    sim = Sim(make_spec(patience=1))
    converge_a(sim)
    assert sim.status.condition("SignalAcknowledged").status == "Unknown"
    sim.t += 31  # ack_timeout_seconds=30 in Sim.poll
    sim.poll()
    cond = sim.status.condition("SignalAcknowledged")
    assert cond.status == "False" and cond.reason == "NotAcknowledged"


def test_missed_validation_is_reported_as_a_warning_event():
    sim = Sim(make_spec())
    sim.poll(metrics=False)
    sim.validate(100, {"a": 70, "b": 10, "c": 10})
    sim.validate(200, {"a": 71, "b": 11, "c": 11})
    actions = sim.poll()
    missed = [a for a in actions if isinstance(a, EmitEvent) and a.reason == "ValidationMissed"]
    assert len(missed) == 3 and all(a.type == "Warning" for a in missed)
    assert sim.status.tasks["a"].track.missed == 1


def test_trainer_finishing_at_max_steps_succeeds_with_a_message():
    sim = Sim(make_spec())
    sim.poll(metrics=False)
    sim.poll(trainer_state="Finished", metrics=False)
    assert sim.status.phase == "Succeeded" and "maxSteps" in sim.status.message


def test_reconcile_does_not_modify_its_input():
    sim = Sim(make_spec())
    sim.poll(metrics=False)
    before = sim.status.model_dump()
    reconcile(sim.spec, sim.status, sim.obs(metrics=False, trainer_state="Failed"), run="r")
    assert sim.status.model_dump() == before


def test_a_blocked_trainer_sets_ready_false_with_the_cause_once():
    sim = Sim(make_spec())
    sim.poll(metrics=False)
    obs = sim.obs(metrics=False)
    obs.trainer_blocked_reason, obs.trainer_blocked_message = "ImagePullBackOff", "pull access denied for asyncmtl/trainer"
    sim.status, actions = reconcile(sim.spec, sim.status, obs, run="r")
    ready = sim.status.condition("Ready")
    assert (ready.status, ready.reason) == ("False", "ImagePullBackOff") and "pull access denied" in ready.message
    assert [a.reason for a in actions if isinstance(a, EmitEvent)] == ["TrainerBlocked"]
    sim.status, actions = reconcile(sim.spec, sim.status, obs, run="r")
    assert not [a for a in actions if isinstance(a, EmitEvent)]  # no Event storm while it stays blocked
    sim.poll()
    assert sim.status.condition("Ready").status == "True"


def _sizes_obs(sim, sizes):
    obs = sim.obs()
    obs.metrics.train_sizes = sizes
    return obs


@pytest.mark.parametrize("order,expected", [
    ("smallest-first", ["b", "c", "a"]),
    ("largest-first", ["a", "c", "b"]),
])
def test_sequential_order_by_training_set_size(order, expected):
    sim = Sim(make_spec(setting="sequential", order=order, patience=1))
    sim.poll(metrics=False)
    assert {n: t.phase for n, t in sim.status.tasks.items()} == {"a": "Pending", "b": "Pending", "c": "Pending"}
    sim.validate(100, {})
    sim.status, _ = reconcile(sim.spec, sim.status, _sizes_obs(sim, {"a": 900, "b": 100, "c": 500}), run="r")
    assert sim.status.task_order == expected
    starts = [s.task for s in sim.signals() if s.kind == "startTask"]
    assert starts == [expected[0]] and sim.status.tasks[expected[0]].phase == "Training"


def test_sequential_starts_the_next_task_when_the_running_one_converges_and_stops_after_the_last():
    sim = Sim(make_spec(names=("a", "b"), setting="sequential", order="explicit", taskOrder=["b", "a"], patience=1))
    sim.poll(metrics=False)
    sim.poll()  # explicit order needs no sizes
    assert [s.task for s in sim.signals() if s.kind == "startTask"] == ["b"]
    sim.validate(100, {"b": 70})
    sim.poll()
    sim.validate(200, {"b": 60})
    actions = sim.poll()  # b converges -> converged(b) + startTask(a) in one generation, inference for b
    gen = sim.status.control.generation
    last = [s for s in sim.signals() if s.generation == gen]
    assert [(s.kind, s.task) for s in last] == [("converged", "b"), ("startTask", "a")]
    assert [a.task for a in kinds(actions, LaunchInference)] == ["b"]
    assert sim.status.tasks["a"].phase == "Training" and sim.status.tasks["b"].phase == "AwaitingSoftLabels"
    sim.applied = gen
    sim.rewind(100)
    sim.validate(200, {"a": 50, "b": 70})
    sim.poll()
    sim.validate(300, {"a": 40, "b": 70})
    sim.poll()  # a converges: the last task -> stop
    assert sim.signals()[-1].kind == "stop" and sim.status.stopping


def test_fixed_steps_baselines_never_decide_convergence():
    sim = Sim(make_spec(patience=1, method="fixedSteps"))
    sim.poll(metrics=False)
    for step, v in ((100, 70), (200, 60), (300, 50)):
        sim.validate(step, {"a": v, "b": v, "c": v})
        sim.poll()
    assert not sim.signals() and all(t.phase == "Training" for t in sim.status.tasks.values())
    assert sim.status.tasks["a"].track.best_step == 100  # still tracked, for the report
    sim.poll(trainer_state="Finished")
    assert sim.status.phase == "Succeeded"


def test_rewind_none_keeps_the_tracks_and_does_not_wait_for_an_ack():
    sim = Sim(make_spec(patience=1, rewind="none"))
    converge_a(sim)
    (conv,) = [s for s in sim.signals() if s.kind == "converged"]
    assert conv.rewind_to is None and conv.best_step == 100
    assert sim.status.rewind_generation is None
    assert sim.status.tasks["b"].track.last_step == 200  # not cut back
    sim.validate(300, {"a": 60, "b": 15, "c": 15})
    sim.poll()  # observed at once: b and c converge (best 200)
    assert {s.task for s in sim.signals() if s.kind == "converged"} == {"a", "b", "c"}


def test_continual_adds_tasks_without_rewind_or_kd():
    sim = Sim(make_spec(names=("a", "b"), setting="sequential", order="explicit", taskOrder=["a", "b"],
                        method="continual", patience=1))
    sim.poll(metrics=False)
    sim.poll()
    sim.validate(100, {"a": 70})
    sim.poll()
    sim.validate(200, {"a": 60})
    actions = sim.poll()
    # a converged signal without a rewind (the trainer keeps a on its labels), then b starts
    assert [s.kind for s in sim.signals()] == ["startTask", "converged", "startTask"]
    assert sim.signals()[1].task == "a" and sim.signals()[1].rewind_to is None
    assert not kinds(actions, LaunchInference) and sim.status.rewind_generation is None
    assert sim.status.tasks["a"].phase == "Converged" and sim.status.tasks["b"].phase == "Training"


def test_bam_distils_every_task_from_the_teacher_runs_best_checkpoints():
    sim = Sim(make_spec(names=("a", "b"), method="bam", teacherRun="uniform", patience=1))
    sim.poll(metrics=False)
    assert all(t.phase == "AwaitingSoftLabels" for t in sim.status.tasks.values())
    obs = sim.obs(metrics=False)
    obs.teacher_steps = {"a": 300, "b": 500}
    sim.status, actions = reconcile(sim.spec, sim.status, obs, run="r")
    launched = sorted((a.task, a.checkpoint_step, a.source_run) for a in kinds(actions, LaunchInference))
    assert launched == [("a", 300, "uniform"), ("b", 500, "uniform")]
    sim.status, actions = reconcile(sim.spec, sim.status, obs, run="r")
    assert not kinds(actions, LaunchInference)  # launched once
    done = {t: InferenceObservation(checkpoint_step=s, state="Succeeded", uri=f"file:///{t}.json") for t, s in (("a", 300), ("b", 500))}
    obs2 = sim.obs(metrics=False)
    obs2.inference = done
    sim.status, _ = reconcile(sim.spec, sim.status, obs2, run="r")
    assert {n: t.phase for n, t in sim.status.tasks.items()} == {"a": "KD", "b": "KD"}
    for step, v in ((100, 70), (200, 60), (300, 50)):  # no convergence decisions: the run ends at maxSteps
        sim.validate(step, {"a": v, "b": v})
        sim.poll()
    assert not [s for s in sim.signals() if s.kind in ("converged", "stop")]


def test_easiest_first_waits_until_the_runtime_resolved_the_order():
    sim = Sim(make_spec(names=("a", "b"), setting="sequential", order="easiest-first", orderFromRun="joint"))
    sim.poll(metrics=False)
    sim.poll()
    assert sim.status.task_order is None and not sim.signals()
    sim.t += 1.0
    obs = sim.obs().model_copy(update={"reference_order": ["b", "a"]})  # resolved by the runtime
    sim.status, _ = reconcile(sim.spec, sim.status, obs, run="r")
    assert [s.task for s in sim.signals() if s.kind == "startTask"] == ["b"]
    assert sim.status.task_order == ["b", "a"] and sim.spec.task_order is None  # the spec is never changed


def test_tasks_converging_together_share_one_rewind_and_the_event_says_why_its_step():
    """a peaks at 100, b at 200; both meet the rule at 300: one rewind, to 200 (b's best). a's event
    used to say "best 70.00 at step 100, rewinding to step 200" with no word on why."""
    sim = Sim(make_spec(names=("a", "b"), patience=1))
    sim.poll(metrics=False)
    for step, values in ((100, {"a": 70, "b": 10}), (200, {"a": 60, "b": 20}), (300, {"a": 50, "b": 15})):
        sim.validate(step, values)
    actions = sim.poll(complete=300)
    msgs = {a.message.split(":")[0].removeprefix("task "): a.message for a in actions
            if isinstance(a, EmitEvent) and a.reason == "TaskConverged"}
    assert set(msgs) == {"a", "b"}
    assert "best 70.00 at step 100, rewinding to step 200 (the latest best of the tasks converging together: b's;" \
        in msgs["a"] and "a's soft labels still come from its own best checkpoint at step 100" in msgs["a"]
    assert msgs["b"].endswith("best 20.00 at step 200, rewinding to step 200")


@pytest.mark.parametrize("field,rule,values,converge_at", [
    # the paper rule (patience 2) would converge at 400; one epoch is first seen at 600
    ("last_epochs", {"minEpochs": 1.0}, [0.2, 0.4, 0.6, 0.8, 0.95, 1.0], 600),
    # significance: only the trainer's streak counts (reaches patience 2 at 600)
    ("last_streak", {"significance": 0.05}, [0, 0, 1, 0, 1, 2], 600),
])
def test_reconcile_decides_with_the_trainers_epochs_and_significance_streak(field, rule, values, converge_at):
    """What the runtimes fold into the track (the trainer's exported epochs and streak) holds the decision back
    as the trainer's own barrier does, and a rewind restores the values of its step."""
    tasks = [builtin_task("sentiment", patience=2, **rule) | {"name": "a"}, builtin_task("sentiment") | {"name": "b"}]
    sim = Sim(parse_run(run_doc(tasks, training={"validationInterval": IV, "maxSteps": 10000})).spec)
    sim.poll(metrics=False)
    decided = []
    for i, v in enumerate(values, start=1):
        sim.validate(i * IV, {"a": 70.0 if i == 2 else 69.0 - 0.1 * i, "b": 10.0 * i})
        sim.extra["a"] = {field: v}
        sim.poll()
        decided.append(any(isinstance(s, ConvergedSignal) for s in sim.signals()))
    assert decided.index(True) == converge_at // IV - 1
    assert sim.status.tasks["a"].converged_at_step == converge_at
    track = sim.status.tasks["a"].track  # cut back to the rewind (best) step 200: its epochs and streak then
    assert track.last_step == 200 and (track.epochs if field == "last_epochs" else track.streak) == values[1]
