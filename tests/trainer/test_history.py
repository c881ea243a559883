"""asyncmtl_trainer.history: `HistoryLog` appends validation records and events to the run's history, each
once (by kind, task, step and the rewinds before it), also across a restart that repeats them after `load`;
a log that is not enabled (ranks other than 0) writes nothing."""
from __future__ import annotations

import pytest

from asyncmtl.artifacts import EventRecord, ValidationRecord, read_history
from asyncmtl.storage import FileRunStorage
from asyncmtl_trainer.history import HistoryLog


@pytest.fixture()
def storage(tmp_path):
    return FileRunStorage(tmp_path / "run")


def _val(task: str, step: int, value: float = 50.0) -> ValidationRecord:
    return ValidationRecord(step=step, task=task, metric="accuracy", value=value)


def _summary(storage) -> list[tuple]:
    return [(r.kind, r.task, r.step, r.rewinds) for r in read_history(storage)]


def test_records_are_appended_in_order_stamped_with_the_rewinds_before_them(storage):
    log = HistoryLog(storage)
    log.record(_val("a", 10, 61.0), rewinds=0)
    log.event("converged", step=10, rewinds=0, task="a")
    log.event("rewind", step=10, rewinds=0)
    log.record(_val("b", 20, 40.0), rewinds=1)
    assert _summary(storage) == [("validation", "a", 10, 0), ("converged", "a", 10, 0), ("rewind", None, 10, 0),
                                 ("validation", "b", 20, 1)]
    first = read_history(storage)[0]
    assert isinstance(first, ValidationRecord) and first.value == 61.0 and first.metric == "accuracy"


def test_an_event_carries_its_kind_step_task_and_a_time(storage):
    import time

    before = time.time()
    HistoryLog(storage).event("kd", step=30, rewinds=2, task="b")
    (rec,) = read_history(storage)
    assert isinstance(rec, EventRecord)
    assert (rec.event, rec.step, rec.task, rec.rewinds) == ("kd", 30, "b", 2)
    assert before <= rec.time <= time.time()


def test_the_same_record_is_written_once(storage):
    log = HistoryLog(storage)
    for _ in range(3):
        log.record(_val("a", 10), rewinds=0)
        log.event("start", step=0, rewinds=0, task="a")
    assert _summary(storage) == [("validation", "a", 10, 0), ("start", "a", 0, 0)]


def test_a_different_value_at_the_same_key_is_still_the_same_record(storage):
    log = HistoryLog(storage)
    log.record(_val("a", 10, 50.0), rewinds=0)
    log.record(_val("a", 10, 99.0), rewinds=0)  # a repeated validation after a restart: the first one stands
    assert [r.value for r in read_history(storage)] == [50.0]


@pytest.mark.parametrize("other", [
    lambda: (_val("b", 10), 0),  # another task
    lambda: (_val("a", 20), 0),  # another step
    lambda: (_val("a", 10), 1),  # the same step on a new trajectory, after a rewind
    lambda: (EventRecord(event="kd", step=10, task="a"), 0),  # another kind
])
def test_records_that_differ_in_kind_task_step_or_rewinds_are_all_written(storage, other):
    log = HistoryLog(storage)
    log.record(_val("a", 10), rewinds=0)
    record, rewinds = other()
    log.record(record, rewinds)
    assert len(read_history(storage)) == 2


def test_after_load_a_restarted_trainer_does_not_repeat_what_is_written(storage):
    first = HistoryLog(storage)
    first.record(_val("a", 10), rewinds=0)
    first.event("converged", step=10, rewinds=0, task="a")

    again = HistoryLog(storage)  # a restart from the checkpoint at step 5 replays steps 5..10
    again.load()
    again.record(_val("a", 10), rewinds=0)
    again.event("converged", step=10, rewinds=0, task="a")
    again.record(_val("a", 15), rewinds=0)  # new
    assert _summary(storage) == [("validation", "a", 10, 0), ("converged", "a", 10, 0), ("validation", "a", 15, 0)]


def test_without_load_a_new_log_writes_again(storage):
    """`load` is what makes a resumed log idempotent (a fresh run's history is empty)."""
    HistoryLog(storage).record(_val("a", 10), rewinds=0)
    HistoryLog(storage).record(_val("a", 10), rewinds=0)
    assert len(read_history(storage)) == 2


def test_load_on_an_empty_history_is_fine(storage):
    log = HistoryLog(storage)
    log.load()
    log.record(_val("a", 1), rewinds=0)
    assert len(read_history(storage)) == 1


def test_a_log_that_is_not_enabled_writes_nothing(storage):
    HistoryLog(storage).record(_val("a", 10), rewinds=0)
    other_rank = HistoryLog(storage, enabled=False)
    other_rank.load()
    other_rank.record(_val("b", 10), rewinds=0)
    other_rank.event("rewind", step=10, rewinds=0)
    assert _summary(storage) == [("validation", "a", 10, 0)]
