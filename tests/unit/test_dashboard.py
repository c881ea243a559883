"""The Grafana dashboard is valid dashboard JSON and queries only metrics and labels that the trainer
and the operator really export (checked against their prometheus-client registries)."""
from __future__ import annotations

import json
import re

from tests.conftest import REPO

DASHBOARD = REPO / "helm" / "asyncmtl-operator" / "dashboards" / "asyncmtl.json"
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "le"}  # added by scraping / histograms
PROMQL_WORDS = {"by", "on", "without", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
                "sum", "max", "min", "avg", "count", "rate", "increase", "delta", "changes", "histogram_quantile",
                "label_values", "bool"}


def exported() -> dict[str, set[str]]:
    from asyncmtl_operator.operator_metrics import OperatorMetrics
    from asyncmtl_trainer.exporter import TrainerExporter

    ex = TrainerExporter("r", ["t"])
    ex.train_loss.labels("r", "t", "kd").set(1)
    ex.last_value.labels("r", "t").set(1)
    ex.best_value.labels("r", "t").set(1)
    ex.last_step.labels("r", "t").set(1)
    ex.best_step.labels("r", "t").set(1)
    ex.global_step.labels("r").set(1)
    ex.examples_per_second.labels("r").set(1)
    ex.control_generation.labels("r").set(1)
    ex.control_step.labels("r").set(1)
    ex.set_mode("t", "KD")
    op = OperatorMetrics()
    op.set_task_phase("n", "r", "t", "KD")
    op.set_inference("n", "r", "t", 2, {"succeeded": 1})
    op.metrics_available.labels("n", "r").set(1)
    op.signal_pending.labels("n", "r").set(0)
    op.sample_to_decision.observe(1)
    op.decision_to_ack.observe(1)
    op.reconciles.labels("ok").inc()
    op.errors.labels("x").inc()
    names: dict[str, set[str]] = {}
    for registry in (ex.registry, op.registry):
        for fam in registry.collect():
            for s in fam.samples:
                names.setdefault(s.name, set()).update(s.labels)
    return names


def expressions(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                out.append(v)
            elif k == "query" and isinstance(v, (str, dict)):
                out.append(v if isinstance(v, str) else v.get("query", ""))
            else:
                out.extend(expressions(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(expressions(v))
    return [e for e in out if e and e != "prometheus"]


def test_dashboard_is_valid_grafana_json():
    d = json.loads(DASHBOARD.read_text())
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 30 and d["uid"] and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for p in d["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["targets"] and p["type"]
    assert {v["name"] for v in d["templating"]["list"]} >= {"run", "task"}
    assert len(d["annotations"]["list"]) >= 2


def test_every_expression_uses_exported_metrics_and_labels():
    names = exported()
    exprs = expressions(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 10
    used_metrics = set()
    for e in exprs:
        for metric in re.findall(r"\b(asyncmtl_[a-z_]+)\b", e):
            assert metric in names, f"{metric} (in {e!r}) is not exported"
            used_metrics.add(metric)
        for labels in re.findall(r"\{([^}]*)\}", e):
            for label in re.findall(r"([a-zA-Z_]+)\s*(?:=~|!=|!~|=)", labels):
                metrics_here = re.findall(r"\b(asyncmtl_[a-z_]+)\s*\{" + re.escape(labels), e)
                for m in metrics_here:
                    assert label in names[m] | TARGET_LABELS, f"label {label} not on {m} (in {e!r})"
        for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", e):
            for label in (x.strip() for x in group.split(",")):
                assert any(label in ls for ls in names.values()) or label in TARGET_LABELS, f"{label} in {e!r}"
        for legend_label in re.findall(r"\{\{(\w+)\}\}", e):
            assert any(legend_label in ls for ls in names.values()) or legend_label in TARGET_LABELS
    # the panels the issue asks for are all there
    for m in ("asyncmtl_validation_last_value", "asyncmtl_operator_task_phase", "asyncmtl_train_loss",
              "asyncmtl_examples_per_second", "asyncmtl_global_step", "asyncmtl_operator_inference_pods",
              "asyncmtl_rewinds_total", "asyncmtl_task_mode"):
        assert m in used_metrics, m


def test_phase_and_mode_values_in_queries_are_the_lifecycle_s_words():
    """`mode=` (asyncmtl_task_mode, the trainer's) and `phase=` (asyncmtl_operator_task_phase) in the dashboard
    and the alerts are TaskPhase values: a renamed phase (Distilling -> AwaitingSoftLabels) leaves none behind."""
    from asyncmtl.lifecycle import TaskPhase

    rules = REPO / "helm" / "asyncmtl-operator" / "templates" / "prometheusrule.yaml"
    texts = [DASHBOARD.read_text(), rules.read_text()]
    values = [v for t in texts for v in re.findall(r'\b(?:mode|phase)\s*=~?\s*\\?"([^"\\]+)\\?"', t)]
    assert {"KD", "Training"} <= set(values)
    assert set(values) <= {p.value for p in TaskPhase}, values
    assert not any("Distilling" in t for t in texts)
