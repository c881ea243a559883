"""Per-example validation rows and the paired bootstrap of the significance rule (`tasks[].significance`).

Torch-free (numpy; scikit-learn through `metrics`), so `benchmarks/replay_rule.py` replays the rule on
a finished run's stored rows without the trainer.

A task's *rows* at a validation step are what its metric is computed from, one entry per validation
example in split order:

- accuracy (binary, multiclass, multilabel subset accuracy): (n,) int8, 1 where the prediction is right —
  the metric is their mean x 100, so a resample's metric is a mean of resampled rows (vectorised);
- every other metric (macroF1, prAuc, rmseScore, pearson): the raw outputs (n, num_labels) float32, and a
  resample's metric is what `metrics.compute_metrics` gives on the resampled outputs and labels (computed for
  all B resamples at once: counts per class for macroF1, resample weights over the score-sorted rows for
  prAuc; under a tenth of a second for 1000 resamples of 300 rows).

The bootstrap (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", Ch. 6 and 13: B resamples of
the n rows with replacement, percentile interval) draws the *same* row indices for the best and the
current checkpoint (a paired comparison on the same validation rows: the rows' difficulty cancels) and
returns the α-quantile of metric(best) − metric(current): the lower bound of the one-sided (1 − α)
interval. Above 0: the current checkpoint is significantly worse than the best.
"""
from __future__ import annotations

import zlib

import numpy as np

from asyncmtl.spec import Metric, TaskType
from asyncmtl_trainer.metrics import compute_metrics

BOOTSTRAP_SAMPLES = 1000  # resamples per paired comparison (B)


def example_rows(task_type: TaskType, metric: Metric, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The rows the bootstrap resamples (see the module docstring).

    Args:
        outputs: (n, num_labels) raw outputs (`Evaluator.predict`). labels: as `TokenizedSplit.labels`.
    Returns:
        accuracy: (n,) int8 correctness; otherwise `outputs` as (n, num_labels) float32.
    """
    outputs = np.asarray(outputs, dtype=np.float32)
    if metric is not Metric.accuracy:
        return outputs
    labels = np.asarray(labels)
    if task_type is TaskType.multilabel:
        pred = (outputs >= 0.0).astype(int)  # sigmoid(x) >= 0.5, as compute_metrics
        return (pred == labels.astype(int)).all(axis=1).astype(np.int8)
    return (outputs.argmax(axis=1) == labels.astype(int)).astype(np.int8)


def rows_metric(task_type: TaskType, metric: Metric, rows: np.ndarray, labels: np.ndarray) -> float:
    """The metric (0-100) of `rows` (`example_rows`) against `labels`: the same value `compute_metrics` gives."""
    if metric is Metric.accuracy:
        return float(np.mean(rows)) * 100.0
    return compute_metrics(task_type, rows, labels)[metric.value]


def bootstrap_seed(seed: int, task: str, step: int) -> list[int]:
    """The resampling seed of `task`'s comparison at `step` under run seed `seed` (stable across processes:
    crc32 of the name, not Python's salted hash)."""
    return [seed, zlib.crc32(task.encode()), step]


def paired_lower_bound(task_type: TaskType, metric: Metric, best: np.ndarray, current: np.ndarray,
                       labels: np.ndarray, alpha: float, seed: list[int],
                       samples: int = BOOTSTRAP_SAMPLES) -> float:
    """The lower bound (metric points) of the one-sided (1 − `alpha`) paired-bootstrap interval of
    metric(best rows) − metric(current rows): the `alpha`-quantile of `samples` resampled differences
    (numpy's default linear interpolation).

    Args:
        best, current: the two checkpoints' `example_rows` on the same validation split (same shape).
        seed: `bootstrap_seed(...)`: the same seed gives the same bound.
    Raises:
        ValueError: the rows do not have the same number of examples, or there are none.
    """
    n = len(best)
    if n == 0 or len(current) != n:
        raise ValueError(f"paired bootstrap: {n} best rows and {len(current)} current rows")
    rng = np.random.default_rng(seed)
    idx = rng.integers(n, size=(samples, n))
    labels = np.asarray(labels)
    diffs = resampled_metric(task_type, metric, best, labels, idx) - resampled_metric(task_type, metric, current,
                                                                                        labels, idx)
    return float(np.quantile(diffs, alpha))


def resampled_metric(task_type: TaskType, metric: Metric, rows: np.ndarray, labels: np.ndarray,
                     idx: np.ndarray) -> np.ndarray:
    """The metric (0-100) of each resample of `rows`: `idx` (B, n) row indices -> (B,) float64, each equal to
    `rows_metric` on those rows (vectorised; a metric without a vectorised form here would be computed resample
    by resample through `compute_metrics`)."""
    if metric is Metric.accuracy:
        return rows[idx].mean(axis=1, dtype=np.float64) * 100.0
    if metric is Metric.macro_f1:
        if task_type is TaskType.multilabel:
            pred, y = rows[idx] >= 0.0, labels[idx].astype(bool)  # (B, n, k)
            tp, fp, fn = (pred & y).sum(1), (pred & ~y).sum(1), (~pred & y).sum(1)
            denom = 2 * tp + fp + fn
            f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)  # zero_division=0, every label counts
            return f1.mean(axis=1) * 100.0
        pred, y = rows.argmax(axis=1)[idx], labels.astype(int)[idx]  # (B, n)
        scores, present = np.zeros(len(idx)), np.zeros(len(idx))
        for c in range(rows.shape[1]):
            p, t = pred == c, y == c
            tp, fp, fn = (p & t).sum(1), (p & ~t).sum(1), (~p & t).sum(1)
            denom = 2 * tp + fp + fn
            scores += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
            present += denom > 0  # sklearn averages over the labels in y_true or y_pred
        return scores / np.maximum(present, 1) * 100.0
    if task_type is TaskType.regression and metric in (Metric.rmse_score, Metric.pearson):
        p, y = rows[:, 0].astype(np.float64)[idx], labels.astype(np.float64)[idx]
        if metric is Metric.rmse_score:
            return (1.0 - np.sqrt(((p - y) ** 2).mean(axis=1))) * 100.0
        pc, yc = p - p.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
        sp, sy = np.sqrt((pc ** 2).sum(1)), np.sqrt((yc ** 2).sum(1))
        ok = (p.std(axis=1) > 0) & (y.std(axis=1) > 0)
        return np.where(ok, (pc * yc).sum(1) / np.where(ok, sp * sy, 1.0), 0.0) * 100.0
    if metric is Metric.pr_auc and task_type is not TaskType.regression:
        return _resampled_pr_auc(task_type, rows, labels, idx) * 100.0
    return np.array([rows_metric(task_type, metric, rows[i], labels[i]) for i in idx])


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) multiplicities of each row in each resample of `idx` (B, n)."""
    b = len(idx)
    return np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _weighted_ap(scores: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision (0-1) of `scores` (m,) against `positive` (m,) bool under each row of weights `w` (B, m):
    scikit-learn's `average_precision_score` on the resample (a resample is the rows repeated by their weights;
    tied scores form one threshold, as there): sum over thresholds, highest first, of (R_k - R_(k-1))·P_k."""
    order = np.argsort(-scores, kind="mergesort")
    s, y, w = scores[order], positive[order].astype(np.float64), w[:, order]
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last row of each run of tied scores
    tps, fps = np.cumsum(w * y, axis=1)[:, ends], np.cumsum(w * (1.0 - y), axis=1)[:, ends]
    total = tps[:, -1:]
    precision = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=(tps + fps) > 0)
    recall = np.divide(tps, total, out=np.zeros_like(tps), where=total > 0)
    gains = np.diff(np.concatenate([np.zeros((len(w), 1)), recall], axis=1), axis=1)
    return (gains * precision).sum(axis=1)


def _resampled_pr_auc(task_type: TaskType, rows: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """prAuc (0-1) of each resample, as `compute_metrics` computes it: binary on the positive class's probability
    (0 without a positive), multiclass the macro average over the classes present, multilabel micro."""
    out64 = rows.astype(np.float64)
    w = _weights(idx, len(rows))
    if task_type is TaskType.multilabel:
        k = rows.shape[1]
        probs = 1.0 / (1.0 + np.exp(-out64))
        return _weighted_ap(probs.ravel(), labels.astype(int).ravel() == 1, np.repeat(w, k, axis=1))
    e = np.exp(out64 - out64.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    y = labels.astype(int)
    if task_type is TaskType.binary:
        return _weighted_ap(probs[:, 1], y == 1, w)  # no positive in a resample: recall stays 0, AP 0
    total, present = np.zeros(len(idx)), np.zeros(len(idx))
    for c in range(rows.shape[1]):
        has = (w * (y == c)).sum(axis=1) > 0
        total += np.where(has, _weighted_ap(probs[:, c], y == c, w), 0.0)
        present += has
    return total / np.maximum(present, 1)
