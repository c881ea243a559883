"""A run with cluster.nodes: 2 applied to the operator: it creates the Indexed training Job and the headless
rendezvous Service through the API server (which validates both and dry-runs the Job first)."""
from __future__ import annotations

import pytest
from kopf.testing import KopfRunner

from tests.operator.conftest import wait_until
from tests.operator.helpers import apply_run, get_obj, get_run, make_run, operator_args

pytestmark = pytest.mark.slow  # processes, servers or training: `make test-fast` skips it


def test_a_two_node_run_gets_an_indexed_job_and_a_headless_service_whose_dns_names_its_rendezvous(
        cluster, kube, s3, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
    doc = make_run("mn", endpoint=s3[0], cluster={"nodes": 2, "gpusPerNode": 2})
    with KopfRunner(operator_args(), timeout=60) as runner:
        apply_run(kube, doc)
        job = wait_until(lambda: get_obj(kube, "Job", "mn-train"), what="the training Job")
        svc = get_obj(kube, "Service", "mn-ranks")
        metrics = get_obj(kube, "Service", "mn-metrics")
        status = wait_until(lambda: get_run(kube, "mn").get("status"), what="status")
    assert runner.exit_code == 0, runner.output
    assert status.get("phase") != "Failed", status
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "mn-ranks" and svc["spec"]["clusterIP"] == "None"
    args = pod["containers"][0]["args"]
    assert args[0] == "asyncmtl-launch" and "--rdzv-endpoint=mn-train-0.mn-ranks.default.svc:29400" in args
    assert "--nnodes=2" in args and "--nproc-per-node=2" in args
    assert str(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == "2"
    assert metrics["spec"]["selector"]["batch.kubernetes.io/job-completion-index"] == "0"
    owners = {o["kind"] for o in svc["metadata"].get("ownerReferences", [])}
    assert owners == {"AsyncMTLRun"}  # garbage-collected with the run
