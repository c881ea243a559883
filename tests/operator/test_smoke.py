"""The operator creates a run's children with owner references (emulated API server over HTTP)."""
from __future__ import annotations

from kopf.testing import KopfRunner

from tests.operator.conftest import wait_until
from tests.operator.helpers import apply_run, get_obj, make_run, operator_args


def test_apply_creates_children(cluster, kube, s3, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")  # nothing listens: MetricsAvailable=False
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    endpoint, _ = s3
    with KopfRunner(operator_args(), timeout=60) as runner:
        cr = apply_run(kube, make_run("smoke", endpoint=endpoint))
        cm = wait_until(lambda: get_obj(kube, "ConfigMap", "smoke-control"), what="ConfigMap")
        job = wait_until(lambda: get_obj(kube, "Job", "smoke-train"), what="training Job")
        svc = wait_until(lambda: get_obj(kube, "Service", "smoke-metrics"), what="Service")
    assert runner.exit_code == 0, runner.output
    for obj in (cm, job, svc):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == cr["metadata"]["uid"] and ref["kind"] == "AsyncMTLRun" and ref["controller"] is True
