"""Logging helpers: every message carries the run name (`run=<name>`)."""
from __future__ import annotations

import logging


class RunLogger(logging.LoggerAdapter):
    """A logger adapter that prefixes each message with `[run=<name>]`."""

    def process(self, msg, kwargs):
        return f"[run={self.extra['run']}] {msg}", kwargs


def run_logger(name: str, run: str) -> RunLogger:
    return RunLogger(logging.getLogger(name), {"run": run})


def configure(level: int = logging.INFO) -> None:
    """Plain timestamped logging to stderr (entry points call this once)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
