"""Per-task trainer state (asyncmtl_trainer.task_state): trackers, their checkpoint round trip, and the pure
questions the training loop asks of them."""
from __future__ import annotations

from asyncmtl.core.convergence import ConvergenceRule
from asyncmtl.lifecycle import TaskPhase
from asyncmtl_trainer.task_state import (TaskState, active_tasks, checkpoint_state, due_for_decision,
                                         kd_sampling_scale, paused, restore_states)

RULE = ConvergenceRule(patience=2, min_delta=0.0, validation_interval=10, direction="max")


def _curve(values: list[float], mode: TaskPhase = TaskPhase.TRAINING) -> TaskState:
    st = TaskState(mode)
    for i, v in enumerate(values, start=1):
        st.record(10 * i, v, RULE)
    return st


def test_record_keeps_best_previous_best_last_point_and_history():
    st = _curve([50.0, 60.0, 55.0, 70.0])
    assert (st.best.best_step, st.best.best_value, st.prev_best_step) == (40, 70.0, 20)
    assert (st.last_step, st.last_value, st.validations) == (40, 70.0, 4)
    assert st.history == [[10, 50.0], [20, 60.0], [30, 55.0], [40, 70.0]]


def test_a_checkpoint_round_trip_restores_trackers_and_history_and_counts_only_on_resume():
    states = {"a": _curve([50.0, 60.0, 55.0]), "b": _curve([30.0])}
    state = checkpoint_state(30, 2, 1, states, {"w": 1})
    assert (state.step, state.applied_generation, state.rewinds, state.weighting) == (30, 2, 1, {"w": 1})
    fresh = {"a": TaskState(), "b": TaskState()}
    restore_states(fresh, state, validations=False)
    assert fresh["a"].to_json() == states["a"].to_json() and fresh["a"].history == states["a"].history
    assert fresh["a"].validations == 0
    restore_states(fresh, state, validations=True)
    assert (fresh["a"].validations, fresh["b"].validations) == (3, 1)


def test_due_for_decision_is_the_convergence_rule_on_undecided_training_tasks():
    flat = [60.0, 50.0, 50.0]  # no improvement for 2 validation steps after the best: converged
    states = {"rising": _curve([50.0, 55.0, 60.0]), "flat": _curve(flat), "decided": _curve(flat),
              "kd": _curve(flat, TaskPhase.KD), "never": TaskState()}
    states["decided"].decided = True
    assert due_for_decision(states, {}, lambda _name: RULE) == ["flat"]


def test_active_paused_and_kd_sampling_scale_follow_the_phases():
    states = {"a": TaskState(TaskPhase.TRAINING), "b": TaskState(TaskPhase.KD), "c": TaskState(TaskPhase.PENDING)}
    assert active_tasks(states) == ["a", "b"]
    assert kd_sampling_scale(states, 0.5) == {"b": 0.5} and kd_sampling_scale(states, 1.0) == {}
    assert not paused(states, "Pause")
    states["c"].mode = TaskPhase.AWAITING_SOFT_LABELS  # awaiting its soft labels
    assert paused(states, "Pause") and not paused(states, "Continue")
    for st in states.values():
        st.mode = TaskPhase.FROZEN
    assert paused(states, "Continue")  # nothing left to train
