"""The live progress table shows each task's phase, last and best validation, and patience left."""
from __future__ import annotations

from rich.console import Console

from asyncmtl.core.convergence import Track, ValidationPoint
from asyncmtl.core.status import RunStatus, TaskStatus
from asyncmtl.local.progress import Progress
from asyncmtl.spec import parse_run
from tests.conftest import builtin_task, run_doc


def test_render_shows_where_every_task_stands():
    spec = parse_run(run_doc([builtin_task("sentiment", patience=3), builtin_task("sarcasm")],
                             training={"validationInterval": 50, "maxSteps": 1000})).spec
    track = Track(points=[ValidationPoint(step=50, value=80.0), ValidationPoint(step=100, value=79.0)],
                  best_step=50, best_value=80.0, last_step=100, last_value=79.0)
    status = RunStatus(phase="Running", step=120, tasks={
        "sentiment": TaskStatus(phase="Training", track=track),
        "sarcasm": TaskStatus(phase="KD", track=track, converged_at_step=100)})
    console = Console(record=True, width=120)
    console.print(Progress(spec, "demo", live=False).render(status))
    text = console.export_text()
    assert "step 120/1000" in text and "converged 1/2" in text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 6}
    assert "Training" in rows["sentiment"] and "79.00 (100)" in rows["sentiment"] and "80.00 (50)" in rows["sentiment"]
    assert "1/3" in rows["sentiment"]  # one validation step since the best, patience 3
    assert "KD" in rows["sarcasm"] and "100" in rows["sarcasm"]
