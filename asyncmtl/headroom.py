"""Headroom and hold gap: what a run's validation curves leave for a method that holds each task at its best.

Scores are a task's metric in points (0-100); steps are training steps at which the trainer validated.
All three quantities are on the **validation** split: the trainer validates every `validationInterval`
steps but scores the test split only at the end (final model and best checkpoints), so no test curve
exists to take a test headroom from.

- **Headroom H** of a run, from its own validation curves on the final model's lineage (validations
  no rewind discarded):

      H = mean over tasks t of max_s v_t(s)  −  max over s of (mean over tasks t of v_t(s))

  where v_t(s) is task t's validation score at step s; the first term takes each task's best
  validation score wherever it is, the second the best mean score of any single checkpoint (steps at
  which every task was validated). H ≥ 0: what choosing each task's checkpoint on its own could gain
  over the best single checkpoint. The comparison takes H from the reference runs (Uni. Weight: the
  uniform baseline). Being a maximum over noisy validations, it overstates what is there to gain.
- **Hold gap** of a run: mean over tasks of (the task's best validation score − its final validation
  score), the final score being the final model's. The best score is the report's (`asyncmtl.report`):
  for a converged task, the validation of its best checkpoint (the one it was rewound to and
  distilled from); for a task that never converged, the highest validation on the final lineage. A
  method that holds every task at its best has a hold gap of 0; it can be negative.
- **Share of H captured** by a method: (the method's mean validation score over tasks − the
  reference's Final model's) / H; 1 = the whole headroom, 0 = no better than the reference, negative
  = worse. Undefined where H = 0.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Headroom:
    """A run's headroom (module docstring).

    Attributes:
        value: H (points, ≥ 0).
        task_best: each task's best validation score (points).
        best_step: the single checkpoint with the best mean validation score (steps; the earliest on a tie).
        best_step_mean: that checkpoint's mean validation score over tasks (points).
    """

    value: float
    task_best: dict[str, float]
    best_step: int
    best_step_mean: float


def headroom(curves: Mapping[str, Mapping[int, float]]) -> Headroom | None:
    """H of one run from its validation curves.

    Args:
        curves: task -> (step -> validation score, points), e.g. the final lineage of each task.

    Returns:
        The headroom; None when there is no task, or no step at which every task was validated.
    """
    if not curves or any(not c for c in curves.values()):
        return None
    common = sorted(set.intersection(*(set(c) for c in curves.values())))
    if not common:
        return None
    means = {s: statistics.fmean(c[s] for c in curves.values()) for s in common}
    best_step = max(common, key=lambda s: (means[s], -s))
    task_best = {t: max(c.values()) for t, c in curves.items()}
    h = statistics.fmean(task_best.values()) - means[best_step]
    return Headroom(value=max(0.0, h), task_best=task_best, best_step=best_step, best_step_mean=means[best_step])


def hold_gap(best: Mapping[str, float | None], final: Mapping[str, float | None]) -> float | None:
    """Mean over tasks of (best validation score − final validation score), points.

    Args:
        best, final: task -> score (points); every task of `best` must be in `final`.

    Returns:
        The hold gap; None when there is no task or a task lacks either score.
    """
    if not best:
        return None
    gaps = [(b - final.get(t)) if b is not None and final.get(t) is not None else None for t, b in best.items()]
    return None if any(g is None for g in gaps) else statistics.fmean(gaps)  # type: ignore[arg-type]


def share_of_headroom(method: float | None, reference: float | None, h: float | None) -> float | None:
    """(method − reference) / h: the share of the headroom a method's mean validation score captured over
    the reference's (a fraction; 1 = all of it). None when a score is missing or h is not positive."""
    if method is None or reference is None or h is None or h <= 0:
        return None
    return (method - reference) / h
