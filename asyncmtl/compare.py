"""`asyncmtl compare RUN_DIR...`: the paper's Table 3 from finished runs, plus their validation curves.

One row per run (for baselines trained a fixed number of steps, two: "(Final)", the last model,
and "(Best)", each task's best checkpoint, as the paper's "Uni. Weight (Best)"): name, train
steps (steps actually run, counting those a rewind discarded), each task's test score as a change
over the reference row (the reference row itself is shown in absolute numbers), and the average.
The best value of each column is marked (bold in Markdown, `*` in the terminal). Written as
`compare.md`, `compare.csv` and `<run>-curves.png` (one figure per run, the paper's Figures 1-3).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from asyncmtl.core.status import RunStatus
from asyncmtl.artifacts import EventRecord, HistoryRecord, ValidationRecord, read_final, read_history
from asyncmtl.report import build_report, plot_curves
from asyncmtl.storage import FileRunStorage


class CompareError(ValueError):
    """A run folder cannot be compared (not a finished run, or tasks that do not match)."""


@dataclass
class Row:
    name: str
    steps: int
    scores: dict[str, float | None] = field(default_factory=dict)

    @property
    def average(self) -> float | None:
        vals = [v for v in self.scores.values() if v is not None]
        return sum(vals) / len(vals) if vals and len(vals) == len(self.scores) else None


def steps_run(history: list[HistoryRecord], final_step: int | None) -> int:
    """Optimizer steps actually run: the final step plus every stretch a rewind discarded
    (to validation-step precision)."""
    extra = 0
    last = 0
    for r in history:
        if isinstance(r, ValidationRecord):
            last = max(last, r.step)
        elif isinstance(r, EventRecord) and r.event == "rewind":
            extra += max(0, last - r.step)
            last = r.step
    return (final_step or last) + extra


def load_rows(run_dir: Path) -> tuple[list[Row], list[str], object]:
    """Rows of one local run folder (one, or two for fixed-step baselines), its task names, its report."""
    status_path = run_dir / "status.json"
    if not status_path.is_file():
        raise CompareError(f"{run_dir}: no status.json (not an AsyncMTL run folder)")
    status = RunStatus.model_validate_json(status_path.read_text())
    name = status.control.run if status.control else run_dir.name
    storage = FileRunStorage(run_dir)
    final = read_final(storage)
    if final is None:
        raise CompareError(f"{run_dir}: the run has no final evaluation (phase {status.phase})")
    rep = build_report(name, status, storage)
    steps = steps_run(read_history(storage), rep.final_step)
    tasks = [t.task for t in rep.tasks]
    fixed = final.stopped == "maxSteps" and all(t.converged_at_step is None for t in rep.tasks)
    rows = [Row(f"{name} (Final)" if fixed else name, steps, {t.task: t.test_final for t in rep.tasks})]
    if fixed:
        rows.append(Row(f"{name} (Best)", steps, {t.task: t.test_best_checkpoint for t in rep.tasks}))
    return rows, tasks, rep


def load_runs(run_dirs: list[Path]) -> tuple[list[tuple[Path, list[Row], object]], list[str] | None]:
    """`load_rows` of each folder, checking that all runs have the same tasks.

    Returns:
        ([(folder, rows, report)], the first run's task names; None when no folder is given).

    Raises:
        CompareError: a folder is not a finished run, or its tasks differ from the first run's.
    """
    out = []
    tasks: list[str] | None = None
    for d in run_dirs:
        rows, t, rep = load_rows(Path(d))
        if tasks is not None and sorted(t) != sorted(tasks):
            raise CompareError(f"{d}: tasks {sorted(t)} differ from {sorted(tasks)}")
        tasks = tasks or t
        out.append((Path(d), rows, rep))
    return out, tasks


@dataclass
class Comparison:
    tasks: list[str]
    reference: Row
    rows: list[Row]

    def delta(self, row: Row, task: str | None) -> float | None:
        v = row.average if task is None else row.scores.get(task)
        ref = self.reference.average if task is None else self.reference.scores.get(task)
        if v is None or ref is None:
            return None
        return v if row is self.reference else v - ref

    def best(self, task: str | None) -> float | None:
        vals = [(r.average if task is None else r.scores.get(task)) for r in self.rows]
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None

    def cells(self, row: Row, mark: str = "**") -> list[str]:
        out = [row.name, str(row.steps)]
        for task in [*self.tasks, None]:
            d = self.delta(row, task)
            raw = row.average if task is None else row.scores.get(task)
            if d is None:
                out.append("–")
                continue
            text = f"{d:.2f}" if row is self.reference else f"{d:+.2f}"
            out.append(f"{mark}{text}{mark if mark != '*' else ''}" if raw == self.best(task) else text)
        return out

    def markdown(self) -> str:
        head = ["run", "train steps", *self.tasks, "average"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(self.cells(r)) + " |" for r in self.rows]
        lines += ["", f"Test scores (0-100). `{self.reference.name}` in absolute numbers, the others as changes over it; "
                  "the best of each column in bold."]
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        head = ["run", "train steps", *self.tasks, "average"]
        table = [head] + [self.cells(r, mark="*") for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["run", "train_steps", *self.tasks, "average", "is_reference"])
        for r in self.rows:
            vals = [r.scores.get(t) for t in self.tasks] + [r.average]
            w.writerow([r.name, r.steps, *["" if v is None else f"{v:.4f}" for v in vals], r is self.reference])
        return buf.getvalue()


def compare(run_dirs: list[Path], reference: str | None = None) -> tuple[Comparison, list]:
    """Build the comparison. `reference` is a row name (default: the first "(Final)" row of a
    fixed-step baseline, else the first row).

    Raises:
        CompareError: a folder is not a finished run, runs have different tasks, or `reference` is unknown.
    """
    rows: list[Row] = []
    reports = []
    loaded, tasks = load_runs(run_dirs)
    for d, r, rep in loaded:
        rows += r
        reports.append((d, rep))
    if not rows or tasks is None:
        raise CompareError("no runs given")
    if reference is not None:
        ref = next((r for r in rows if r.name == reference or r.name.split(" (")[0] == reference), None)
        if ref is None:
            raise CompareError(f"reference {reference!r} is none of {[r.name for r in rows]}")
    else:
        ref = next((r for r in rows if r.name.endswith("(Final)")), rows[0])
    return Comparison(tasks=tasks, reference=ref, rows=rows), reports


def write(comparison: Comparison, reports: list, out: Path) -> dict[str, Path]:
    """Write compare.md, compare.csv and one curves figure per run into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"compare.md": out / "compare.md", "compare.csv": out / "compare.csv"}
    paths["compare.md"].write_text(comparison.markdown())
    paths["compare.csv"].write_text(comparison.csv())
    for run_dir, rep in reports:
        p = out / f"{rep.run}-curves.png"
        plot_curves(rep, read_history(FileRunStorage(run_dir)), p)
        paths[p.name] = p
    return paths
