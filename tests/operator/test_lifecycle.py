"""The whole method on an (emulated) cluster: apply -> children -> plateau -> converged signal ->
Indexed inference Job -> shards in S3 -> softLabelsReady -> ... -> stop -> Succeeded.

Real components: the operator under KopfRunner, kmock's emulator over HTTP, a Prometheus server
scraping the trainer's real exporter (driven here like a trainer), moto's S3 server over HTTP.
"""
from __future__ import annotations

import re
import time
import urllib.request

import pytest
from kopf.testing import KopfRunner
from prometheus_client.parser import text_string_to_metric_families

from tests.operator.conftest import TIMER, FakeTrainer, start_prometheus, wait_until
from tests.operator.prometheus_server import free_port
from tests.operator.helpers import (apply_run, complete_job, control, events, exists, get_obj, get_run,
                                    make_run, operator_args, signals, write_soft_labels)

pytestmark = pytest.mark.slow  # processes, servers or training: `make test-fast` skips it

def printer_columns(obj: dict) -> dict:
    return {"Phase": obj["status"]["phase"], "Setting": obj["spec"]["setting"],
            "Converged": obj["status"]["converged"], "Step": obj["status"]["step"]}


def test_lifecycle(cluster, kube, s3, prometheus_binary, tmp_path, monkeypatch, caplog):
    endpoint, _ = s3
    trainer = FakeTrainer("life", ["a", "b"])
    prom = start_prometheus(prometheus_binary, tmp_path / "prom", [trainer.target])
    monkeypatch.setenv("PROMETHEUS_URL", prom.url)
    op_port = free_port()
    monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", str(op_port))
    try:
        with KopfRunner(operator_args(), timeout=120) as runner:
            apply_run(kube, make_run("life", endpoint=endpoint))

            # children with the expected fields
            cm = wait_until(lambda: get_obj(kube, "ConfigMap", "life-control"), what="control ConfigMap")
            job = wait_until(lambda: get_obj(kube, "Job", "life-train"), what="training Job")
            svc = wait_until(lambda: get_obj(kube, "Service", "life-metrics"), what="metrics Service")
            pod = job["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            assert container["args"][:2] == ["asyncmtl-train", "--spec"] and "--resume" in container["args"]
            assert {"name": "control", "mountPath": "/etc/asyncmtl/control", "readOnly": True} in container["volumeMounts"]
            assert not any("subPath" in m for m in container["volumeMounts"])  # a subPath mount never updates
            assert {"name": "control", "configMap": {"name": "life-control"}} in pod["volumes"]
            assert container["ports"][0]["containerPort"] == 9400
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert svc["spec"]["selector"] == {"asyncmtl.dev/run": "life", "asyncmtl.dev/role": "train"}
            assert control(kube, "life")["generation"] == 0 and "run.yaml" in cm["data"]
            wait_until(lambda: get_run(kube, "life").get("status", {}).get("phase") == "Running", what="Running")

            # task a rises then plateaus (best at 200); b keeps improving
            a_vals = {100: 50.0, 200: 60.0, 300: 59.0, 400: 58.0}
            for step in (100, 200, 300):
                trainer.validate(step, {"a": a_vals[step], "b": step / 10})
                prom.wait_for(f'asyncmtl_validation_last_step{{task="a"}} == {step}')
                time.sleep(TIMER)
            assert not signals(kube, "life", "converged")
            trainer.validate(400, {"a": a_vals[400], "b": 40.0})
            prom.wait_for('asyncmtl_validation_last_step{task="a"} == 400')
            visible = time.monotonic()
            conv = wait_until(lambda: signals(kube, "life", "converged"), timeout=20, interval=0.05,
                              what="converged signal")
            reaction = time.monotonic() - visible
            assert reaction <= 2 * TIMER + 0.5, f"reacted {reaction:.2f}s after the point became visible"
            assert [(s["task"], s["bestStep"], s["rewindTo"], s["generation"]) for s in conv] == [("a", 200, 200, 1)]
            assert re.search(r"task a converged: decided [\d.]+s after its deciding point \(step 400\)", caplog.text)

            # an Indexed inference Job for a's best checkpoint
            infer = wait_until(lambda: get_obj(kube, "Job", "life-infer-a-200"), what="inference Job")
            assert infer["spec"]["completionMode"] == "Indexed" and infer["spec"]["completions"] == 2
            assert infer["metadata"]["ownerReferences"][0]["name"] == "life"
            status = get_run(kube, "life")["status"]
            assert status["tasks"]["a"]["phase"] == "AwaitingSoftLabels" and status["tasks"]["a"]["convergedAtStep"] == 400

            # the trainer rewinds and acknowledges; the Job's pods write their shards; the Job completes
            trainer.rewind(200, {"a": 60.0, "b": 20.0})
            trainer.ack(1, 200)
            write_soft_labels(endpoint, "life", "a", 200, 2)
            complete_job(kube, "life-infer-a-200", succeeded=2)
            ready = wait_until(lambda: signals(kube, "life", "softLabelsReady"), what="softLabelsReady")
            assert ready[0]["task"] == "a" and ready[0]["uri"] == "s3://runs/exp/default/life/softlabels/a/step-00000200/manifest.json"
            trainer.ack(2, 200)
            wait_until(lambda: get_run(kube, "life")["status"]["tasks"]["a"]["phase"] == "KD", what="a in KD")
            cols = printer_columns(get_run(kube, "life"))
            assert cols == {"Phase": "Running", "Setting": "joint", "Converged": "1/2", "Step": 200}

            # b plateaus after the rewind: last task -> converged + stop in one generation
            for step, v in ((300, 30.0), (400, 45.0), (500, 44.0), (600, 43.0)):
                trainer.validate(step, {"a": 60.0, "b": v})
                prom.wait_for(f'asyncmtl_validation_last_step{{task="b"}} == {step}')
                time.sleep(TIMER)
            stop = wait_until(lambda: signals(kube, "life", "stop"), what="stop signal")
            last_conv = signals(kube, "life", "converged")[-1]
            assert last_conv["task"] == "b" and last_conv["bestStep"] == 400 and stop[0]["generation"] == last_conv["generation"] == 3
            time.sleep(2 * TIMER + 0.5)
            assert not exists(kube, "Job", "life-infer-b-400")  # the last task needs no soft labels

            # the trainer applies it, runs the final evaluation and its Job completes
            trainer.rewind(400, {"a": 60.0, "b": 45.0})
            trainer.ack(3, 400)
            wait_until(lambda: get_run(kube, "life")["status"]["operatorState"]["acknowledgedGeneration"] == 3, what="ack 3")
            complete_job(kube, "life-train", succeeded=1)
            final = wait_until(lambda: (get_run(kube, "life")["status"].get("phase") == "Succeeded") and get_run(kube, "life"),
                               what="Succeeded")
            # the operator's own metrics: reconciles, and both latency histograms observed
            text = urllib.request.urlopen(f"http://127.0.0.1:{op_port}/metrics", timeout=5).read().decode()
            samples = {s.name + str(sorted(s.labels.items())): s.value
                       for fam in text_string_to_metric_families(text) for s in fam.samples}
            assert samples["asyncmtl_operator_reconciles_total[('result', 'ok')]"] >= 5
            assert samples["asyncmtl_operator_sample_to_decision_seconds_count[]"] == 2  # a, then b
            assert samples["asyncmtl_operator_decision_to_ack_seconds_count[]"] == 3
            # a finished run leaves no series behind (stale gauges keep alerts firing)
            assert not [k for k in samples if "('run', 'life')" in k], [k for k in samples if "'life'" in k]
        assert runner.exit_code == 0, runner.output
        st = final["status"]
        assert printer_columns(final) == {"Phase": "Succeeded", "Setting": "joint", "Converged": "2/2", "Step": 400}
        assert st["tasks"]["a"]["phase"] == "KD" and st["tasks"]["b"]["phase"] == "Converged"
        assert st["tasks"]["a"]["softLabelsUri"].endswith("/softlabels/a/step-00000200/manifest.json")
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Ready"]["reason"] == "Succeeded" and conds["SignalAcknowledged"]["status"] == "True"
        assert conds["MetricsAvailable"]["status"] == "True" and conds["Degraded"]["status"] == "False"
        assert conds["Complete"]["status"] == "True" and "Failed" not in conds  # kubectl wait --for=condition=Complete
        assert all(c["observedGeneration"] == 1 for c in st["conditions"])  # metav1.Condition
        assert st["observedGeneration"] == 1
        reasons = [e["reason"] for e in events(kube, "life")]
        for r in ("Started", "TaskConverged", "InferenceLaunched", "SoftLabelsReady", "Stopping", "Succeeded"):
            assert r in reasons, reasons
        assert len(get_obj(kube, "ConfigMap", "life-control")["metadata"]["ownerReferences"]) == 1
    finally:
        prom.stop()
        trainer.close()
