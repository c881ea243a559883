"""Task metrics on a whole split (sklearn), all on a 0-100 scale, higher is better.

outputs: (n, num_labels) raw model outputs (logits; normalised value for regression).
"""
from __future__ import annotations

import warnings

import numpy as np

from asyncmtl.spec import Metric, TaskType


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def compute_metrics(task_type: TaskType, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric that applies to the task type, keyed by `Metric` value.

    - accuracy, macroF1: sklearn `accuracy_score`, `f1_score(average="macro")` (multilabel: subset accuracy).
    - prAuc: `average_precision_score` on probabilities over the whole split (binary: positive
      class; multiclass: macro over one-vs-rest; multilabel: micro).
    - rmseScore: (1 - RMSE) x 100 with targets in [0, 1] (`root_mean_squared_error`).
    - pearson: Pearson r x 100 (0 when undefined).
    """
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, root_mean_squared_error

    outputs = np.asarray(outputs, dtype=np.float64)
    labels = np.asarray(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task_type is TaskType.regression:
            pred = outputs[:, 0]
            y = labels.astype(np.float64)
            rmse = float(root_mean_squared_error(y, pred))
            r = float(np.corrcoef(pred, y)[0, 1]) if np.std(pred) > 0 and np.std(y) > 0 else 0.0
            return {Metric.rmse_score.value: (1.0 - rmse) * 100.0, Metric.pearson.value: r * 100.0}
        if task_type is TaskType.multilabel:
            probs = 1.0 / (1.0 + np.exp(-outputs))
            pred = (probs >= 0.5).astype(int)
            y = labels.astype(int)
            return {
                Metric.accuracy.value: float(accuracy_score(y, pred)) * 100.0,
                Metric.macro_f1.value: float(f1_score(y, pred, average="macro", zero_division=0)) * 100.0,
                Metric.pr_auc.value: float(average_precision_score(y, probs, average="micro")) * 100.0,
            }
        probs = _softmax(outputs)
        pred = probs.argmax(axis=1)
        y = labels.astype(int)
        if task_type is TaskType.binary:
            ap = average_precision_score(y, probs[:, 1]) if y.max() > 0 else 0.0
        else:
            onehot = np.eye(outputs.shape[1])[y]
            present = onehot.sum(axis=0) > 0
            ap = average_precision_score(onehot[:, present], probs[:, present], average="macro")
        return {
            Metric.accuracy.value: float(accuracy_score(y, pred)) * 100.0,
            Metric.macro_f1.value: float(f1_score(y, pred, average="macro", zero_division=0)) * 100.0,
            Metric.pr_auc.value: float(ap) * 100.0,
        }


def chance_scores(task_type: TaskType, num_labels: int, train_labels: np.ndarray,
                  val_labels: np.ndarray) -> dict[str, float]:
    """Every metric of a constant predictor fitted on the training labels, scored on the validation
    labels (0-100): scikit-learn's `DummyClassifier(strategy="prior")` (the class prior; multilabel:
    each label's prior) or `DummyRegressor(strategy="mean")`, through `compute_metrics`.

    train_labels, val_labels: as `TokenizedSplit.labels` — (n,) class ids, (n, num_labels) multi-hot,
    or (n,) regression targets in [0, 1]. Accuracy is then the majority class's share, prAuc the
    positive rate, pearson 0. Used by the optional chance floor of the convergence rule.
    """
    from sklearn.dummy import DummyClassifier, DummyRegressor

    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    x_train, x_val = np.zeros((len(train_labels), 1)), np.zeros((len(val_labels), 1))
    if task_type is TaskType.regression:
        pred = DummyRegressor(strategy="mean").fit(x_train, train_labels).predict(x_val)
        return compute_metrics(task_type, pred.reshape(-1, 1), val_labels)
    if task_type is TaskType.multilabel:
        prior = np.clip(train_labels.astype(np.float64).mean(axis=0), 1e-6, 1 - 1e-6)
        logits = np.log(prior / (1 - prior))
        return compute_metrics(task_type, np.tile(logits, (len(val_labels), 1)), val_labels)
    dummy = DummyClassifier(strategy="prior").fit(x_train, train_labels)
    probs = np.full((len(val_labels), num_labels), 1e-6)
    probs[:, dummy.classes_.astype(int)] = dummy.predict_proba(x_val)
    return compute_metrics(task_type, np.log(probs), val_labels)
