"""asyncmtl.metric_names: the names of the trainer's Prometheus series are the contract between trainer,
runtimes and dashboards: valid, distinct Prometheus names under one prefix, every one of them exposed by
the trainer's exporter, each series labelled by `run` (per-task series by `task`), steps never labels, and
the label values of the mode, state and loss-kind series the documented ones."""
from __future__ import annotations

import re

import pytest
import torch
from prometheus_client import CollectorRegistry

from asyncmtl import metric_names as M
from asyncmtl.lifecycle import TaskPhase

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")  # Prometheus' metric name syntax
# every module-level name that holds a metric name (the other constants are PREFIX and label-value tuples)
SERIES = {k: v for k, v in vars(M).items() if k.isupper() and isinstance(v, str) and k != "PREFIX"}
# per-task series, from each name's comment in metric_names.py (and its module docstring: "per-task series a
# `task` label")
PER_TASK = {"VALIDATIONS", "VALIDATION_LAST_STEP", "VALIDATION_LAST_VALUE", "VALIDATION_BEST_STEP",
            "VALIDATION_BEST_VALUE", "TRAIN_LOSS", "TRAIN_EXAMPLES", "TASK_MODE", "TRAIN_SIZE", "TASK_CHANCE",
            "LOSS_WEIGHT", "VALIDATION_LAST_EPOCHS", "VALIDATION_SIGNIFICANT_STREAK"}


def test_there_are_series_and_the_per_task_list_names_only_series():
    assert len(SERIES) >= 15
    assert PER_TASK <= set(SERIES)


@pytest.mark.parametrize("const", sorted(SERIES))
def test_each_name_is_a_valid_prometheus_name_under_the_prefix(const):
    name = SERIES[const]
    assert NAME.fullmatch(name), name
    assert name.startswith(M.PREFIX + "_") and len(name) > len(M.PREFIX) + 1
    # prometheus-client appends _total to a counter; a name that already ends so would be exposed twice over
    assert not name.endswith("_total")


def test_the_names_are_distinct():
    assert len(set(SERIES.values())) == len(SERIES)


def test_the_label_value_tuples_are_distinct_and_valid():
    for values in (M.TASK_MODES, M.TRAINER_STATES, M.LOSS_KINDS):
        assert values and len(set(values)) == len(values)
        assert all(isinstance(v, str) and v for v in values)
    assert set(M.LOSS_KINDS) == {"supervised", "kd"}
    assert set(M.TRAINER_STATES) == {"starting", "training", "paused", "finalizing", "finished"}


def test_the_task_modes_are_the_phases_a_trainer_can_be_in():
    """Every lifecycle phase but Converged (the decision core's view until inference starts: the trainer
    drops the task's loss at once), by its value."""
    assert set(M.TASK_MODES) == {p.value for p in TaskPhase} - {TaskPhase.CONVERGED.value}
    assert {TaskPhase.TRAINING.value, TaskPhase.KD.value} <= set(M.TASK_MODES)


@pytest.fixture()
def exposed():
    """The trainer's exporter with every public setter called once: metric family name -> samples."""
    from asyncmtl_trainer.exporter import TrainerExporter, TrainingMeter

    e = TrainerExporter("r", ["a", "b"], registry=CollectorRegistry())
    e.describe_tasks({"a": M.TASK_MODES[0], "b": M.TASK_MODES[-1]}, {"a": 10, "b": 20}, {"a": 50.0, "b": 25.0})
    e.set_state("training")
    e.record_validation("a", 5, 61.0, 5, 61.0)
    e.complete_validation(5)
    m = TrainingMeter(e)
    m.add({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}, {"a": "supervised", "b": "kd"}, {"a": 3, "b": 5})
    m.timed(1.0, 8)
    m.flush(5, {"a": 1.0, "b": 1.0})
    return {f.name: f.samples for f in e.registry.collect()}


def test_the_exporter_exposes_exactly_the_named_series(exposed):
    assert set(exposed) == set(SERIES.values())


def test_every_sample_has_a_run_label_per_task_series_a_task_label_and_no_step_label(exposed):
    per_task = {SERIES[k] for k in PER_TASK}
    seen = 0
    for name, samples in exposed.items():
        for s in samples:
            seen += 1
            assert s.labels.get("run") == "r", (name, s.labels)
            assert "step" not in s.labels, (name, s.labels)
            assert ("task" in s.labels) == (name in per_task), (name, s.labels)
    assert seen >= 30


def test_mode_state_and_loss_kind_label_values_are_the_documented_ones(exposed):
    def values(name: str, label: str) -> set[str]:
        return {s.labels[label] for s in exposed[name] if label in s.labels}

    assert values(M.TASK_MODE, "mode") == set(M.TASK_MODES)
    assert values(M.TRAINER_STATE, "state") == set(M.TRAINER_STATES)
    assert values(M.TRAIN_LOSS, "kind") | values(M.TRAIN_EXAMPLES, "kind") == set(M.LOSS_KINDS)
    # one mode per task and one state at a time: the current one is 1, the others 0
    for task, mode in (("a", M.TASK_MODES[0]), ("b", M.TASK_MODES[-1])):
        on = [s.labels["mode"] for s in exposed[M.TASK_MODE] if s.labels["task"] == task and s.value == 1.0]
        assert on == [mode]
    assert [s.labels["state"] for s in exposed[M.TRAINER_STATE] if s.value == 1.0] == ["training"]
