"""The lifecycle on a real cluster (kind, k3d, ...). Skipped unless these are set:

- KUBECONFIG: the cluster (a throwaway one: the test creates a namespace and the CRD);
- ASYNCMTL_E2E_IMAGE: a trainer image the cluster can run (CPU is fine), e.g. built from
  trainer_image/Dockerfile and `kind load docker-image`-ed;
- ASYNCMTL_E2E_PROMETHEUS_URL: a Prometheus that scrapes the trainer pods (reachable from here,
  e.g. `kubectl port-forward`); the test creates a PodMonitor when its API is installed;
- ASYNCMTL_E2E_S3_ENDPOINT (in-cluster URL), ASYNCMTL_E2E_S3_LOCAL_ENDPOINT (from here),
  ASYNCMTL_E2E_S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: an S3-compatible store
  (e.g. MinIO) with an existing bucket.
The operator runs here under KopfRunner. See README, "On a cluster".
"""
from __future__ import annotations

import os
import time
import uuid

import pytest

from tests.conftest import builtin_task, run_doc

pytestmark = pytest.mark.e2e
REQUIRED = ("KUBECONFIG", "ASYNCMTL_E2E_IMAGE", "ASYNCMTL_E2E_PROMETHEUS_URL", "ASYNCMTL_E2E_S3_ENDPOINT",
            "ASYNCMTL_E2E_S3_LOCAL_ENDPOINT", "ASYNCMTL_E2E_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
missing = [v for v in REQUIRED if not os.environ.get(v)]
if missing:
    pytest.skip(f"real-cluster e2e: set {', '.join(missing)}", allow_module_level=True)


def test_lifecycle_on_a_real_cluster(monkeypatch):
    import kubernetes
    from kopf.testing import KopfRunner

    from asyncmtl.crd import GROUP, PLURAL, VERSION

    from tests.e2e.cluster import connect_and_install_crd

    api = connect_and_install_crd()
    core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
    ns = f"asyncmtl-e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        core.create_namespaced_secret(ns, {"metadata": {"name": "s3"}, "stringData": {
            "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}})
        try:
            custom.create_namespaced_custom_object("monitoring.coreos.com", "v1", ns, "podmonitors", {
                "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "asyncmtl-trainers"},
                "spec": {"selector": {"matchLabels": {"asyncmtl.dev/role": "train"}},
                         "podMetricsEndpoints": [{"port": "metrics", "interval": "5s"}]}})
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
        tasks = [builtin_task(n, patience=2) for n in ("sentiment", "sarcasm")]
        for t in tasks:
            t["data"].update(maxTrainExamples=200, maxValidationExamples=60, maxTestExamples=60)
        doc = run_doc(tasks, name="e2e", setting="joint",
                      training={"batchSize": 8, "learningRate": 1e-4, "maxSteps": 400, "validationInterval": 20, "device": "cpu"},
                      storage={"uri": f"s3://{os.environ['ASYNCMTL_E2E_S3_BUCKET']}/e2e",
                               "endpointUrl": os.environ["ASYNCMTL_E2E_S3_ENDPOINT"], "credentialsSecret": "s3"},
                      cluster={"image": os.environ["ASYNCMTL_E2E_IMAGE"], "imagePullPolicy": "IfNotPresent",
                               "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}})
        doc["spec"]["model"]["maxLength"] = 16
        monkeypatch.setenv("PROMETHEUS_URL", os.environ["ASYNCMTL_E2E_PROMETHEUS_URL"])
        monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
        monkeypatch.setenv("AWS_ENDPOINT_URL", os.environ["ASYNCMTL_E2E_S3_LOCAL_ENDPOINT"])
        with KopfRunner(["run", "-m", "asyncmtl_operator.handlers", "--namespace", ns, "--standalone"], timeout=1800):
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)
            deadline = time.monotonic() + 1500
            status: dict = {}
            while time.monotonic() < deadline and status.get("phase") not in ("Succeeded", "Failed"):
                time.sleep(5)
                status = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "e2e").get("status") or {}
        assert status.get("phase") == "Succeeded", status
        assert status["converged"] == "2/2"
        assert any(t["phase"] == "KD" for t in status["tasks"].values())
    finally:
        core.delete_namespace(ns)
