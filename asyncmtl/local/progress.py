"""Live progress of a local run (rich): per task its phase, last validation, best and patience left.

On a terminal it redraws a table in place; otherwise it prints one summary line per new
validation step, so logs stay readable in CI, a heartbeat (step, examples/s, ETA) when nothing was
printed for `heartbeat_seconds`, and a line when a rewind sends the step back.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from asyncmtl.core.status import RunStatus
from asyncmtl.spec import RunSpec

PHASE_STYLE = {"Training": "cyan", "Converged": "yellow", "AwaitingSoftLabels": "magenta", "KD": "green",
               "Frozen": "red"}


class Progress:
    """Context manager; call `update(status, events)` after each reconcile."""

    def __init__(self, spec: RunSpec, run: str, live: bool | None = None, *, heartbeat_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.run = run
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self._printed_at: tuple[float, int] | None = None  # (clock, step) of the last line printed
        self._max_step = 0
        self.console = Console(stderr=False)
        self.live_enabled = sys.stdout.isatty() if live is None else live
        self._live: Live | None = None
        self._last_key: tuple | None = None

    def __enter__(self) -> "Progress":
        if self.live_enabled:
            self._live = Live(self.render(None), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def render(self, status: RunStatus | None):
        """The progress table for `status` (a rich renderable)."""
        tr = self.spec.training
        table = Table(title=f"AsyncMTL {self.run}", expand=False)
        for col in ("task", "phase", "last val (step)", "best (step)", "patience", "converged at"):
            table.add_column(col)
        step = status.step if status else 0
        for t in self.spec.tasks:
            ts = status.tasks.get(t.name) if status else None
            if ts is None:
                table.add_row(t.name, "Pending", "–", "–", "–", "–")
                continue
            tr_ = ts.track
            since = tr_.validation_steps_since_best(tr.validation_interval)
            counted = (f"{tr_.streak or 0}/{t.patience} signif." if t.significance is not None  # the rule's count
                       else f"{since}/{t.patience}")
            if t.min_epochs and tr_.epochs is not None and tr_.epochs < t.min_epochs:
                counted += f", {tr_.epochs:.2f}/{t.min_epochs:g} ep"
            table.add_row(
                t.name, Text(ts.phase, style=PHASE_STYLE.get(ts.phase, "")),
                f"{tr_.last_value:.2f} ({tr_.last_step})" if tr_.last_value is not None else "–",
                f"{tr_.best_value:.2f} ({tr_.best_step})" if tr_.best_value is not None else "–",
                counted if ts.phase == "Training" else "–",
                str(ts.converged_at_step) if ts.converged_at_step is not None else "–",
            )
        done = status.converged_count() if status else 0
        bar = ProgressBar(total=tr.max_steps, completed=min(step, tr.max_steps), width=50)
        header = Text(f"step {step}/{tr.max_steps} · converged {done}/{len(self.spec.tasks)} · "
                      f"{status.phase if status else 'Pending'}")
        return Group(header, bar, table)

    def update(self, status: RunStatus, events: list[str]) -> None:
        if self._live is not None:
            self._live.update(self.render(status))
            return
        now = self.clock()
        if status.step < self._max_step:
            self._print(f"[run={self.run}] rewound to step {status.step}: steps {status.step + 1}-{self._max_step} "
                        "discarded (the model is back at a converged task's best checkpoint)", now, status.step)
        self._max_step = status.step if status.step < self._max_step else max(self._max_step, status.step)
        if self._line_due(status):
            parts = []
            for n, t in status.tasks.items():
                v = f"{t.track.last_value:.2f}" if t.track.last_value is not None else "–"
                parts.append(f"{n}={v}[{t.phase}]")
            self._print(f"[run={self.run}] step {status.step}: " + " ".join(parts), now, status.step)
        elif self._printed_at is not None and now - self._printed_at[0] >= self.heartbeat_seconds:
            self._print(self._heartbeat(status, now), now, status.step)
        elif self._printed_at is None:
            self._printed_at = (now, status.step)

    def _print(self, line: str, now: float, step: int) -> None:
        print(line, flush=True)
        self._printed_at = (now, step)

    def _heartbeat(self, status: RunStatus, now: float) -> str:
        """`step N/max · E examples/s · ETA …` from the steps made since the last line printed."""
        assert self._printed_at is not None
        t0, s0 = self._printed_at
        tr = self.spec.training
        rate = max(0, status.step - s0) / max(now - t0, 1e-9)  # steps/s
        line = f"[run={self.run}] step {status.step}/{tr.max_steps} · {rate * tr.batch_size:.1f} examples/s"
        if rate > 0:
            eta = int(round((tr.max_steps - status.step) / rate))
            line += f" · ETA {eta // 60}m{eta % 60:02d}s to maxSteps"
        return f"{line} · {status.phase}"

    def _line_due(self, status: RunStatus) -> bool:
        """Whether a summary line is due (non-live mode): once per validation step, when every
        started task has reported it (the trainer reports tasks one after another, so a poll can
        fall between them), and whenever a task changes phase (a convergence, a KD switch).
        """
        steps = [t.track.last_step for t in status.tasks.values() if t.track.last_step is not None]
        newest = max(steps, default=None)
        phases = tuple((n, t.phase) for n, t in status.tasks.items())
        started = [t for t in status.tasks.values() if t.phase != "Pending"]
        complete = newest is not None and all(t.track.last_step == newest for t in started)
        last_step, last_phases = self._last_key or (None, None)
        due = phases != last_phases or (complete and newest != last_step)
        if due:
            self._last_key = (newest if complete else last_step, phases)
        return due
