"""Replay finished fixed-step runs' validation histories through the decision core's convergence rule.

    python benchmarks/replay_rule.py runs/local/tweeteval-compare-uniform-s{1,2,3} \
        --rule patience=3 --rule patience=3,smoothing=0.5 --rule patience=6

Why: a joint run and the uniform run of the same seed train identically up to the first convergence
decision (same batches, same losses), so where the rule first fires on the uniform run's curve is
where the joint run would decide. For each rule and task this prints the step the rule fires at,
the task's best validation value then (what its soft labels would come from) and the value the
uniform run reached by the end of its budget: a rule that fires while the task is still going to
improve freezes it below where plain training would take it (the "premature convergence" of the
issue). Nothing is trained; the rule is `asyncmtl.core.convergence` itself.

The epoch floor (`minEpochs=1`) reads each validation's `epochs` from the history (runs trained before
the trainer recorded them: the floor is unchecked). The significance rule (`significance=0.05`) replays
the trainer's paired bootstrap (`asyncmtl_trainer.significance`) on the per-example rows each validation
stored under `validation_rows/` (seeded with `--seed`, the run's `training.seed`: the same seed
gives the trainer's own streaks); a run without stored rows cannot be replayed under it (an error names
the missing file). The task's type is read off the stored rows and labels: 1-D rows are accuracy,
2-D labels multilabel, one output regression, two outputs binary, more multiclass.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "trainer_image"))

import numpy as np  # noqa: E402

from asyncmtl.artifacts import validation_rows_key  # noqa: E402
from asyncmtl.core.convergence import ConvergenceRule, Track, ValidationPoint, has_converged  # noqa: E402
from asyncmtl.spec import Metric, TaskType  # noqa: E402


@dataclass
class Outcome:
    task: str
    fired_at: int | None  # step (None: never within the run)
    best_step: int | None
    best_raw: float | None  # raw validation value of the best checkpoint
    final: float  # validation value at the run's last validation step
    peak: float  # highest validation value over the run


FLOAT_KEYS = ("smoothing", "minDelta", "minEpochs", "significance")


def parse_rule(text: str, interval: int) -> ConvergenceRule:
    """`patience=3,smoothing=0.5,minSteps=200,minDelta=0.1,minEpochs=1,significance=0.05` -> a rule (validation
    interval from the run)."""
    kw: dict = {"patience": 3, "smoothing": 0.0, "min_steps": 0, "min_delta": 0.0}
    names = {"patience": "patience", "smoothing": "smoothing", "minSteps": "min_steps", "minDelta": "min_delta",
             "minEpochs": "min_epochs", "significance": "significance"}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        kw[names[k]] = float(v) if k in FLOAT_KEYS else int(v)
    return ConvergenceRule(validation_interval=interval, direction="max", **kw)


@dataclass
class Validation:
    """One validation of a task in a run's history: step, metric value (0-100), epochs of its training data (None
    in histories before they were recorded), rewinds before it and the metric's name."""

    step: int
    value: float
    epochs: float | None = None
    rewinds: int = 0
    metric: str = "accuracy"


def validations(run_dir: Path) -> dict[str, list[Validation]]:
    """Each task's validations from reports/history.jsonl, in the order written."""
    out: dict[str, list[Validation]] = {}
    for line in (run_dir / "reports" / "history.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "value" in r:
            out.setdefault(r["task"], []).append(Validation(int(r["step"]), float(r["value"]), r.get("epochs"),
                                                            int(r.get("rewinds") or 0), r.get("metric") or "accuracy"))
    return out


def task_type_of(rows: np.ndarray, labels: np.ndarray) -> TaskType:
    """The task type the stored rows and labels imply (see the module docstring)."""
    if labels.ndim == 2:
        return TaskType.multilabel
    if rows.ndim == 1:
        return TaskType.binary  # accuracy rows: the type does not matter
    return {1: TaskType.regression, 2: TaskType.binary}.get(rows.shape[1], TaskType.multiclass)


def streaks(run_dir: Path, task: str, vals: list[Validation], rule: ConvergenceRule, seed: int) -> list[int]:
    """The significance rule's streak at each of `vals`, replayed on the stored rows as the trainer computes it
    (a new best under `rule` resets it and keeps its rows; a significant drop adds one; another resets it).

    Raises:
        FileNotFoundError: a validation's rows (or the task's labels) were not stored.
    """
    from asyncmtl_trainer.significance import bootstrap_seed, paired_lower_bound

    def load(key: str) -> np.ndarray:
        return np.load(run_dir / key, allow_pickle=False)

    labels = load(validation_rows_key(task))
    track, best_rows, streak, out = Track(), None, 0, []
    for v in vals:
        rows = load(validation_rows_key(task, v.step, v.rewinds))
        track = track._add_point(ValidationPoint(step=v.step, value=v.value), rule)
        if track.best_step == v.step:
            best_rows, streak = rows, 0
        else:
            lb = paired_lower_bound(task_type_of(rows, labels), Metric(v.metric), best_rows, rows, labels,
                                    rule.significance or 0.05, bootstrap_seed(seed, task, v.step))
            streak = streak + 1 if lb > 0 else 0
        out.append(streak)
    return out


def curves(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], int]:
    """Validation points per task (step order) and the validation interval, from reports/history.jsonl."""
    pts = {t: [(v.step, v.value) for v in vals] for t, vals in validations(run_dir).items()}
    steps = sorted({s for p in pts.values() for s, _ in p})
    return pts, (steps[1] - steps[0]) if len(steps) > 1 else 1


def replay(points: list[tuple[int, float]], rule: ConvergenceRule, task: str,
           epochs: list[float | None] | None = None, streak: list[int] | None = None) -> Outcome:
    """Where `rule` first fires on `points` ((step, value), in order), with each point's `epochs` (the epoch
    floor) and significance `streak` (`streaks`) when given."""
    track = Track()
    raw = dict(points)
    for i, (step, value) in enumerate(points):
        track = track._add_point(ValidationPoint(step=step, value=value, epochs=epochs[i] if epochs else None,
                                                 streak=streak[i] if streak else None), rule)
        if has_converged(track, rule):
            return Outcome(task, step, track.best_step, raw[track.best_step], points[-1][1], max(raw.values()))
    return Outcome(task, None, None, None, points[-1][1], max(raw.values()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="Folders of finished fixed-step runs (e.g. uniform seeds).")
    ap.add_argument("--rule", action="append", default=[],
                    help="patience=3,smoothing=0.5,minSteps=200,minEpochs=1,significance=0.05 (repeatable).")
    ap.add_argument("--seed", type=int, default=42, help="The runs' training.seed (the significance rule's bootstrap).")
    args = ap.parse_args(argv)
    rules = args.rule or ["patience=3"]
    print("| rule | first decision (task@step, per run) | best at decision − final (mean) | decisions below final − 0.5 |")
    print("|---|---|---|---|")
    for text in rules:
        firsts, gaps, below, total = [], [], 0, 0
        for run in args.runs:
            pts, interval = curves(run)
            vals = validations(run)
            rule = parse_rule(text, interval)
            outs = [replay(p, rule, t, [v.epochs for v in vals[t]],
                           streaks(run, t, vals[t], rule, args.seed) if rule.significance is not None else None)
                    for t, p in sorted(pts.items())]
            fired = [o for o in outs if o.fired_at is not None]
            first = min((o.fired_at for o in fired), default=None)
            firsts.append(",".join(f"{o.task}@{o.fired_at}" for o in fired if o.fired_at == first) or "none")
            for o in fired:  # every task's own first firing (an upper bound on what the joint run would see)
                gaps.append(o.best_raw - o.final)
                below += o.best_raw < o.final - 0.5
                total += 1
        mean_gap = f"{statistics.fmean(gaps):+.2f}" if gaps else "–"
        print(f"| {text} | {'; '.join(firsts)} | {mean_gap} | {below}/{total} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
