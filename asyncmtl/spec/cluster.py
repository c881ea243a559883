"""`spec.cluster`: how the operator runs the trainer and inference pods (`ClusterSpec`): tolerations,
PVC volumes, resource quantities and the pod-template overlay (`PodTemplateOverlay`) with what it may
not override (the pods' own volumes, `RESERVED_VOLUMES`; the `MAIN_CONTAINER`'s image, command and args)
and the Pod Security Standards' restricted profile it must meet (`restricted_violations`). Ignored by the
local runtime."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator

from asyncmtl.spec.base import _DNS_LABEL, _Strict


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
