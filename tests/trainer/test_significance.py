"""The significance rule's trainer half (asyncmtl_trainer.significance, TaskState.compare): per-example rows, the
paired bootstrap's lower bound, the streak and its checkpoint round trip. Pure numpy: fast."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from asyncmtl.core.convergence import ConvergenceRule, has_converged
from asyncmtl.spec import Metric, TaskType
from asyncmtl_trainer.metrics import compute_metrics
from asyncmtl_trainer.significance import bootstrap_seed, example_rows, paired_lower_bound, rows_metric
from asyncmtl_trainer.task_state import TaskState, checkpoint_state, restore_states

N = 300  # validation rows: the size the users have


def _logits(pred: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(pred), k), dtype=np.float32)
    out[np.arange(len(pred)), pred] = 2.0
    return out


def _pair(labels: np.ndarray, best_only: int, current_only: int, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of two checkpoints right on the same 200 rows; then `best_only` rows only the best gets right and
    `current_only` rows only the current one gets right (the rest: both wrong)."""
    best, cur = labels.copy(), labels.copy()
    wrong = (labels + 1) % k
    best[200:], cur[200:] = wrong[200:], wrong[200:]
    best[200:200 + best_only] = labels[200:200 + best_only]
    cur[200 + best_only:200 + best_only + current_only] = labels[200 + best_only:200 + best_only + current_only]
    return _logits(best, k), _logits(cur, k)


@pytest.mark.parametrize("task_type,k", [(TaskType.binary, 2), (TaskType.multiclass, 4), (TaskType.multilabel, 3)])
def test_accuracy_rows_are_each_examples_correctness_and_average_to_the_metric(task_type, k):
    rng = np.random.default_rng(0)
    outputs = rng.normal(size=(N, k)).astype(np.float32)
    labels = (rng.random((N, k)) < 0.4).astype(np.float32) if task_type is TaskType.multilabel else rng.integers(k, size=N)
    rows = example_rows(task_type, Metric.accuracy, outputs, labels)
    assert rows.shape == (N,) and set(np.unique(rows)) <= {0, 1}
    assert rows_metric(task_type, Metric.accuracy, rows, labels) == pytest.approx(
        compute_metrics(task_type, outputs, labels)["accuracy"])
    f1_rows = example_rows(task_type, Metric.macro_f1, outputs, labels)  # not a mean of rows: the outputs
    assert f1_rows.shape == (N, k)
    assert rows_metric(task_type, Metric.macro_f1, f1_rows, labels) == pytest.approx(
        compute_metrics(task_type, outputs, labels)["macroF1"])


def test_a_real_drop_is_significant_a_noisy_one_is_not_and_the_bound_is_seeded():
    labels = np.random.default_rng(1).integers(2, size=N)
    seed = bootstrap_seed(42, "sarcasm", 400)

    def lower(best_only, current_only, metric=Metric.accuracy, s=seed):
        b, c = _pair(labels, best_only, current_only)
        return paired_lower_bound(TaskType.binary, metric, example_rows(TaskType.binary, metric, b, labels),
                                  example_rows(TaskType.binary, metric, c, labels), labels, 0.05, s, samples=400)

    # 2 points apart by chance: each gets 10-ish rows the other misses (the raw rule would count it)
    assert lower(13, 7) <= 0
    # 10 points apart, best right on 35 rows the current misses and only 5 the other way: significant
    assert lower(35, 5) > 0
    assert lower(35, 5, Metric.macro_f1) > 0  # a recomputed metric: bootstrapped through compute_metrics
    assert lower(13, 7) == lower(13, 7)  # same seed, same bound
    assert len({lower(13, 7, s=bootstrap_seed(42, "sarcasm", step)) for step in range(100, 1100, 100)}) > 1
    assert bootstrap_seed(42, "sarcasm", 400) == [42, zlib.crc32(b"sarcasm"), 400]  # not hash(): stable across processes
    with pytest.raises(ValueError):
        paired_lower_bound(TaskType.binary, Metric.accuracy, np.ones(3), np.ones(4), labels[:3], 0.05, seed)


def test_the_streak_counts_consecutive_significant_drops_and_survives_a_checkpoint():
    rule = ConvergenceRule(patience=2, validation_interval=10, significance=0.05)
    st = TaskState()
    bounds = iter([0.8, -0.1, 1.2, 0.9])  # the lower bounds the comparisons return, in order
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def lower(best, cur):
        seen.append((best, cur))
        return next(bounds)

    streaks = []
    for step, value, best in [(10, 70.0, True), (20, 65.0, False), (30, 69.0, False), (40, 64.0, False),
                              (50, 66.0, False)]:
        st.record(step, value, rule)
        st.compare(np.full(4, step, dtype=np.int8), best, lower)
        streaks.append((st.streak, has_converged(st.track(None), rule)))
    assert [int(b[0]) for b, _ in seen] == [10, 10, 10, 10] and [int(c[0]) for _, c in seen] == [20, 30, 40, 50]
    # 0.8: 1; -0.1 (not significant) resets; 1.2: 1; 0.9: 2 = patience. The paper rule would have fired at 30
    assert streaks == [(0, False), (1, False), (0, False), (1, False), (2, True)] and st.last_lower == 0.9
    assert has_converged(st.track(None), ConvergenceRule(patience=2, validation_interval=10))
    state = checkpoint_state(50, 1, 0, {"a": st}, {})
    fresh = {"a": TaskState()}
    restore_states(fresh, state, validations=False)
    assert fresh["a"].streak == 2 and fresh["a"].best_rows.dtype == np.int8
    assert np.array_equal(fresh["a"].best_rows, st.best_rows)
    fresh["a"].record(60, 72.0, rule)
    fresh["a"].compare(np.zeros(4, dtype=np.int8), True, lower)  # a new best: rows kept, streak reset, not drawn
    assert fresh["a"].streak == 0 and not fresh["a"].best_rows.any() and len(seen) == 4
    old = TaskState()  # a checkpoint written before the rows were kept: nothing can be significant yet
    old.restore({"bestStep": 10, "bestValue": 70.0}, [])
    old.record(20, 60.0, rule)
    old.compare(np.zeros(4, dtype=np.int8), False, lower)
    assert old.streak == 0 and len(seen) == 4


@pytest.mark.parametrize("task_type,metric,k", [
    (TaskType.binary, Metric.macro_f1, 2), (TaskType.multiclass, Metric.macro_f1, 5),
    (TaskType.multilabel, Metric.macro_f1, 3), (TaskType.multiclass, Metric.accuracy, 3),
    (TaskType.regression, Metric.rmse_score, 1), (TaskType.regression, Metric.pearson, 1),
    (TaskType.binary, Metric.pr_auc, 2), (TaskType.multiclass, Metric.pr_auc, 4),
    (TaskType.multilabel, Metric.pr_auc, 3)])
def test_each_resamples_metric_is_the_metric_of_its_rows(task_type, metric, k):
    """The vectorised bootstrap computes, for every resample, what compute_metrics gives on its rows (small
    resamples, so some miss a class: sklearn's macro average over the labels present is matched)."""
    from asyncmtl_trainer.significance import resampled_metric

    rng = np.random.default_rng(3)
    n = 12
    outputs = rng.normal(size=(n, k)).astype(np.float32)
    if task_type is TaskType.regression:
        outputs, labels = rng.random((n, 1)).astype(np.float32), rng.random(n)
    elif task_type is TaskType.multilabel:
        labels = (rng.random((n, k)) < 0.3).astype(np.float32)
    else:
        labels = rng.integers(k, size=n)
    if metric is Metric.pr_auc:
        outputs = np.round(outputs, 1)  # tied scores: one threshold, as scikit-learn counts them
    rows = example_rows(task_type, metric, outputs, labels)
    idx = rng.integers(n, size=(40, n))
    idx[0] = 0  # a resample of one row repeated: undefined correlation, a single class

    got = resampled_metric(task_type, metric, rows, labels, idx)
    want = [compute_metrics(task_type, outputs[i], labels[i])[metric.value] for i in idx]
    assert got == pytest.approx(want, abs=1e-6)
