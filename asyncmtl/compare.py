"""`asyncmtl compare RUN_DIR...`: the paper's Table 3 from finished runs, plus their validation curves.

One row per run (for baselines trained a fixed number of steps, two: "(Final)", the last model,
and "(Best)", each task's best checkpoint, as the paper's "Uni. Weight (Best)"): name, optimizer
steps (every step the run made, those a rewind discarded included: `steps_run`), each task's test
score as a change over the reference row (the reference row itself is shown in absolute numbers),
and the average. The best value of each column is marked (bold in Markdown, `*` in the terminal).

Below it, on validation (`asyncmtl.headroom`): the headroom H of the reference run (default: the
uniform baseline's, "Uni. Weight"), and per row its mean validation score, its hold gap and the
share of H it captured. Written as `compare.md`, `compare.csv` and `<run>-curves.png` (one figure
per run, the paper's Figures 1-3).
"""
from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from asyncmtl.core.status import RunStatus
from asyncmtl.artifacts import EventRecord, HistoryRecord, ValidationRecord, read_final, read_history
from asyncmtl.headroom import Headroom, headroom, hold_gap, share_of_headroom
from asyncmtl.report import RunReport, build_report, plot_curves, split_lineage
from asyncmtl.storage import FileRunStorage



class CompareError(ValueError):
    """A run folder cannot be compared (not a finished run, or tasks that do not match)."""


def _mean_of_all(values: dict[str, float | None]) -> float | None:
    """The mean of the values, None when there is none or one is missing."""
    vals = [v for v in values.values() if v is not None]
    return sum(vals) / len(vals) if vals and len(vals) == len(values) else None


@dataclass
class Row:
    """One row of the comparison: a run's final model, or (fixed-step baselines) its tasks' best checkpoints.

    Attributes:
        name: the run's name, with " (Final)" or " (Best)" for fixed-step baselines.
        steps: optimizer steps the run made, those a rewind discarded included (`steps_run`).
        scores: task -> test score (points, 0-100) of the row's model.
        validation: task -> validation score (points) of the row's model: the final model's, or for a
            Best row each task's best validation score (`asyncmtl.report`).
        hold_gap: the run's hold gap (points, `asyncmtl.headroom`); None for a Best row (no model was held).
        headroom: H of the run's own validation curves (None: no step validated every task).
    """

    name: str
    steps: int
    scores: dict[str, float | None] = field(default_factory=dict)
    validation: dict[str, float | None] = field(default_factory=dict)
    hold_gap: float | None = None
    headroom: Headroom | None = None

    @property
    def average(self) -> float | None:
        """Mean test score over tasks (points); None when a task has none."""
        return _mean_of_all(self.scores)

    @property
    def validation_average(self) -> float | None:
        """Mean validation score over tasks (points); None when a task has none."""
        return _mean_of_all(self.validation)


def steps_run(history: list[HistoryRecord], final_step: int | None) -> int:
    """Every optimizer step the run made: its final step plus the steps each rewind discarded (a
    rewind event's `from_step` − `step`). A history written before rewind events recorded
    `from_step` gives the last validation step before the rewind instead (exact when the trainer
    held at that step for the decision, `distillation.whilePending: Pause`). Steps a trainer redid
    after it was restarted from its latest checkpoint (a crash, `--resume`) are not counted: the
    history does not record how far the lost attempt got."""
    extra = 0
    last = 0
    for r in history:
        if isinstance(r, ValidationRecord):
            last = max(last, r.step)
        elif isinstance(r, EventRecord) and r.event == "rewind":
            extra += max(0, (r.from_step if r.from_step is not None else last) - r.step)
            last = r.step
    return (final_step or last) + extra


def run_headroom(history: list[HistoryRecord], tasks: list[str]) -> Headroom | None:
    """H (`asyncmtl.headroom`) of a run's validation curves on its final lineage (validations no rewind discarded)."""
    return headroom({t: {r.step: r.value for r in split_lineage(history, t)[0]} for t in tasks})


def _validation(rep: RunReport, best: bool) -> dict[str, float | None]:
    return {t.task: t.best_validation if best else t.final_validation for t in rep.tasks}


def load_rows(run_dir: Path) -> tuple[list[Row], list[str], RunReport]:
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
    history = read_history(storage)
    steps = steps_run(history, rep.final_step)
    tasks = [t.task for t in rep.tasks]
    h = run_headroom(history, tasks)
    fixed = final.stopped == "maxSteps" and all(t.converged_at_step is None for t in rep.tasks)
    best, last = _validation(rep, best=True), _validation(rep, best=False)
    rows = [Row(f"{name} (Final)" if fixed else name, steps, scores={t.task: t.test_final for t in rep.tasks},
                validation=last, hold_gap=hold_gap(best, last), headroom=h)]
    if fixed:
        rows.append(Row(f"{name} (Best)", steps, scores={t.task: t.test_best_checkpoint for t in rep.tasks},
                        validation=best, hold_gap=None, headroom=h))
    return rows, tasks, rep


def load_runs(run_dirs: list[Path]) -> tuple[list[tuple[Path, list[Row], RunReport]], list[str] | None]:
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

    @property
    def headroom(self) -> Headroom | None:
        """H of the reference run (`asyncmtl.headroom`)."""
        return self.reference.headroom

    def share(self, row: Row) -> float | None:
        """The share of the reference's H that `row`'s mean validation score captured over the reference's."""
        h = self.headroom
        return share_of_headroom(row.validation_average, self.reference.validation_average, h.value if h else None)

    def headroom_cells(self, row: Row) -> list[str]:
        share = "reference" if row is self.reference else _signed(self.share(row))
        return [row.name, _plain(row.validation_average), _plain(row.hold_gap), share]

    def headroom_line(self) -> str:
        """One sentence: the reference's H on validation, with where it comes from."""
        return headroom_sentence(self.headroom, f"`{self.reference.name}`")

    def markdown(self) -> str:
        head = ["run", "optimizer steps", *self.tasks, "average"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(self.cells(r)) + " |" for r in self.rows]
        lines += ["", f"Test scores (0-100). `{self.reference.name}` in absolute numbers, the others as changes over it; "
                  "the best of each column in bold. " + STEPS_LEGEND, "", self.headroom_line(), ""]
        lines += ["| " + " | ".join(HEADROOM_HEAD) + " |", "|" + "---|" * len(HEADROOM_HEAD)]
        lines += ["| " + " | ".join(self.headroom_cells(r)) + " |" for r in self.rows]
        lines += ["", headroom_legend(f"`{self.reference.name}`")]
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        head = ["run", "optimizer steps", *self.tasks, "average"]
        main = _aligned([head] + [self.cells(r, mark="*") for r in self.rows])
        held = _aligned([HEADROOM_HEAD] + [self.headroom_cells(r) for r in self.rows])
        return (f"{main}\n{self.headroom_line()}\n{held}(validation, 0-100; hold gap: mean over tasks of best − final; "
                f"share of H: validation average − the reference's, over H; compare.md says more)\n")

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["run", "optimizer_steps", *self.tasks, "average", "validation_average", "hold_gap",
                    "share_of_headroom", "headroom", "is_reference"])
        for r in self.rows:
            vals = [r.scores.get(t) for t in self.tasks] + [r.average, r.validation_average, r.hold_gap,
                                                              None if r is self.reference else self.share(r),
                                                              self.headroom.value if r is self.reference and self.headroom else None]
            w.writerow([r.name, r.steps, *["" if v is None else f"{v:.4f}" for v in vals], r is self.reference])
        return buf.getvalue()


STEPS_LEGEND = ("Optimizer steps: every step the run made, those a rewind discarded included (steps a restarted "
                "trainer redid are not counted).")
HEADROOM_HEAD = ["run", "validation average", "hold gap", "share of H"]


def headroom_sentence(h: Headroom | None, of: str) -> str:
    """`Headroom H of <of> on validation: ...` with the numbers it is made of."""
    if h is None:
        return f"Headroom H of {of} on validation: – (no validation step scored every task)."
    best = statistics.fmean(h.task_best.values())
    return (f"Headroom H of {of} on validation: {h.value:.2f} points (each task's best validation score, on average "
            f"{best:.2f}, against the best single checkpoint's mean, {h.best_step_mean:.2f} at step {h.best_step}).")


def headroom_legend(reference: str) -> str:
    """What the headroom table's columns mean (`asyncmtl.headroom`)."""
    return ("Validation scores (0-100). H (headroom): mean over tasks of each task's best validation score − the best "
            f"mean validation score of any single checkpoint (validation step), from {reference}'s own curves. Hold "
            "gap: mean over tasks of (the task's best validation score − its final validation score); for a converged "
            "task the best is its best checkpoint's, the one it was held to; Best rows hold nothing (–). Share of H: "
            f"(validation average − {reference}'s) / H; 1 = the whole headroom. H is on validation only: the trainer "
            "scores the test split at the end of a run, not at each validation step, so there is no test H.")


def _plain(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"


def _aligned(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table) + "\n"


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
