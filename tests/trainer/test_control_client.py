"""The trainer's control client (asyncmtl_trainer.control_client): what a poll reads from the control file, and
when the decision barrier releases."""
from __future__ import annotations

import time

from asyncmtl.control import ControlDocument, ConvergedSignal, SoftLabelsReadySignal, StopSignal, write_control_file
from asyncmtl_trainer.control_client import ControlClient, ControlTick
from asyncmtl_trainer.distributed import Ranks


def _client(tmp_path, timeout: float = 60.0) -> ControlClient:
    return ControlClient(tmp_path / "control.json", Ranks(), timeout)


def test_a_missing_file_gives_an_empty_tick_and_no_document(tmp_path):
    c = _client(tmp_path)
    assert c.poll() == ControlTick([], False)
    assert c.document() is None


def test_a_poll_returns_each_new_generation_once_in_order_with_its_own_signals(tmp_path):
    c = _client(tmp_path)
    doc = ControlDocument(run="r").with_signals(ConvergedSignal(generation=1, task="a", best_step=10, rewind_to=10))
    doc = doc.with_signals(SoftLabelsReadySignal(generation=1, task="a", uri="file:///m.json"), StopSignal(generation=1))
    write_control_file(c.path, doc)
    tick = c.poll()
    assert [g for g, _ in tick.generations] == [1, 2]
    assert [s.kind for s in tick.generations[0][1]] == ["converged"]
    assert [s.kind for s in tick.generations[1][1]] == ["softLabelsReady", "stop"]
    c.applied_generation = 2
    assert c.poll().generations == []  # unchanged file: nothing read again
    write_control_file(c.path, doc.with_signals(StopSignal(generation=1)))
    assert [g for g, _ in c.poll().generations] == [3]  # only what is newer than the applied generation


def test_the_barrier_holds_until_a_later_generation_is_applied(tmp_path):
    c = _client(tmp_path)
    c.applied_generation = 4
    c.hold(["a", "b"])
    assert c.released(c.poll()) is None and c.barrier is not None
    c.applied_generation = 5  # the runtime's decision arrived and was applied
    assert c.released(c.poll()) == (["a", "b"], False)
    assert c.barrier is None


def test_the_barrier_releases_on_timeout_and_says_so(tmp_path):
    c = _client(tmp_path, timeout=0.05)
    c.hold(["a"])
    assert c.poll().release_on_timeout is False
    time.sleep(0.1)
    tick = c.poll()
    assert tick.release_on_timeout is True
    assert c.released(tick) == (["a"], True) and c.barrier is None


def test_a_new_generation_does_not_count_as_a_timeout(tmp_path):
    c = _client(tmp_path, timeout=0.0)
    c.hold(["a"])
    time.sleep(0.01)
    write_control_file(c.path, ControlDocument(run="r").with_signals(StopSignal(generation=1)))
    tick = c.poll()
    assert tick.generations and tick.release_on_timeout is False
