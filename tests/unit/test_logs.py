"""asyncmtl.logs: every message of a run logger carries `[run=<name>]`; `configure` is plain timestamped
logging to stderr at a level."""
from __future__ import annotations

import logging
import re
import subprocess
import sys

from asyncmtl.logs import run_logger
from tests.conftest import REPO


def test_a_run_logger_prefixes_each_message_with_its_run_and_logs_under_its_name(caplog):
    log = run_logger("asyncmtl.test-logs", "sentiment-42")
    with caplog.at_level(logging.DEBUG, logger="asyncmtl.test-logs"):
        log.info("step %d of %s", 7, "train")
        log.warning("plain")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("asyncmtl.test-logs", logging.INFO, "[run=sentiment-42] step 7 of train"),
        ("asyncmtl.test-logs", logging.WARNING, "[run=sentiment-42] plain"),
    ]


def test_two_run_loggers_on_one_logger_keep_their_own_run(caplog):
    a, b = run_logger("asyncmtl.test-logs", "a"), run_logger("asyncmtl.test-logs", "b")
    with caplog.at_level(logging.INFO, logger="asyncmtl.test-logs"):
        a.info("x")
        b.info("x")
        a.info("y")
    assert [r.getMessage() for r in caplog.records] == ["[run=a] x", "[run=b] x", "[run=a] y"]


def test_a_run_logger_follows_its_logger_s_level(caplog):
    log = run_logger("asyncmtl.test-logs.quiet", "r")
    with caplog.at_level(logging.WARNING, logger="asyncmtl.test-logs.quiet"):
        log.info("hidden")
        log.error("shown")
    assert [r.getMessage() for r in caplog.records] == ["[run=r] shown"]


def _configured(level: str) -> subprocess.CompletedProcess:
    """A fresh interpreter (logging is configured once per process) that calls configure(level) and logs."""
    code = ("import logging\n"
            "from asyncmtl.logs import configure, run_logger\n"
            f"configure({level})\n"
            "log = run_logger('asyncmtl.x', 'r1')\n"
            "log.debug('dbg')\nlog.info('inf')\nlog.warning('wrn')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_configure_writes_timestamped_lines_with_level_and_logger_name_to_stderr():
    r = _configured("")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    ts = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert len(lines) == 2, lines  # INFO by default: no debug line
    assert re.fullmatch(ts + r" INFO asyncmtl\.x \[run=r1\] inf", lines[0]), lines[0]
    assert re.fullmatch(ts + r" WARNING asyncmtl\.x \[run=r1\] wrn", lines[1]), lines[1]


def test_configure_honours_the_level_it_is_given():
    debug = _configured("logging.DEBUG").stderr.splitlines()
    warning = _configured("logging.WARNING").stderr.splitlines()
    assert [l.split(" ", 3)[2] for l in debug] == ["DEBUG", "INFO", "WARNING"]
    assert [l.split(" ", 3)[2] for l in warning] == ["WARNING"]

