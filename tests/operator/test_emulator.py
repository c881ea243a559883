"""The emulator additions the operator tests rely on behave like a real API server."""
from __future__ import annotations

import kubernetes

from tests.operator.helpers import NS


def test_server_set_metadata(kube):
    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "x"}, "data": {"k": "1"}})
    cm = kube.sanitize_for_serialization(core.read_namespaced_config_map("x", NS))
    meta = cm["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["namespace"] == NS and meta["generation"] == 1
    rv = int(meta["resourceVersion"])
    core.patch_namespaced_config_map("x", NS, {"data": {"k": "2"}})
    meta2 = kube.sanitize_for_serialization(core.read_namespaced_config_map("x", NS))["metadata"]
    assert int(meta2["resourceVersion"]) > rv and meta2["uid"] == meta["uid"]


def test_generation_bumps_on_spec_changes_only(kube):
    batch = kubernetes.client.BatchV1Api(kube)
    batch.create_namespaced_job(NS, {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": []}}}})
    batch.patch_namespaced_job_status("j", NS, {"status": {"succeeded": 1}})
    assert batch.read_namespaced_job("j", NS).metadata.generation == 1
    batch.patch_namespaced_job("j", NS, {"spec": {"parallelism": 2}})
    assert batch.read_namespaced_job("j", NS).metadata.generation == 2


def test_generate_name(kube):
    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespaced_config_map(NS, {"metadata": {"generateName": "ev-"}})
    core.create_namespaced_config_map(NS, {"metadata": {"generateName": "ev-"}})
    names = [c.metadata.name for c in core.list_namespaced_config_map(NS).items]
    assert len(names) == 2 and len(set(names)) == 2 and all(n.startswith("ev-") for n in names)
