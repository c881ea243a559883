"""Manifests of a run's children (pure functions): control ConfigMap, training Job (an Indexed Job
with a headless rendezvous Service for several nodes), metrics Service, soft-label inference Indexed Job. Names are deterministic, so creating a child that
already exists is a no-op (an operator restart never duplicates one).

Every pod runs with the Pod Security `restricted` profile's security context.
"""
from __future__ import annotations

import hashlib
from typing import Any

from asyncmtl.control import CONTROL_FILE_NAME, ControlDocument
from asyncmtl.crd import GROUP
from asyncmtl.spec import RESERVED_VOLUMES, AsyncMTLRun
from asyncmtl_operator.pod_template import apply_overlay

CONTROL_MOUNT = "/etc/asyncmtl/control"
CONTROL_VOLUME, WORK_VOLUME, TMP_VOLUME, SHM_VOLUME = RESERVED_VOLUMES  # every pod's own volumes (a pod template may not reuse them)
SPEC_KEY = "run.yaml"
WORKDIR = "/var/lib/asyncmtl"
RUN_LABEL = f"{GROUP}/run"
ROLE_LABEL = f"{GROUP}/role"
TASK_LABEL = f"{GROUP}/task"
MAX_NAME = 63

POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                              "capabilities": {"drop": ["ALL"]}}


def child_name(*parts: str) -> str:
    """`-`-joined parts, at most 63 characters (a DNS label); long names keep a hash suffix."""
    name = "-".join(p for p in parts if p)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME - 9].rstrip('-')}-{digest}"


def control_name(run: str) -> str:
    return child_name(run, "control")


def train_name(run: str) -> str:
    return child_name(run, "train")


def metrics_service_name(run: str) -> str:
    return child_name(run, "metrics")


def rendezvous_service_name(run: str) -> str:
    """The headless Service giving a multi-node trainer's pods stable DNS names (`<job>-<index>.<service>`)."""
    return child_name(run, "ranks")


COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"  # set by the Job controller on Indexed Job pods
RENDEZVOUS_PORT = 29400  # torchrun's c10d store on pod 0
EXIT_NOT_RETRIED = (2, 3)  # asyncmtl.termination: bad spec or data, storage fault


def ranks_per_pod(run: AsyncMTLRun) -> int:
    """torchrun ranks in each training pod: one per GPU (`cluster.gpusPerNode`), else one."""
    return max(1, run.spec.cluster.gpus_per_node)


def distributed(run: AsyncMTLRun) -> bool:
    """The trainer runs under torchrun: several pods, or several GPUs in its pod."""
    return run.spec.cluster.nodes > 1 or ranks_per_pod(run) > 1


def multi_node(run: AsyncMTLRun) -> bool:
    """The trainer is an Indexed Job of `cluster.nodes` pods with a headless Service for rendezvous."""
    return run.spec.cluster.nodes > 1


def inference_name(run: str, task: str, step: int, attempt: int = 1) -> str:
    return child_name(run, "infer", task, str(step), f"r{attempt}" if attempt > 1 else "")


def labels(run: str, role: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": "asyncmtl", "app.kubernetes.io/managed-by": "asyncmtl-operator",
           RUN_LABEL: run, ROLE_LABEL: role}
    out.update(extra or {})
    return out


def control_configmap(run: AsyncMTLRun, doc: ControlDocument, spec_yaml: str) -> dict[str, Any]:
    """The control ConfigMap: `control.json` (the signals) and `run.yaml` (the spec the pods read)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": control_name(run.name), "labels": labels(run.name, "control")},
            "data": {CONTROL_FILE_NAME: doc.to_json(), SPEC_KEY: spec_yaml}}


def _env(run: AsyncMTLRun) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HOME", "value": WORKDIR},
    ]
    env.extend({"name": k, "value": v} for k, v in sorted(run.spec.cluster.env.items()))
    st = run.spec.storage
    if st.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": st.endpoint_url})
    if st.credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": st.credentials_secret, "key": key}}})
    return env


def _pod_spec(run: AsyncMTLRun, container: dict[str, Any], restart: str) -> dict[str, Any]:
    c = run.spec.cluster
    pod: dict[str, Any] = {
        "restartPolicy": restart,
        "securityContext": POD_SECURITY_CONTEXT,
        "containers": [container],
        "volumes": [
            # the whole ConfigMap as a folder: a subPath mount would never see updates
            {"name": CONTROL_VOLUME, "configMap": {"name": control_name(run.name)}},
            {"name": WORK_VOLUME, "emptyDir": {}},
            {"name": TMP_VOLUME, "emptyDir": {}},  # the root filesystem is read-only
            *({"name": v.name, "persistentVolumeClaim": {"claimName": v.claim_name, "readOnly": v.read_only}}
              for v in c.volumes),
        ],
    }
    if c.node_selector:
        pod["nodeSelector"] = c.node_selector
    if c.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in c.tolerations]
    if c.priority_class_name:
        pod["priorityClassName"] = c.priority_class_name
    if c.service_account_name:
        pod["serviceAccountName"] = c.service_account_name
    pod["automountServiceAccountToken"] = False  # the trainer never talks to the API
    return pod


def _container(run: AsyncMTLRun, name: str, args: list[str], resources: dict[str, dict[str, str]],
               ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    c = run.spec.cluster
    out: dict[str, Any] = {
        "name": name, "image": c.image, "imagePullPolicy": c.image_pull_policy, "args": args,
        "env": _env(run), "resources": resources, "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [{"name": CONTROL_VOLUME, "mountPath": CONTROL_MOUNT, "readOnly": True},
                         {"name": WORK_VOLUME, "mountPath": WORKDIR}, {"name": TMP_VOLUME, "mountPath": "/tmp"},
                         *({"name": v.name, "mountPath": v.mount_path, "readOnly": v.read_only} for v in c.volumes)],
    }
    if ports:
        out["ports"] = ports
    return out


def training_resources(run: AsyncMTLRun) -> dict[str, dict[str, Any]]:
    """The trainer container's resources: `cluster.resources`, with `nvidia.com/gpu: gpusPerNode` in its
    limits when GPUs per node are set (an extended resource: its request defaults to its limit)."""
    c = run.spec.cluster
    res = {k: dict(v) for k, v in c.resources.items()}
    if c.gpus_per_node:  # a Quantity is a string in the API's JSON (the client refuses an int)
        res.setdefault("limits", {})["nvidia.com/gpu"] = str(c.gpus_per_node)
        if "nvidia.com/gpu" in res.get("requests", {}):
            res["requests"]["nvidia.com/gpu"] = str(c.gpus_per_node)
    return res


def _trainer_args(run: AsyncMTLRun, namespace: str) -> list[str]:
    """The container's arguments: `asyncmtl-train ...`, or under torchrun (`asyncmtl-launch`, torchrun's
    arguments keeping the failed rank's exit status) one rank per GPU of each pod. Several pods meet at
    pod 0's stable DNS name (c10d rendezvous); torchrun restarts the whole group up to `backoffLimit`
    times when a rank fails, and every restarted rank resumes from the latest checkpoint."""
    c = run.spec.cluster
    train = ["--spec", f"{CONTROL_MOUNT}/{SPEC_KEY}", "--run-name", run.name, "--namespace", namespace,
             "--control", f"{CONTROL_MOUNT}/{CONTROL_FILE_NAME}", "--workdir", WORKDIR,
             "--metrics-port", str(run.spec.metrics.port or 9400), "--resume"]
    if not distributed(run):
        return ["asyncmtl-train", *train]
    if multi_node(run):
        # pod 0's DNS name in the headless Service, qualified with the namespace (resolves from any search path;
        # published before the pod is ready: publishNotReadyAddresses); torchrun retries the rendezvous until
        # its join timeout, so pods starting before the record exists still meet
        endpoint = f"{train_name(run.name)}-0.{rendezvous_service_name(run.name)}.{namespace}.svc:{RENDEZVOUS_PORT}"
        where = [f"--nnodes={c.nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run.name}"]
    else:
        where = ["--standalone"]
    # torchrun restarts nothing: the Job alone counts retries (cluster.backoffLimit), so a failure is not
    # retried (backoffLimit + 1)^2 times, once by each
    return ["asyncmtl-launch", *where, f"--nproc-per-node={ranks_per_pod(run)}", "--max-restarts=0",
            "-m", "asyncmtl_trainer.train", *train]


def training_job(run: AsyncMTLRun, namespace: str) -> dict[str, Any]:
    """The training Job, retried up to `cluster.backoffLimit` times; the trainer always starts with
    `--resume`, so a retried pod continues from the latest checkpoint and the control generation it had
    applied. A bad spec or data (exit 2) or a storage fault (3) fails the Job at once (`podFailurePolicy`),
    and a pod evicted or preempted (DisruptionTarget) does not count as a retry.

    With `cluster.nodes` > 1 it is an Indexed Job (completions = parallelism = nodes) whose pods are named
    through the headless `rendezvous_service` (`subdomain`); rank 0 runs in pod 0."""
    c = run.spec.cluster
    ports = [{"name": "metrics", "containerPort": run.spec.metrics.port or 9400}]
    if multi_node(run):
        ports.append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT})
    lab = labels(run.name, "train", c.labels)
    pod = _pod_spec(run, _container(run, "trainer", _trainer_args(run, namespace), training_resources(run), ports), "Never")
    if distributed(run):  # NCCL and DataLoader workers share memory through /dev/shm (64 MiB by default): as KubeRay
        pod["volumes"].append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
        pod["containers"][0]["volumeMounts"].append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    spec: dict[str, Any] = {
        "backoffLimit": c.backoff_limit,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                  "values": list(EXIT_NOT_RETRIED)}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
    }
    if multi_node(run):
        pod["subdomain"] = rendezvous_service_name(run.name)
        spec.update({"completionMode": "Indexed", "completions": c.nodes, "parallelism": c.nodes})
    spec["template"] = apply_overlay({"metadata": {"labels": lab}, "spec": pod}, c.pod_template)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": train_name(run.name), "labels": lab},
            "spec": spec}


def rendezvous_service(run: AsyncMTLRun) -> dict[str, Any]:
    """The headless Service of a multi-node trainer: DNS names for its pods, published before they are
    ready (the rendezvous happens before any rank serves metrics)."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": rendezvous_service_name(run.name), "labels": labels(run.name, "ranks")},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {RUN_LABEL: run.name, ROLE_LABEL: "train"},
                     "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": "rendezvous"}]}}


def metrics_service(run: AsyncMTLRun) -> dict[str, Any]:
    """A Service selecting the trainer's metrics port (for scraping and debugging): rank 0's pod, the only
    one serving metrics (pod 0 of a multi-node trainer)."""
    port = run.spec.metrics.port or 9400
    selector = {RUN_LABEL: run.name, ROLE_LABEL: "train"}
    if multi_node(run):
        selector[COMPLETION_INDEX_LABEL] = "0"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": metrics_service_name(run.name), "labels": labels(run.name, "metrics")},
            "spec": {"selector": selector, "ports": [{"name": "metrics", "port": port, "targetPort": "metrics"}]}}


def inference_job(run: AsyncMTLRun, namespace: str, task: str, step: int, shards: int, attempt: int = 1,
                  source_run: str | None = None) -> dict[str, Any]:
    """An Indexed Job: completion i computes shard i ($JOB_COMPLETION_INDEX) of `task`'s soft labels
    from the checkpoint of `source_run` (BAM's teacher) or of this run."""
    c = run.spec.cluster
    args = ["asyncmtl-infer", "--spec", f"{CONTROL_MOUNT}/{SPEC_KEY}", "--run", source_run or run.name, "--namespace", namespace,
            "--task", task, "--step", str(step), "--shards", str(shards), "--workdir", WORKDIR]
    lab = labels(run.name, "infer", {**c.labels, TASK_LABEL: task})
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": inference_name(run.name, task, step, attempt), "labels": lab},
            "spec": {"completionMode": "Indexed", "completions": shards,
                     "parallelism": min(shards, c.inference_parallelism), "backoffLimit": 2 * shards,
                     "template": apply_overlay({
                         "metadata": {"labels": lab},
                         "spec": _pod_spec(run, _container(run, "infer", args, c.inference_resources or c.resources),
                                           "Never")}, c.pod_template)}}
