"""The run's history as the trainer writes it: validation records and events, each kept once.

A trainer restarted from its latest checkpoint repeats the validations and events that followed it;
`HistoryLog` writes each record once (asyncmtl.artifacts.history_key: what, task, step and the
rewinds before it). Under torchrun only rank 0 writes (`enabled`).
"""
from __future__ import annotations

import time

from asyncmtl.artifacts import EventRecord, HistoryRecord, append_history, history_key, read_history
from asyncmtl.storage import RunStorage


class HistoryLog:
    """Appends `HistoryRecord`s to `storage`'s history, idempotently.

    Args:
        storage: the run's storage. enabled: False on ranks other than 0 (nothing is written).
    """

    def __init__(self, storage: RunStorage, *, enabled: bool = True) -> None:
        self.storage = storage
        self.enabled = enabled
        self._recorded: set[tuple] = set()

    def load(self) -> None:
        """Learn the records already written (resume)."""
        if self.enabled:
            self._recorded = {history_key(r) for r in read_history(self.storage)}

    def record(self, record: HistoryRecord, rewinds: int) -> None:
        """Append `record` (stamped with `rewinds`, the rewinds applied before it) unless already there."""
        record.rewinds = rewinds
        key = history_key(record)
        if not self.enabled or key in self._recorded:
            return
        self._recorded.add(key)
        append_history(self.storage, record)

    def event(self, event: str, *, step: int, rewinds: int, task: str | None = None,
              from_step: int | None = None) -> None:
        """Append a non-validation record (start, converged, kd, rewind) at `step` (steps); a rewind's
        `from_step` is the step trained to before it (`EventRecord`)."""
        self.record(EventRecord(event=event, time=time.time(), step=step, task=task, from_step=from_step), rewinds)
