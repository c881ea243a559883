"""The trainer's control protocol (asyncmtl_trainer.control_protocol): one pure function from signals to
task phases, used by the live trainer and by a resumed one."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from asyncmtl.control import (ConvergedSignal, SkipDistillationSignal, SoftLabelsReadySignal, StartTaskSignal,
                              StopSignal)
from asyncmtl.lifecycle import TaskPhase
from asyncmtl_trainer.control_protocol import TaskAction, TaskControl, apply_generation, replay

TASKS = ("a", "b", "c")
START = {t: TaskControl(TaskPhase.TRAINING) for t in TASKS}


def test_converged_distils_pins_the_best_step_and_rewinds_to_the_first_decided_task():
    fx = apply_generation(START, [ConvergedSignal(generation=1, task="b", best_step=40, rewind_to=40),
                                  ConvergedSignal(generation=1, task="a", best_step=30, rewind_to=40)],
                          distills_on_convergence=True)
    assert fx.tasks["b"] == TaskControl(TaskPhase.AWAITING_SOFT_LABELS, pinned_step=40)
    assert fx.tasks["a"] == TaskControl(TaskPhase.AWAITING_SOFT_LABELS, pinned_step=30)
    assert fx.tasks["c"] == START["c"]
    assert fx.rewind_to == 40 and fx.converged == [("b", 40), ("a", 30)] and not fx.stop
    assert START["a"].phase == TaskPhase.TRAINING  # the input is not modified


def test_under_continual_mtl_a_converged_task_keeps_its_labels_and_nothing_rewinds():
    fx = apply_generation(START, [ConvergedSignal(generation=1, task="a", best_step=30, rewind_to=30)],
                          distills_on_convergence=False)
    assert fx.tasks["a"] == TaskControl(TaskPhase.TRAINING, decided=True)
    assert fx.rewind_to is None and fx.continual == ["a"] and fx.converged == [("a", 30)]


def test_soft_labels_skip_start_and_stop_in_signal_order():
    tasks = {**START, "a": TaskControl(TaskPhase.AWAITING_SOFT_LABELS, 30), "b": TaskControl(TaskPhase.AWAITING_SOFT_LABELS, 20),
             "c": TaskControl(TaskPhase.PENDING)}
    fx = apply_generation(tasks, [SkipDistillationSignal(generation=3, task="b", reason="3 attempts failed"),
                                  SoftLabelsReadySignal(generation=3, task="a", uri="file:///m.json"),
                                  StartTaskSignal(generation=3, task="c"), StopSignal(generation=3)],
                          distills_on_convergence=True)
    assert fx.tasks == {"a": TaskControl(TaskPhase.KD), "b": TaskControl(TaskPhase.FROZEN),
                        "c": TaskControl(TaskPhase.TRAINING)}
    assert fx.actions == [TaskAction("skipDistillation", "b", "3 attempts failed"),
                          TaskAction("softLabelsReady", "a", "file:///m.json"), TaskAction("startTask", "c")]
    assert fx.soft_labels == {"a": "file:///m.json"} and fx.stop and fx.rewind_to is None


_signal = st.one_of(
    st.builds(lambda t, s: ConvergedSignal(generation=1, task=t, best_step=s, rewind_to=s), st.sampled_from(TASKS),
              st.integers(0, 100)),
    st.builds(lambda t, i: SoftLabelsReadySignal(generation=1, task=t, uri=f"file:///{t}-{i}.json"),
              st.sampled_from(TASKS), st.integers(0, 9)),
    st.builds(lambda t: SkipDistillationSignal(generation=1, task=t, reason="no"), st.sampled_from(TASKS)),
    st.builds(lambda t: StartTaskSignal(generation=1, task=t), st.sampled_from(TASKS)),
)


@settings(max_examples=200, deadline=None)
@given(generations=st.lists(st.lists(_signal, min_size=1, max_size=3), min_size=1, max_size=6),
       through=st.integers(0, 6), distills=st.booleans())
def test_a_resumed_trainer_replays_to_the_phases_the_live_trainer_had(generations, through, distills):
    """`replay` through generation g equals applying generations 1..g one by one, as the live trainer did:
    the same phases, pinned steps and decided flags, and the soft labels of exactly the tasks now in KD."""
    signals = [s.model_copy(update={"generation": g}) for g, group in enumerate(generations, 1) for s in group]
    live = dict(START)
    loaded: dict[str, str] = {}
    for g in range(1, min(through, len(generations)) + 1):
        fx = apply_generation(live, [s for s in signals if s.generation == g], distills_on_convergence=distills)
        live = fx.tasks
        loaded.update(fx.soft_labels)
    resumed = replay(START, signals, through, distills_on_convergence=distills)
    assert resumed.tasks == live
    assert resumed.soft_labels == {t: u for t, u in loaded.items() if live[t].phase == TaskPhase.KD}
