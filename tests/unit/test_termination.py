"""asyncmtl.termination: how an entry point says why it stopped: a one-line termination message (at most the
kubelet's 4096 bytes, never raising) and its exit status (2 bad input, 3 storage fault, 1 anything else),
and the exit code a rank records for its launcher."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from asyncmtl import termination as T
from asyncmtl.storage import StorageFault


def test_bad_input_and_storage_faults_are_the_statuses_that_are_not_retried():
    assert {T.EXIT_BAD_INPUT, T.EXIT_STORAGE_FAULT} == set(T.NOT_RETRIED)
    assert 0 not in T.NOT_RETRIED and 1 not in T.NOT_RETRIED
    assert T.EXIT_BAD_INPUT != T.EXIT_STORAGE_FAULT


def test_default_path_is_the_kubernetes_file_only_where_it_exists(monkeypatch, tmp_path):
    monkeypatch.setattr(T, "KUBERNETES_PATH", tmp_path / "termination-log")
    assert T.default_path() is None
    (tmp_path / "termination-log").write_text("")
    assert T.default_path() == tmp_path / "termination-log"


def test_write_message_keeps_the_first_line_of_the_message(tmp_path):
    p = tmp_path / "log"
    T.write_message(p, "\n  the data is bad: x.jsonl:3\nTraceback (most recent call last):\n  ...\n")
    assert p.read_text() == "the data is bad: x.jsonl:3"
    assert T.read_message(p) == "the data is bad: x.jsonl:3"


def test_write_message_cuts_a_long_line_at_the_kubelet_s_limit(tmp_path):
    p = tmp_path / "log"
    T.write_message(p, "é" * 5000)  # two bytes each
    assert len(p.read_bytes()) == T.MAX_BYTES == 4096


def test_write_message_of_nothing_writes_an_empty_message(tmp_path):
    p = tmp_path / "log"
    p.write_text("an older message")
    T.write_message(p, "   \n ")
    assert p.read_bytes() == b""
    assert T.read_message(p) is None


def test_write_message_to_no_path_or_an_unwritable_one_does_not_raise(tmp_path):
    T.write_message(None, "x")
    T.write_message(tmp_path / "no" / "such" / "folder" / "log", "x")
    assert not (tmp_path / "no").exists()


def test_read_message_of_a_missing_file_is_none(tmp_path):
    assert T.read_message(tmp_path / "none") is None


def test_an_exit_code_is_recorded_read_back_and_cleared(tmp_path):
    assert T.recorded_exit_code(tmp_path, 1) == 1  # nothing recorded: the default
    T.write_exit_code(tmp_path, T.EXIT_STORAGE_FAULT)
    assert T.recorded_exit_code(tmp_path, 1) == T.EXIT_STORAGE_FAULT
    T.clear_exit_code(tmp_path)
    assert T.recorded_exit_code(tmp_path, 7) == 7
    T.clear_exit_code(tmp_path)  # nothing to clear: no error


def test_a_garbled_exit_code_file_reads_as_the_default(tmp_path):
    (tmp_path / T.EXIT_CODE_FILE).write_text("not a number")
    assert T.recorded_exit_code(tmp_path, 5) == 5


def test_recording_an_exit_code_in_a_missing_workdir_does_not_raise(tmp_path):
    T.write_exit_code(tmp_path / "missing", 2)
    T.clear_exit_code(tmp_path / "missing")
    assert T.recorded_exit_code(tmp_path / "missing", 1) == 1


def test_add_argument_adds_an_optional_termination_log_path():
    p = argparse.ArgumentParser()
    T.add_argument(p, "the shard")
    assert p.parse_args([]).termination_log is None
    assert p.parse_args(["--termination-log", "/x/y"]).termination_log == Path("/x/y")


class BadSpec(ValueError):
    pass


@pytest.mark.parametrize("exc, bad_input, status, message", [
    (BadSpec("spec.tasks[0]: no data"), (BadSpec,), 2, "spec.tasks[0]: no data"),
    (StorageFault("/store/x", "No space left on device (ENOSPC)"), (), 3,
     "storage fault: cannot write /store/x: No space left on device (ENOSPC)"),
    (RuntimeError("boom\nsecond line"), (BadSpec,), 1, "the trainer failed: RuntimeError: boom"),
    (BadSpec("not listed as bad input"), (), 1, "the trainer failed: BadSpec: not listed as bad input"),
])
def test_exit_status_writes_the_reason_and_returns_the_status(tmp_path, caplog, exc, bad_input, status, message):
    p = tmp_path / "log"
    with caplog.at_level(logging.ERROR, logger="t.termination"):
        got = T.exit_status(exc, p, logging.getLogger("t.termination"), "the trainer", bad_input)
    assert got == status
    assert T.read_message(p) == message
    assert caplog.records and caplog.records[-1].levelno == logging.ERROR
    # only an unexpected error logs its traceback
    assert (caplog.records[-1].exc_info is not None) == (status == 1)


def test_exit_status_without_a_path_still_returns_the_status(caplog):
    assert T.exit_status(StorageFault("s3://b/k", "denied"), None, logging.getLogger("t.termination"), "x") == 3
