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

from asyncmtl.core.convergence import ConvergenceRule, Track, ValidationPoint, has_converged  # noqa: E402


@dataclass
class Outcome:
    task: str
    fired_at: int | None  # step (None: never within the run)
    best_step: int | None
    best_raw: float | None  # raw validation value of the best checkpoint
    final: float  # validation value at the run's last validation step
    peak: float  # highest validation value over the run


def parse_rule(text: str, interval: int) -> ConvergenceRule:
    """`patience=3,smoothing=0.5,minSteps=200,minDelta=0.1` -> a rule (validation interval from the run)."""
    kw = {"patience": 3, "smoothing": 0.0, "min_steps": 0, "min_delta": 0.0}
    names = {"patience": "patience", "smoothing": "smoothing", "minSteps": "min_steps", "minDelta": "min_delta"}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        kw[names[k]] = float(v) if k in ("smoothing", "minDelta") else int(v)
    return ConvergenceRule(validation_interval=interval, direction="max", **kw)


def curves(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], int]:
    """Validation points per task (step order) and the validation interval, from reports/history.jsonl."""
    pts: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "reports" / "history.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "value" in r:
            pts.setdefault(r["task"], []).append((int(r["step"]), float(r["value"])))
    steps = sorted({s for p in pts.values() for s, _ in p})
    return pts, (steps[1] - steps[0]) if len(steps) > 1 else 1


def replay(points: list[tuple[int, float]], rule: ConvergenceRule, task: str) -> Outcome:
    track = Track()
    raw = dict(points)
    for step, value in points:
        track = track._add_point(ValidationPoint(step=step, value=value), rule)
        if has_converged(track, rule):
            return Outcome(task, step, track.best_step, raw[track.best_step], points[-1][1], max(raw.values()))
    return Outcome(task, None, None, None, points[-1][1], max(raw.values()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="Folders of finished fixed-step runs (e.g. uniform seeds).")
    ap.add_argument("--rule", action="append", default=[], help="patience=3,smoothing=0.5,minSteps=200 (repeatable).")
    args = ap.parse_args(argv)
    rules = args.rule or ["patience=3"]
    print("| rule | first decision (task@step, per run) | best at decision − final (mean) | decisions below final − 0.5 |")
    print("|---|---|---|---|")
    for text in rules:
        firsts, gaps, below, total = [], [], 0, 0
        for run in args.runs:
            pts, interval = curves(run)
            rule = parse_rule(text, interval)
            outs = [replay(p, rule, t) for t, p in sorted(pts.items())]
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
