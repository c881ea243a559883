"""The dashboard and the alerts, proven on a real Prometheus (2.42): scraped with the configuration
prometheus-operator generates from our chart's PodMonitor and ServiceMonitor (its target labels and
`honorLabels`), from our real exporters (the trainer's in the run's namespace, the operator's in the
release namespace), every dashboard panel's PromQL and every PrometheusRule expression returns series
for a run in a namespace that is not the operator's."""
from __future__ import annotations

import json
import re
import time

import pytest

from tests.operator.conftest import FakeTrainer
from tests.operator.prometheus_server import PrometheusServer, free_port

pytestmark = pytest.mark.slow  # processes, servers or training: `make test-fast` skips it

RELEASE_NS = "asyncmtl-system"
RUN_NS = "team-x"
RUN = "far"
MONITORING = {"monitoring": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True},
                             "prometheusRules": {"enabled": True}}}


def _chart(values: dict) -> list[dict]:
    chart = pytest.importorskip("tests.unit.test_chart")
    return chart.render(values)


def scrape_config(monitor: dict, target: str, discovered: dict[str, str]) -> dict:
    """The scrape job prometheus-operator (v0.7x) generates for the first endpoint of a PodMonitor or
    ServiceMonitor, with Kubernetes service discovery replaced by one static target carrying the
    `__meta_kubernetes_*` labels discovery would give it; the operator's standard relabelling sets the
    target labels `namespace`, `pod`, `container`, `service`, `job` and `endpoint`, and the endpoint's
    `honorLabels` becomes `honor_labels` (false unless set)."""
    kind, meta = monitor["kind"], monitor["metadata"]
    endpoint = (monitor["spec"].get("podMetricsEndpoints") or monitor["spec"].get("endpoints"))[0]
    relabel = [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    if kind == "PodMonitor":
        job = {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"}
    else:
        relabel.append({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"})
        job = {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"}
    relabel += [job, {"target_label": "endpoint", "replacement": endpoint["port"]}]
    for r in endpoint.get("relabelings") or []:
        relabel.append({re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k): v for k, v in r.items()})
    prefix = "podMonitor" if kind == "PodMonitor" else "serviceMonitor"
    return {"job_name": f"{prefix}/{meta['namespace']}/{meta['name']}/0", "scrape_interval": "500ms",
            "honor_labels": bool(endpoint.get("honorLabels", False)),
            "static_configs": [{"targets": [target], "labels": discovered}], "relabel_configs": relabel}


def panel_queries() -> list[str]:
    from tests.unit.test_dashboard import DASHBOARD, expressions

    return expressions(json.loads(DASHBOARD.read_text()))


def rule_expressions(objects: list[dict]) -> list[tuple[str, str]]:
    (rules,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    return [(r["alert"], r["expr"]) for g in rules["spec"]["groups"] for r in g["rules"]]


def _resolve(query: str) -> str:
    return (query.replace("$namespace", RUN_NS).replace("$run", RUN).replace("$task", ".*"))


def _returns_series(prom: PrometheusServer, query: str) -> bool:
    m = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    if m:  # a Grafana variable: the label's values among the series the selector matches
        return any(s.get(m.group(2)) for s in prom.series(_resolve(m.group(1))))
    return bool(prom.query(_resolve(query)))


@pytest.fixture()
def monitored(prometheus_binary, tmp_path, request):
    """The real exporters behind a Prometheus configured from the chart's monitors; yields
    (prometheus, trainer, operator metrics, rendered objects)."""
    from asyncmtl_operator.operator_metrics import OperatorMetrics

    honor = getattr(request, "param", True)
    objects = _chart(MONITORING)
    monitors = {o["kind"]: o for o in objects if o["kind"] in ("PodMonitor", "ServiceMonitor")}
    if not honor:  # the ServiceMonitor as the chart rendered it before honorLabels
        for e in monitors["ServiceMonitor"]["spec"]["endpoints"]:
            e.pop("honorLabels", None)
    trainer = FakeTrainer(RUN, ["a", "b"])
    op = OperatorMetrics()
    op_port = op.serve(free_port(), "127.0.0.1")
    configs = [
        scrape_config(monitors["PodMonitor"], trainer.target, {
            "__meta_kubernetes_namespace": RUN_NS, "__meta_kubernetes_pod_name": f"{RUN}-train-x7k2p",
            "__meta_kubernetes_pod_container_name": "trainer"}),
        scrape_config(monitors["ServiceMonitor"], f"127.0.0.1:{op_port}", {
            "__meta_kubernetes_namespace": RELEASE_NS, "__meta_kubernetes_pod_name": "asyncmtl-6d9f-abcde",
            "__meta_kubernetes_pod_container_name": "operator", "__meta_kubernetes_service_name": "asyncmtl"}),
    ]
    (tmp_path / "prom").mkdir()
    prom = PrometheusServer(prometheus_binary, tmp_path / "prom", [], {}, scrape_configs=configs).start()
    try:
        yield prom, trainer, op, objects
    finally:
        prom.stop()
        trainer.close()
        op.close()


def _drive(prom: PrometheusServer, trainer: FakeTrainer, op) -> None:
    """A run mid-flight: task a validated, converged, rewound and switched to KD while b has never been
    validated (stalled); soft-label inference running; the last signal not yet acknowledged; the
    trainer's metrics stale to the operator; decision and acknowledgement latencies observed."""
    for task, phase in (("a", "Training"), ("b", "Training")):
        op.set_task_phase(RUN_NS, RUN, task, phase)
    op.metrics_available.labels(RUN_NS, RUN).set(0)
    op.signal_pending.labels(RUN_NS, RUN).set(42)
    op.set_inference(RUN_NS, RUN, "a", 4, {"succeeded": 1, "active": 3})
    trainer.exporter.examples_per_second.labels(RUN).set(120.0)
    trainer.exporter.set_mode("a", "Training")
    trainer.exporter.train_loss.labels(RUN, "a", "supervised").set(0.7)
    trainer.ack(0, 0)
    trainer.validate(100, {"a": 50.0})
    prom.wait_for('count_over_time(asyncmtl_validations_total{task="b"}[1m]) >= 3')
    for _ in range(2):  # latencies observed between scrapes, so their rate is positive
        op.sample_to_decision.observe(2.0)
        op.decision_to_ack.observe(7.0)
        time.sleep(0.6)
    trainer.validate(200, {"a": 49.0})
    trainer.rewind(100, {"a": 50.0})
    trainer.exporter.set_mode("a", "KD")
    trainer.exporter.train_loss.labels(RUN, "a", "kd").set(0.3)
    trainer.ack(1, 200)
    op.set_task_phase(RUN_NS, RUN, "a", "KD")
    prom.wait_for('asyncmtl_task_mode{mode="KD"} == 1 and on (namespace, run) asyncmtl_rewinds_total > 0')
    time.sleep(1.5)  # a few more scrapes after the changes


def test_every_panel_and_rule_returns_series_for_a_run_in_another_namespace(monitored):
    prom, trainer, op, objects = monitored
    _drive(prom, trainer, op)
    queries = panel_queries() + [expr for _, expr in rule_expressions(objects)]
    assert len(queries) >= 17 + 3
    empty = [q for q in queries if not _returns_series(prom, q)]
    assert empty == [], f"no series for: {empty}"
    # the operator's series kept the run's namespace (not exported_namespace) and joined the trainer's
    (row,) = prom.query('asyncmtl_operator_task_phase{phase="KD"} == 1')
    assert row["metric"]["namespace"] == RUN_NS and "exported_namespace" not in row["metric"]
    stalled = dict(rule_expressions(objects))["AsyncMTLTaskStalled"]
    assert [r["metric"]["task"] for r in prom.query(stalled)] == ["b"]


@pytest.mark.parametrize("monitored", [False], indirect=True, ids=["without-honorLabels"])
def test_without_honor_labels_the_operators_panels_and_the_stalled_alert_are_empty(monitored):
    """The defect the ServiceMonitor's honorLabels fixed, as this test would have seen it."""
    prom, trainer, op, objects = monitored
    _drive(prom, trainer, op)
    (row,) = prom.query('asyncmtl_operator_task_phase{phase="KD"} == 1')
    assert row["metric"]["namespace"] == RELEASE_NS and row["metric"]["exported_namespace"] == RUN_NS
    stalled = dict(rule_expressions(objects))["AsyncMTLTaskStalled"]
    assert not _returns_series(prom, stalled)
    assert not _returns_series(prom, next(q for q in panel_queries() if "asyncmtl_operator_task_phase" in q))
