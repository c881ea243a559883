"""The operator's own Prometheus metrics (its own registry; served on `$ASYNCMTL_OPERATOR_METRICS_PORT`)."""
from __future__ import annotations

from asyncmtl.lifecycle import TaskPhase
from asyncmtl.metrics_endpoint import MetricsEndpoint
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TASK_PHASES = tuple(TaskPhase)  # asyncmtl.lifecycle: the one vocabulary of core, trainer and dashboard
INFERENCE_STATES = ("succeeded", "active", "failed")

LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class OperatorMetrics(MetricsEndpoint):
    """reconcile counts and errors; sample-to-decision and decision-to-acknowledgement latencies (seconds)."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        r = self.registry
        self.reconciles = Counter("asyncmtl_operator_reconciles", "Reconcile calls", ["result"], registry=r)
        self.errors = Counter("asyncmtl_operator_reconcile_errors", "Reconcile calls that raised", ["kind"], registry=r)
        self.sample_to_decision = Histogram(
            "asyncmtl_operator_sample_to_decision_seconds",
            "From the deciding validation point becoming visible in Prometheus to the convergence decision",
            buckets=LATENCY_BUCKETS, registry=r)
        self.decision_to_ack = Histogram(
            "asyncmtl_operator_decision_to_ack_seconds",
            "From writing a control signal to the trainer acknowledging it", buckets=LATENCY_BUCKETS, registry=r)
        self.task_phase = Gauge("asyncmtl_operator_task_phase", "1 for each task's current phase",
                                ["namespace", "run", "task", "phase"], registry=r)
        self.inference_pods = Gauge("asyncmtl_operator_inference_pods", "Soft-label inference Job pods by state",
                                    ["namespace", "run", "task", "state"], registry=r)
        self.inference_completions = Gauge("asyncmtl_operator_inference_completions",
                                           "Completions (shards) the inference Job needs", ["namespace", "run", "task"],
                                           registry=r)
        self.metrics_available = Gauge("asyncmtl_operator_metrics_available",
                                       "1 when the run's trainer metrics were usable at the last reconcile",
                                       ["namespace", "run"], registry=r)
        self.signal_pending = Gauge("asyncmtl_operator_signal_pending_seconds",
                                    "Seconds the latest control signal has waited for acknowledgement (0: acknowledged)",
                                    ["namespace", "run"], registry=r)

    def forget_run(self, namespace: str, run: str) -> None:
        """Remove every series of one run (it ended, or was deleted): stale gauges keep alerts firing.
        Uses prometheus-client's `remove_by_labels` (partial label match)."""
        for g in (self.task_phase, self.inference_pods, self.inference_completions, self.metrics_available,
                  self.signal_pending):
            g.remove_by_labels({"namespace": namespace, "run": run})

    def set_task_phase(self, namespace: str, run: str, task: str, phase: str) -> None:
        for p in TASK_PHASES:
            self.task_phase.labels(namespace, run, task, p).set(1.0 if p == phase else 0.0)

    def set_inference(self, namespace: str, run: str, task: str, completions: int, status: dict) -> None:
        self.inference_completions.labels(namespace, run, task).set(completions)
        for state in INFERENCE_STATES:
            self.inference_pods.labels(namespace, run, task, state).set(float(status.get(state) or 0))

