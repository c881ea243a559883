"""The `AsyncMTLRun` run spec: typed models, the single source of truth for validation.

The same YAML document runs locally (`asyncmtl run spec.yaml`) and on a cluster
(`kubectl apply -f spec.yaml`); the CRD schema is generated from these models.

Method: Lu et al., "Asynchronous Convergence in Multi-Task Learning via Knowledge
Distillation from Converged Tasks", NAACL 2022 industry track (Sec. 3): validate every
`training.validationInterval` steps; a task converges when its validation metric has not
improved by more than `minDelta` for `patience` validation steps.

Field names are camelCase in YAML (Kubernetes convention) and snake_case in Python.

The package re-exports every public name of its modules, so `from asyncmtl.spec import X` is the way in:

- `asyncmtl.spec.run`: `RunSpec` and its sections, `AsyncMTLRun`, `Metadata`, `API_VERSION`, `KIND`;
- `asyncmtl.spec.task`: `TaskSpec`, `DataSpec`, `TaskType`, `Metric`, `DataFormat`;
- `asyncmtl.spec.cluster`: `ClusterSpec`, the pod-template overlay and the Pod Security checks;
- `asyncmtl.spec.loading`: `parse_run`, `load_run_file`, `load_spec_file` and the YAML limits;
- `asyncmtl.spec.errors`: `SpecIssue`, `SpecError`, `format_path`, `issues_from_validation_error`;
- `asyncmtl.spec.base`: the models' base class and CEL helper (private).
"""
from __future__ import annotations

from asyncmtl.spec.cluster import (MAIN_CONTAINER, RESERVED_VOLUMES, RESTRICTED_VOLUME_TYPES, ClusterSpec,
                                   PodTemplateMetadata, PodTemplateOverlay, Quantity, ResourceRequirements,
                                   Toleration, VolumeSpec, restricted_violations)
from asyncmtl.spec.errors import SpecError, SpecIssue, format_path, issues_from_validation_error
from asyncmtl.spec.loading import (MAX_INT_DIGITS, MAX_SPEC_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, load_run_file,
                                   load_spec_file, parse_run)
from asyncmtl.spec.run import (API_VERSION, KIND, MINILM_PACKAGE, AsyncMTLRun, DistillationSpec, KeepCheckpoints,
                               Metadata, MetricsSpec, ModelSpec, RunSpec, StorageSpec, TrainingSpec, WeightingSpec)
from asyncmtl.spec.task import (CLASSIFICATION_METRICS, DEFAULT_METRIC, REGRESSION_METRICS, DataFormat, DataSpec,
                                Metric, TaskSpec, TaskType)
# importable from asyncmtl.spec since it used them (their home is asyncmtl.method)
from asyncmtl.method import METHODS, Method, MethodName

__all__ = [
    # run
    "API_VERSION", "KIND", "MINILM_PACKAGE", "AsyncMTLRun", "Metadata", "RunSpec", "ModelSpec", "TrainingSpec",
    "DistillationSpec", "KeepCheckpoints", "StorageSpec", "MetricsSpec", "WeightingSpec",
    # task
    "TaskType", "Metric", "CLASSIFICATION_METRICS", "REGRESSION_METRICS", "DEFAULT_METRIC", "DataFormat", "DataSpec",
    "TaskSpec",
    # cluster
    "ClusterSpec", "Toleration", "VolumeSpec", "Quantity", "ResourceRequirements", "PodTemplateMetadata",
    "PodTemplateOverlay", "RESERVED_VOLUMES", "MAIN_CONTAINER", "RESTRICTED_VOLUME_TYPES", "restricted_violations",
    # errors
    "SpecIssue", "SpecError", "format_path", "issues_from_validation_error",
    # loading
    "parse_run", "load_run_file", "load_spec_file", "MAX_SPEC_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "MAX_INT_DIGITS",
    # asyncmtl.method
    "METHODS", "Method", "MethodName",
]
