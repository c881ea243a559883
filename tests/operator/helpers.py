"""Small helpers for operator tests: run documents and reading objects back over HTTP."""
from __future__ import annotations

import json

import kubernetes

from asyncmtl.crd import GROUP, PLURAL, VERSION
from tests.conftest import builtin_task, run_doc

NS = "default"


def make_run(name: str, *, endpoint: str, tasks=("a", "b"), patience: int = 2, **spec) -> dict:
    ts = [builtin_task("sentiment", patience=patience) | {"name": t} for t in tasks]
    fields = {"setting": "joint", "training": {"validationInterval": 100, "maxSteps": 5000},
              "storage": {"uri": "s3://runs/exp", "endpointUrl": endpoint}, "distillation": {"shards": 2}}
    fields.update(spec)
    doc = run_doc(ts, name=name, **fields)
    doc["metadata"]["namespace"] = NS
    return doc


def apply_run(api: kubernetes.client.ApiClient, doc: dict) -> dict:
    kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, doc)
    return get_run(api, doc["metadata"]["name"])


def get_run(api, name: str) -> dict:
    return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def get_obj(api, kind: str, name: str) -> dict:
    core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
    fn = {"ConfigMap": core.read_namespaced_config_map, "Service": core.read_namespaced_service,
          "Job": batch.read_namespaced_job}[kind]
    return api.sanitize_for_serialization(fn(name, NS))


def exists(api, kind: str, name: str) -> bool:
    try:
        get_obj(api, kind, name)
        return True
    except kubernetes.client.exceptions.ApiException as exc:
        if exc.status == 404:
            return False
        raise


def control(api, run: str) -> dict:
    return json.loads(get_obj(api, "ConfigMap", f"{run}-control")["data"]["control.json"])


def signals(api, run: str, kind: str) -> list[dict]:
    return [s for s in control(api, run)["signals"] if s["kind"] == kind]


def complete_job(api, name: str, succeeded: int) -> None:
    """What the Job controller would do (the emulator runs no controllers)."""
    kubernetes.client.BatchV1Api(api).patch_namespaced_job_status(name, NS, {"status": {
        "succeeded": succeeded, "conditions": [{"type": "Complete", "status": "True"}]}})


def fail_job(api, name: str, reason: str = "BackoffLimitExceeded") -> None:
    kubernetes.client.BatchV1Api(api).patch_namespaced_job_status(name, NS, {"status": {
        "failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": reason,
                                     "message": "Job has reached the specified backoff limit"}]}})


def events(api, name: str) -> list[dict]:
    items = api.sanitize_for_serialization(kubernetes.client.CoreV1Api(api).list_namespaced_event(NS)).get("items", [])
    return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]


def operator_args() -> list[str]:
    return ["run", "-m", "asyncmtl_operator.handlers", "--namespace", NS, "--standalone"]


TRAIN_SIZE = 10


def write_soft_labels(endpoint: str, run: str, task: str, step: int, shards: int) -> None:
    """What an inference Job's pods would write for `run`'s checkpoint: one shard per completion index."""
    import torch

    from asyncmtl.storage_factory import open_run_storage
    from asyncmtl_trainer.softlabels import write_shard

    storage = open_run_storage("s3://runs/exp", namespace=NS, run=run, endpoint_url=endpoint)
    ids = torch.arange(TRAIN_SIZE)
    for i, part in enumerate(ids.chunk(shards)):
        write_shard(storage, task, step, i, shards, part, torch.randn(len(part), 2), total=TRAIN_SIZE)
