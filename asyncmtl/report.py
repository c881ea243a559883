"""The run report: `report.json`, `report.md` and `curves.png` (like the paper's Figure 1).

Inputs, all from the run's storage and status: `reports/history.jsonl` (every validation, written
by the trainer), `reports/final.json` (final evaluation), and the run status (when each task
converged and switched to KD).

Per task: converged at step, best validation (the highest value on the final model's lineage,
i.e. among validations no rewind discarded, with its step), final validation (the final model),
final − best (negative = the final model is worse), the highest value ever validated (also on
trajectories a rewind discarded), and the test score of the final model and of the task's best
checkpoint.

Validation points that a later rewind discarded are kept in the plot, faded, so the curve of
the surviving model is readable and nothing is hidden.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from asyncmtl.artifacts import (CURVES, REPORT_JSON, REPORT_MD, CheckpointScore, EventRecord, HistoryRecord,
                                ValidationRecord, read_final, read_history)
from asyncmtl.core.status import RunStatus
from asyncmtl.lifecycle import TaskPhase
from asyncmtl.storage import RunStorage


@dataclass
class TaskReport:
    """One row of the report. Values are metric points (0-100); steps are training steps."""

    task: str
    metric: str
    phase: str
    converged_at_step: int | None
    kd_from_step: int | None
    best_validation: float | None
    best_step: int | None
    best_ever: float | None
    final_validation: float | None
    final_minus_best: float | None
    test_final: float | None
    test_best_checkpoint: float | None
    best_checkpoint_step: int | None


@dataclass
class RunReport:
    run: str
    phase: str
    message: str
    final_step: int | None
    tasks: list[TaskReport] = field(default_factory=list)

    @property
    def mean_drop(self) -> float | None:
        """Mean over tasks of max(0, best − final) (points)."""
        d = [max(0.0, -t.final_minus_best) for t in self.tasks if t.final_minus_best is not None]
        return sum(d) / len(d) if d else None

    @property
    def max_drop(self) -> float | None:
        d = [max(0.0, -t.final_minus_best) for t in self.tasks if t.final_minus_best is not None]
        return max(d) if d else None


def validations(history: list[HistoryRecord], task: str) -> list[ValidationRecord]:
    """The validation records of `task`, in order."""
    return [r for r in history if isinstance(r, ValidationRecord) and r.task == task]


def split_lineage(history: list[HistoryRecord], task: str) -> tuple[list[ValidationRecord], list[ValidationRecord]]:
    """Split a task's validations into (surviving lineage, points discarded by a later rewind).

    A rewind event to step s discards every earlier point after step s.
    """
    kept: list[ValidationRecord] = []
    gone: list[ValidationRecord] = []
    for r in history:
        if isinstance(r, EventRecord) and r.event == "rewind":
            while kept and kept[-1].step > r.step:
                gone.append(kept.pop())
        elif isinstance(r, ValidationRecord) and r.task == task:
            while kept and kept[-1].step >= r.step:  # a rewind whose event was not recorded
                gone.append(kept.pop())
            kept.append(r)
    return kept, gone


def _kd_step(history: list[HistoryRecord], task: str) -> int | None:
    """Step at which the task switched to the KD loss (last switch, if it happened more than once)."""
    steps = [r.step for r in history if isinstance(r, EventRecord) and r.event == "kd" and r.task == task]
    return steps[-1] if steps else None


def _best_record(kept: list[ValidationRecord], best_step: int | None, checkpoint: CheckpointScore | None,
                 metric: str) -> ValidationRecord | None:
    """The validation a task's gap is measured from.

    A converged task's best is its best checkpoint θ̂_t (paper Sec. 3: the checkpoint it is
    rewound to and distilled from): the supervised validation at `best_step`, the same step whose
    test score the report shows. KD-phase validations that happen to score higher are not a peak
    the task was held to (they count in "best ever"). A task that never converged: its best
    validation on the final lineage.
    """
    if best_step is not None:
        at = [r for r in kept if r.step == best_step and r.mode == TaskPhase.TRAINING]
        if at:
            return at[-1]
        # a later rewind to an earlier step discarded that validation from the lineage; the
        # trainer scored the checkpoint's weights again at convergence (final.json bestCheckpoint)
        value = checkpoint.validation.get(metric) if checkpoint is not None else None
        if checkpoint is not None and checkpoint.step == best_step and value is not None:
            return ValidationRecord(step=best_step, task="", value=value, mode=TaskPhase.TRAINING)
    return max(kept, key=lambda r: r.value) if kept else None


def build_report(run: str, status: RunStatus, storage: RunStorage) -> RunReport:
    """Assemble the report from storage and status (a missing final.json leaves final columns empty)."""
    history = read_history(storage)
    final = read_final(storage)
    rep = RunReport(run=run, phase=status.phase, message=status.message, final_step=final.step if final else None)
    names = list(status.tasks) or sorted({r.task for r in history if isinstance(r, ValidationRecord)})
    for name in names:
        recs = validations(history, name)
        ts = status.tasks.get(name)
        ft = final.tasks.get(name) if final else None
        metric = (ft.metric if ft else "") or (recs[0].metric if recs else "")
        kept, _ = split_lineage(history, name)
        bc = ft.best_checkpoint if ft else None
        best_rec = _best_record(kept, ts.best_step if ts else None, bc, metric)
        fv = ft.final_validation.get(metric) if ft else None
        rep.tasks.append(TaskReport(
            task=name, metric=metric, phase=ts.phase if ts else "",
            converged_at_step=ts.converged_at_step if ts else None,
            kd_from_step=_kd_step(history, name),
            best_validation=best_rec.value if best_rec else None,
            best_step=best_rec.step if best_rec else None,
            best_ever=max(r.value for r in recs) if recs else None,
            final_validation=fv,
            final_minus_best=(fv - best_rec.value) if fv is not None and best_rec else None,
            test_final=(ft.final_test or {}).get(metric) if ft else None,
            test_best_checkpoint=(bc.test or {}).get(metric) if bc else None,
            best_checkpoint_step=bc.step if bc else None,
        ))
    return rep


def _f(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _i(v: int | None) -> str:
    return "–" if v is None else str(v)


def render_markdown(rep: RunReport) -> str:
    """The report as a Markdown table plus a summary line."""
    lines = [f"# AsyncMTL run `{rep.run}`", "", f"Phase: **{rep.phase}** — {rep.message}. Final step: {_i(rep.final_step)}.", "",
             "| task | metric | phase | converged at | KD from | best val (step) | final val | final − best | best ever | test (final) | test (best ckpt) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in rep.tasks:
        lines.append(f"| {t.task} | {t.metric} | {t.phase} | {_i(t.converged_at_step)} | {_i(t.kd_from_step)} | "
                     f"{_f(t.best_validation)} ({_i(t.best_step)}) | {_f(t.final_validation)} | {_f(t.final_minus_best, True)} | "
                     f"{_f(t.best_ever)} | {_f(t.test_final)} | {_f(t.test_best_checkpoint)} ({_i(t.best_checkpoint_step)}) |")
    lines += ["", f"Mean drop (best − final, over tasks): {_f(rep.mean_drop)} points; largest drop: {_f(rep.max_drop)} points.",
              "Best val: for a converged task, the validation of its best checkpoint (the one it was rewound to and "
              "distilled from, whose test score is the last column); for a task that never converged, the best on the "
              "final model's lineage (validations no rewind discarded). Best ever also counts KD-phase validations and "
              "trajectories a rewind discarded.", ""]
    return "\n".join(lines)


def convergence_trigger(history: list[HistoryRecord], task: str, step: int | None) -> ValidationRecord | None:
    """The validation record on which `task` was declared converged at `step`: its last supervised
    validation at that step written before its KD switch (a later trajectory through the same step,
    after a rewind, did not decide anything). None if the task did not converge."""
    if step is None:
        return None
    found = None
    for r in history:
        if isinstance(r, EventRecord) and r.event == "kd" and r.task == task and found is not None:
            break
        if isinstance(r, ValidationRecord) and r.task == task and r.step == step and r.mode == TaskPhase.TRAINING:
            found = r
    return found


def plot_curves(rep: RunReport, history: list[HistoryRecord], path) -> None:
    """Per-task validation curves with markers at convergence (x) and at the KD switch (o)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t.task for t in rep.tasks]
    n = max(1, len(names))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, t in zip(axes.flat, rep.tasks):
        kept, gone = split_lineage(history, t.task)
        if gone:
            ax.scatter([r.step for r in gone], [r.value for r in gone], s=8, color="0.75", label="discarded by rewind")
        ax.plot([r.step for r in kept], [r.value for r in kept], "-", color="C0", lw=1.5, label="validation")
        trigger = convergence_trigger(history, t.task, t.converged_at_step)
        if trigger is not None:
            ax.plot([trigger.step], [trigger.value], "x", color="C3", ms=9, mew=2, label="converged")
        kd = [r for r in kept if t.kd_from_step is not None and r.step >= t.kd_from_step]
        if kd:
            ax.plot([kd[0].step], [kd[0].value], "o", color="C2", ms=7, mfc="none", mew=2, label="KD switch")
        ax.set_title(f"{t.task} ({t.metric})")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(rep.tasks):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(f"AsyncMTL {rep.run}: validation curves")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run: str, status: RunStatus, storage: RunStorage, scratch) -> dict[str, str]:
    """Write report.json, report.md and curves.png under `reports/`; returns their URIs by name."""
    from pathlib import Path

    rep = build_report(run, status, storage)
    data = asdict(rep) | {"meanDrop": rep.mean_drop, "maxDrop": rep.max_drop}
    storage.put_bytes(REPORT_JSON, json.dumps(data, indent=1).encode())
    storage.put_bytes(REPORT_MD, render_markdown(rep).encode())
    local = storage.local_path(CURVES) or Path(scratch) / "curves.png"
    local.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(rep, read_history(storage), local)
    storage.put_file(CURVES, local)
    return {Path(k).name: storage.uri(k) for k in (REPORT_JSON, REPORT_MD, CURVES)}
