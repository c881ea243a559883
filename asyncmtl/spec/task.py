"""One task of a run (`spec.tasks[]`): its head type (`TaskType`), metric (`Metric`, the default per
type), data (`DataFormat`, `DataSpec`) and convergence rule (`TaskSpec`)."""
from __future__ import annotations

from enum import Enum

from pydantic import Field, model_validator

from asyncmtl.spec.base import _DNS_LABEL, _cel, _Strict


class TaskType(str, Enum):
    """Head and loss family of a task (paper Sec. 4: binary, multi-class, multi-label, regression)."""

    binary = "binary"
    multiclass = "multiclass"
    multilabel = "multilabel"
    regression = "regression"


class Metric(str, Enum):
    """Validation/test metric, reported on a 0-100 scale (higher is better for all).

    - accuracy: fraction of exact matches x 100 (subset accuracy for multilabel).
    - macroF1: macro-averaged F1 x 100 (sklearn `f1_score(average="macro")`).
    - prAuc: average precision x 100 over the whole split (sklearn
      `average_precision_score`; macro over classes for multiclass, micro for multilabel).
    - rmseScore: (1 - RMSE) x 100 on targets normalised to [0, 1] (paper Table 2).
    - pearson: Pearson correlation x 100.
    """

    accuracy = "accuracy"
    macro_f1 = "macroF1"
    pr_auc = "prAuc"
    rmse_score = "rmseScore"
    pearson = "pearson"


CLASSIFICATION_METRICS = {Metric.accuracy, Metric.macro_f1, Metric.pr_auc}
REGRESSION_METRICS = {Metric.rmse_score, Metric.pearson}
DEFAULT_METRIC = {
    TaskType.binary: Metric.pr_auc,
    TaskType.multiclass: Metric.accuracy,
    TaskType.multilabel: Metric.pr_auc,
    TaskType.regression: Metric.rmse_score,
}


class DataFormat(str, Enum):
    """Format of a task's data files.

    - jsonl / csv / parquet: one example per row with the task's text fields and label field.
    - tweeteval: the TweetEval directory layout; URIs look like `tweeteval://emotion/train`
      and the root directory comes from `--tweeteval-dir` or `$TWEETEVAL_DIR`.
    - builtin: the seeded benchmark AsyncMTL generates itself; URIs look like
      `builtin://quickstart/<task>/<split>`.
    """

    jsonl = "jsonl"
    csv = "csv"
    parquet = "parquet"
    tweeteval = "tweeteval"
    builtin = "builtin"


class DataSpec(_Strict):
    """Where a task's splits live. Relative paths resolve against the spec file's folder; `s3://` URIs
    are fetched into a local cache (asyncmtl.data.remote)."""

    format: DataFormat | None = Field(
        None, description="File format; inferred from the train URI's extension or scheme when omitted."
    )
    train: str = Field(..., min_length=1, description=(
        "Training split: a path (relative to the spec's folder), `file://`, `s3://bucket/key` (read through "
        "spec.storage's endpoint and credentials), `tweeteval://task/split` or `builtin://` URI."))
    validation: str = Field(..., min_length=1, description="Validation split (early stopping): a path or URI as `train`.")
    test: str | None = Field(None, description="Test split (scored at the end): a path or URI as `train`.")
    max_train_examples: int | None = Field(None, ge=1, description="Keep only the first N training rows.")
    max_validation_examples: int | None = Field(None, ge=1, description="Keep only the first N validation rows.")
    max_test_examples: int | None = Field(None, ge=1, description="Keep only the first N test rows.")
    allow_empty_text: bool = Field(
        False, description="Accept rows whose text is empty (they are encoded as an empty input) instead of rejecting them."
    )

    def resolved_format(self) -> DataFormat:
        """The declared format, else the one implied by the train URI.

        Raises:
            ValueError: the format cannot be inferred.
        """
        if self.format is not None:
            return self.format
        uri = self.train
        if uri.startswith("tweeteval://"):
            return DataFormat.tweeteval
        if uri.startswith("builtin://"):
            return DataFormat.builtin
        for fmt in (DataFormat.jsonl, DataFormat.csv, DataFormat.parquet):
            if uri.endswith("." + fmt.value):
                return fmt
        if uri.endswith(".json"):
            return DataFormat.jsonl
        raise ValueError(f"cannot infer the format of {uri!r}: set format to one of jsonl|csv|parquet|tweeteval|builtin")


class TaskSpec(_Strict):
    """One task: a head on the shared encoder, its data, and its convergence rule."""

    model_config = _cel(
        ("self.type != 'binary' || !has(self.numLabels) || self.numLabels == 2",
         "numLabels must be 2 for a binary task", ".numLabels"),
        ("self.type != 'regression' || !has(self.numLabels) || self.numLabels == 1",
         "numLabels must be 1 for a regression task", ".numLabels"),
        ("!(self.type in ['multiclass', 'multilabel']) || has(self.numLabels)",
         "numLabels is required for a multiclass or multilabel task", ".numLabels"),
        ("self.type != 'multiclass' || !has(self.numLabels) || self.numLabels >= 2",
         "numLabels must be >= 2 for a multiclass task", ".numLabels"),
        ("!has(self.labelRange) || self.type == 'regression'",
         "labelRange only applies to a regression task", ".labelRange"),
        ("!has(self.labelRange) || self.labelRange[1] > self.labelRange[0]",
         "labelRange: max must be greater than min", ".labelRange"),
    )

    name: str = Field(..., pattern=_DNS_LABEL, max_length=40, description="Task name (DNS label).")
    type: TaskType = Field(..., description="Head and loss family.")
    num_labels: int | None = Field(
        None, ge=1, le=100000,
        description="Output size: 2 for binary, the class count for multiclass/multilabel, 1 for regression.",
    )
    metric: Metric | None = Field(None, description="Validation metric; default by type.")
    data: DataSpec = Field(..., description="Where the task's splits live.")
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"], min_length=1, max_length=2,
        description="Input column(s): one text, or a text pair (distinct, non-empty names).",
    )
    label_field: str = Field("label", min_length=1, description="Label column.")
    label_range: tuple[float, float] | None = Field(
        None, description="Regression only: [min, max] of the labels; targets are normalised to [0, 1]."
    )
    patience: int = Field(
        3, ge=1,
        description="Validation steps without improvement before the task converges (under significance: consecutive "
                    "validations significantly below the best). The rule reads changes of a point or so: with n "
                    "validation rows a checkpoint's accuracy moves by about 100·sqrt(0.25/n) points by chance (2.9 at "
                    "300 rows, 1 at 2500), and `asyncmtl validate --data` warns when a validation split has fewer "
                    "than 2500 rows.")
    min_delta: float = Field(0.0, ge=0.0, le=100.0, description="Smallest improvement (metric points) that counts.")
    min_steps: int = Field(0, ge=0, description="No convergence is declared before this training step.")
    smoothing: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Exponential moving average of the validation curve the convergence rule reads: "
                    "s_k = smoothing·s_(k-1) + (1-smoothing)·value_k (0: the raw values, the paper).")
    min_gain_over_chance: float | None = Field(
        None, ge=0.0, le=100.0,
        description="Chance floor (metric points): the task is not declared converged until its best validation "
                    "value beats its chance score (a constant predictor: the training split's class prior, or its "
                    "mean for regression) by this much, so a task that has not started to learn is not frozen on "
                    "a dip of its validation curve. Unset: no floor (the paper).")
    min_epochs: float = Field(
        0.0, ge=0.0, le=1000.0,
        description="Epoch floor: the task is not declared converged before it has seen this many epochs of its own "
                    "training data (examples the trainer drew for it, along the run's timeline, divided by its "
                    "training-split size) at its last validation step. The size-proportional sampler gives a small "
                    "task few examples per step, so a step floor (minSteps) does not guarantee it has seen its data; "
                    "a validation curve read after a fraction of an epoch is mostly noise. 0: no floor (the paper).")
    significance: float | None = Field(
        None, gt=0.0, lt=0.5,
        description="Paired, noise-aware convergence rule: a validation counts toward patience only when the current "
                    "checkpoint is significantly below the task's best one on the same validation rows — the lower "
                    "bound of the one-sided (1 - significance) paired-bootstrap interval of metric(best) - "
                    "metric(current) is above 0 (1000 resamples of the rows, seeded from the run seed, the task and "
                    "the step; accuracy resamples each row's 0/1 correctness, other metrics are recomputed on the "
                    "resampled rows) — and the task converges after patience consecutive such validations. With a "
                    "few hundred validation rows a checkpoint's score moves 1-3 points by chance, and the raw rule "
                    "fires on those draws. E.g. 0.05. Unset: every validation without improvement counts (the paper).")
    sampling_weight: float = Field(1.0, gt=0.0, le=1e6,
                                   description="Multiplies the task's share of each batch (size-proportional).")

    @model_validator(mode="after")
    def _check_type_rules(self) -> "TaskSpec":
        t = self.type
        if any(not f.strip() for f in self.text_fields):
            raise ValueError("textFields: a field name must not be empty")
        if len(set(self.text_fields)) != len(self.text_fields):
            raise ValueError("textFields: the names must be distinct")
        if self.num_labels is None:
            self.num_labels = {TaskType.binary: 2, TaskType.regression: 1}.get(t)
            if self.num_labels is None:
                raise ValueError(f"numLabels: required for a {t.value} task")
        if t is TaskType.binary and self.num_labels != 2:
            raise ValueError("numLabels: must be 2 for a binary task")
        if t is TaskType.regression and self.num_labels != 1:
            raise ValueError("numLabels: must be 1 for a regression task")
        if t is TaskType.multiclass and self.num_labels < 2:
            raise ValueError("numLabels: must be >= 2 for a multiclass task")
        if self.metric is None:
            self.metric = DEFAULT_METRIC[t]
        allowed = REGRESSION_METRICS if t is TaskType.regression else CLASSIFICATION_METRICS
        if self.metric not in allowed:
            names = "|".join(sorted(m.value for m in allowed))
            raise ValueError(f"metric: {self.metric.value} does not apply to a {t.value} task (use {names})")
        if self.label_range is not None:
            if t is not TaskType.regression:
                raise ValueError("labelRange: only applies to a regression task")
            lo, hi = self.label_range
            if not hi > lo:
                raise ValueError("labelRange: max must be greater than min")
        elif t is TaskType.regression:
            self.label_range = (0.0, 1.0)
        return self
