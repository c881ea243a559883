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


def _status(points: dict[str, tuple[int, str]]) -> RunStatus:
    tasks = {}
    for name, (step, phase) in points.items():
        tasks[name] = TaskStatus(phase=phase, track=Track(
            points=[ValidationPoint(step=step, value=70.0)], best_step=step, best_value=70.0,
            last_step=step, last_value=70.0))
    return RunStatus(phase="Running", step=max(s for s, _ in points.values()), tasks=tasks)


def test_log_mode_prints_one_line_per_validation_step_and_each_phase_change(capsys):
    spec = parse_run(run_doc([builtin_task("sentiment"), builtin_task("sarcasm")])).spec
    progress = Progress(spec, "demo", live=False)
    polls = [
        {"sentiment": (200, "Training"), "sarcasm": (200, "Training")},   # step 200 complete: line
        {"sentiment": (400, "Training"), "sarcasm": (200, "Training")},   # half seen: no line
        {"sentiment": (400, "Training"), "sarcasm": (400, "Training")},   # step 400 complete: line
        {"sentiment": (400, "Training"), "sarcasm": (400, "Training")},   # nothing new: no line
        {"sentiment": (600, "Training"), "sarcasm": (400, "Converged")},  # phase change: line
        {"sentiment": (600, "Training"), "sarcasm": (600, "Converged")},  # step 600 complete: line
    ]
    for poll in polls:
        progress.update(_status(poll), [])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "[run=demo] step 200", "[run=demo] step 400", "[run=demo] step 600", "[run=demo] step 600"]
    assert "sarcasm=70.00[Converged]" in lines[2]


def test_log_mode_prints_a_heartbeat_and_says_when_a_rewind_discards_steps(capsys):
    """Between validation steps minutes can pass: a heartbeat at least every 30 s (step, examples/s,
    ETA); a rewind is said in words instead of step numbers silently running backwards."""
    spec = parse_run(run_doc([builtin_task("sentiment"), builtin_task("sarcasm")],
                             training={"batchSize": 16, "maxSteps": 1000, "validationInterval": 200})).spec
    now = [0.0]
    progress = Progress(spec, "demo", live=False, clock=lambda: now[0])
    start = _status({"sentiment": (200, "Training"), "sarcasm": (200, "Training")})
    progress.update(start, [])  # the step-200 line
    for t, step in ((10.0, 220), (29.0, 240)):
        now[0] = t
        progress.update(start.model_copy(update={"step": step}), [])
    assert len(capsys.readouterr().out.splitlines()) == 1  # no heartbeat before 30 s
    now[0] = 31.0
    progress.update(start.model_copy(update={"step": 262}), [])
    beat = capsys.readouterr().out.strip()
    # 62 steps in 31 s since the last line: 2 steps/s = 32 examples/s; 738 steps left = 6 min 9 s
    assert beat == "[run=demo] step 262/1000 · 32.0 examples/s · ETA 6m09s to maxSteps · Running"
    now[0] = 35.0
    rewound = _status({"sentiment": (200, "Training"), "sarcasm": (200, "Converged")})
    rewound.step = 150
    progress.update(rewound, [])
    out = capsys.readouterr().out
    assert "[run=demo] rewound to step 150: steps 151-262 discarded" in out


def test_render_shows_the_significance_streak_and_the_epochs_left_to_the_floor():
    spec = parse_run(run_doc([builtin_task("sentiment", patience=3, significance=0.05),
                              builtin_task("sarcasm", patience=2, minEpochs=1.5)],
                             training={"validationInterval": 50, "maxSteps": 1000})).spec
    track = Track(points=[ValidationPoint(step=50, value=80.0), ValidationPoint(step=150, value=79.0)],
                  best_step=50, best_value=80.0, last_step=150, last_value=79.0, streak=1, epochs=0.75)
    status = RunStatus(phase="Running", step=160, tasks={
        "sentiment": TaskStatus(phase="Training", track=track), "sarcasm": TaskStatus(phase="Training", track=track)})
    console = Console(record=True, width=140)
    console.print(Progress(spec, "demo", live=False).render(status))
    rows = {line.split("│")[1].strip(): line for line in console.export_text().splitlines() if line.count("│") >= 6}
    assert "1/3 signif." in rows["sentiment"] and "2/3" not in rows["sentiment"]  # the streak, not steps since best
    assert "2/2, 0.75/1.5 ep" in rows["sarcasm"]
