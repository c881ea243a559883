"""The run status stays bounded however long the run, without changing a decision: each task keeps
only the validation points a future rewind could restore (with the state its own rule had there) and
its last point. Driven through `reconcile` by a simulated trainer that rewinds as the real one does."""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncmtl.control import ConvergedSignal
from asyncmtl.core import reconcile as reconcile_module
from asyncmtl.core.actions import LaunchInference, WriteControl
from asyncmtl.core.convergence import BestTracker, TaskObservation
from asyncmtl.core.observations import InferenceObservation, Observations, TrainerObservation
from asyncmtl.core.convergence import rule_for
from asyncmtl.core.reconcile import reconcile
from asyncmtl.core.status import RunStatus
from asyncmtl.spec import parse_run
from tests.conftest import builtin_task, run_doc

IV = 200


def _spec(n_tasks: int, patience: int, smoothing: float = 0.0, min_delta: float = 0.0, max_steps: int = 100_000):
    tasks = [builtin_task("sentiment", patience=patience, smoothing=smoothing, minDelta=min_delta)
             | {"name": f"t{i}"} for i in range(n_tasks)]
    return parse_run(run_doc(tasks, training={"validationInterval": IV, "maxSteps": max_steps})).spec


class Trainer:
    """Validates every task every IV steps (values from a seeded curve per task and control
    generation), keeps its BestTrackers per step, and on a rewind restores them as of the rewind step
    (the checkpoint's trackers), as asyncmtl_trainer does."""

    def __init__(self, spec, seed: int, noise: float = 3.0, slowest: float = 30.0) -> None:
        self.spec, self.rng_seed, self.noise = spec, seed, noise
        self.rules = {t.name: rule_for(spec, t) for t in spec.tasks}
        self.trackers = {n: BestTracker() for n in self.rules}
        self.saved: dict[int, dict[str, BestTracker]] = {}
        self.step, self.generation, self.counts = 0, 0, {n: 0 for n in self.rules}
        self.last: dict[str, tuple[int, float]] = {}
        r = random.Random(seed)
        self.peak = {n: r.uniform(40, 90) for n in self.rules}
        self.rate = {n: r.uniform(0.2, slowest) for n in self.rules}  # validation steps to learn half the rest

    def value(self, task: str) -> float:
        k = self.step // IV
        r = random.Random(f"{self.rng_seed}/{task}/{self.step}/{self.generation}")
        return self.peak[task] * (1 - 0.5 ** (k / self.rate[task])) + r.gauss(0, self.noise)

    def validate(self) -> None:
        self.step += IV
        for n in self.rules:
            v = self.value(n)
            self.counts[n] += 1
            self.last[n] = (self.step, v)
            self.trackers[n].update(self.step, v, self.rules[n])
        self.saved[self.step] = {n: t.model_copy() for n, t in self.trackers.items()}

    def apply(self, doc) -> None:
        for s in doc.signals:
            if s.generation <= self.generation:
                continue
            if isinstance(s, ConvergedSignal) and s.rewind_to is not None and s.rewind_to in self.saved:
                self.step = s.rewind_to
                self.trackers = {n: t.model_copy() for n, t in self.saved[s.rewind_to].items()}
                self.last = {n: (s.rewind_to, self.last[n][1]) for n in self.last}
        self.generation = doc.generation

    def observation(self, t: float, inference: dict) -> Observations:
        tasks = {n: TaskObservation(validations=self.counts[n], last_step=self.last[n][0], last_value=self.last[n][1],
                                    best_step=self.trackers[n].best_step, best_value=self.trackers[n].best_value)
                 for n in self.last}
        return Observations(time=t, metrics=TrainerObservation(
            global_step=self.step, applied_generation=self.generation, applied_at_step=self.step, tasks=tasks,
            validation_complete_step=self.step), trainer_state="Running", inference=inference)


def drive(spec, seed: int, polls: int, noise: float = 3.0, slowest: float = 30.0,
          on_poll=None) -> tuple[RunStatus, list[str]]:
    """Run the method for at most `polls` validation steps (fewer if the run stops or reaches
    maxSteps); returns the final status and a log of every decision (control documents, inference
    launches, events)."""
    trainer, status, log, inference = Trainer(spec, seed, noise, slowest), RunStatus(), [], {}
    t = 1000.0
    status, _ = reconcile(spec, status, Observations(time=t, metrics_error="starting"), run="r")
    for _ in range(polls):
        trainer.validate()
        t += 10.0
        status, actions = reconcile(spec, status, trainer.observation(t, inference), run="r")
        inference = {}
        if on_poll is not None:
            on_poll(status)
        for a in actions:
            log.append(a.model_dump_json() if hasattr(a, "model_dump_json") else repr(a))
            if isinstance(a, WriteControl):
                trainer.apply(a.document)
            if isinstance(a, LaunchInference):
                inference[a.task] = InferenceObservation(checkpoint_step=a.checkpoint_step, state="Succeeded",
                                                         uri=f"s3://b/{a.task}/{a.checkpoint_step}/manifest.json")
        if status.phase in ("Succeeded", "Failed") or status.stopping or trainer.step >= spec.training.max_steps:
            break
    return status, log


def _without_points(status: RunStatus) -> dict:
    d = status.model_dump(mode="json")
    for ts in d["tasks"].values():
        ts["track"].pop("points")
    return d


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_tasks=st.integers(2, 5), patience=st.integers(1, 6),
       smoothing=st.sampled_from([0.0, 0.5]), min_delta=st.sampled_from([0.0, 0.5]),
       noise=st.sampled_from([0.5, 3.0, 8.0]))
def test_a_bounded_status_decides_exactly_as_one_that_keeps_every_point(seed, n_tasks, patience, smoothing, min_delta,
                                                                         noise):
    spec = _spec(n_tasks, patience, smoothing, min_delta)
    bounded, bounded_log = drive(spec, seed, 150, noise)
    keep_all = reconcile_module.bound_tracks
    reconcile_module.bound_tracks = lambda st, limit=0: None
    try:
        full, full_log = drive(spec, seed, 150, noise)
    finally:
        reconcile_module.bound_tracks = keep_all
    assert bounded_log == full_log
    assert _without_points(bounded) == _without_points(full)
    assert max(len(ts.track.points) for ts in bounded.tasks.values()) <= max(
        len(ts.track.points) for ts in full.tasks.values())


def test_the_comparison_sees_rewinds_and_thinning():
    """The property above is not vacuous: these runs rewind, and the bounded tracks did drop points."""
    spec = _spec(3, 2)
    status, log = drive(spec, 7, 60)
    assert sum('"kind":"converged"' in line and '"rewind_to":null' not in line.replace(" ", "") for line in log)
    assert any(ts.converged_at_step and ts.converged_at_step // IV > len(ts.track.points) for ts in status.tasks.values())


def test_after_a_rewind_a_task_keeps_the_state_its_own_rule_had_at_the_rewind_step():
    """A rewind restores each task's smoothed value and best as its own rule had them (what the
    trainer restores from the checkpoint's trackers). Before: the track was replayed with a default
    rule (no smoothing, no minDelta), so a smoothing task resumed from its raw value."""
    spec = _spec(2, 1, smoothing=0.8)
    trainer = Trainer(spec, 3)
    status, t, inference = RunStatus(), 1000.0, {}
    status, _ = reconcile(spec, status, Observations(time=t, metrics_error="starting"), run="r")
    for _ in range(60):
        trainer.validate()
        t += 10.0
        status, actions = reconcile(spec, status, trainer.observation(t, inference), run="r")
        rewind = next((s.rewind_to for a in actions if isinstance(a, WriteControl) for s in a.document.signals
                       if isinstance(s, ConvergedSignal) and s.generation > trainer.generation), None)
        for a in actions:
            if isinstance(a, WriteControl):
                trainer.apply(a.document)
        if rewind is not None:
            for n, ts in status.tasks.items():
                assert ts.track.smoothed == pytest.approx(trainer.trackers[n].smoothed), n
                assert ts.track.last_step == rewind
            return
    pytest.fail("no rewind in 60 validation steps")


@pytest.mark.slow
def test_the_status_of_a_100000_step_64_task_run_stays_under_256_kib():
    """The operator's status patch (summary + full run status) of a 100,000-step, 64-task run,
    validated every 200 steps with patience 20 (tasks learning over 1 to 400 validation steps): under
    256 KiB at every validation step, far under etcd's 1.5 MiB object limit; the same run keeping
    every point grows past it."""
    from asyncmtl_operator.controller import Controller

    spec = _spec(64, 20, max_steps=100_000)
    sizes: list[int] = []

    def measure(status: RunStatus) -> None:
        sizes.append(len(json.dumps(Controller.status_patch({"metadata": {"generation": 1}}, status))))

    status, log = drive(spec, 1, 5000, noise=1.0, slowest=400.0, on_poll=measure)
    assert status.step >= 100_000 and sum('"kind":"converged"' in line for line in log) >= 32
    assert max(sizes) < 256 * 1024, max(sizes)
    unbounded = sum(len(ts.track.points) for ts in status.tasks.values())
    assert unbounded <= 64 * 16
