"""The trainer's exporter (asyncmtl_trainer.exporter): the training meter's means between exports, and the
metrics file a local runtime reads the port from."""
from __future__ import annotations

import json
import os

import torch
from prometheus_client import CollectorRegistry

from asyncmtl import metric_names as M
from asyncmtl_trainer.exporter import TrainerExporter, TrainingMeter


def _value(e: TrainerExporter, name: str, **labels: str) -> float | None:
    return e.registry.get_sample_value(name, {"run": "r", **labels})


def test_the_meter_exports_each_tasks_mean_loss_examples_and_throughput_then_resets():
    e = TrainerExporter("r", ["a", "b"], registry=CollectorRegistry())
    m = TrainingMeter(e)
    m.add({"a": torch.tensor(1.0), "b": torch.tensor(4.0)}, {"a": "supervised", "b": "kd"}, {"a": 3, "b": 5})
    m.add({"a": torch.tensor(3.0)}, {"a": "supervised"}, {"a": 8})
    m.timed(2.0, 16)
    m.timed(2.0, 16)
    m.flush(20, {"a": 1.5, "b": 0.5})
    assert _value(e, M.TRAIN_LOSS, task="a", kind="supervised") == 2.0
    assert _value(e, M.TRAIN_LOSS, task="b", kind="kd") == 4.0
    assert _value(e, M.TRAIN_EXAMPLES + "_total", task="a", kind="supervised") == 11
    assert _value(e, M.EXAMPLES_PER_SECOND) == 8.0 and _value(e, M.GLOBAL_STEP) == 20
    assert _value(e, M.LOSS_WEIGHT, task="a") == 1.5
    m.add({"a": torch.tensor(7.0)}, {"a": "supervised"}, {"a": 1})
    m.flush(30, {})
    assert _value(e, M.TRAIN_LOSS, task="a", kind="supervised") == 7.0  # a mean since the last flush only


def test_serve_announced_binds_a_free_port_and_writes_it_with_the_pid(tmp_path):
    e = TrainerExporter("r", ["a"], registry=CollectorRegistry())
    try:
        port = e.serve_announced(0, "127.0.0.1", tmp_path / "wd")
        assert port > 0
        assert json.loads((tmp_path / "wd" / "trainer.json").read_text()) == {"metricsPort": port, "pid": os.getpid()}
    finally:
        e.close()


def test_epochs_and_streak_are_exposed_between_the_complete_step_and_the_last_step_and_set_after_it():
    """A scrape reads the exposition top to bottom: complete step, then epochs and streak, then the last step. The
    trainer sets the last step first, so a scrape that passes `through` (last step == complete step) reads the
    epochs and streak of that very step."""
    from prometheus_client import generate_latest

    from asyncmtl.local.scrape import parse_trainer_metrics

    e = TrainerExporter("r", ["a"])
    e.record_validation("a", 20, 61.0, 20, 61.0, epochs=1.5, streak=0)
    e.complete_validation(20)
    text = generate_latest(e.registry).decode()
    first = {name: text.index(f"\n{name}{{") for name in (M.VALIDATION_COMPLETE_STEP, M.VALIDATION_LAST_EPOCHS,
                                                          M.VALIDATION_SIGNIFICANT_STREAK, M.VALIDATION_LAST_STEP)}
    assert first[M.VALIDATION_COMPLETE_STEP] < first[M.VALIDATION_LAST_EPOCHS] < first[M.VALIDATION_LAST_STEP]
    assert first[M.VALIDATION_COMPLETE_STEP] < first[M.VALIDATION_SIGNIFICANT_STREAK] < first[M.VALIDATION_LAST_STEP]
    obs = parse_trainer_metrics(text, "r").tasks["a"]
    assert (obs.last_step, obs.last_epochs, obs.last_streak) == (20, 1.5, 0)
    calls = []  # the order the gauges are set in
    for name in ("last_step", "last_epochs", "streak"):
        gauge = getattr(e, name)
        gauge.labels = (lambda g, n: lambda *a: calls.append(n) or g.__class__.labels(g, *a))(gauge, name)
    e.set_task_state("a", 40, 60.0, 20, 61.0, 2.0, 1)
    assert calls.index("last_step") < calls.index("last_epochs") and calls.index("last_step") < calls.index("streak")
