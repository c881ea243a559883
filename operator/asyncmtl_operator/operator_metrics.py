"""The operator's own Prometheus metrics (its own registry; served on `$ASYNCMTL_OPERATOR_METRICS_PORT`)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class OperatorMetrics:
    """reconcile counts and errors; sample-to-decision and decision-to-acknowledgement latencies (seconds)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self._server = None

    def serve(self, port: int) -> int:
        server, _ = start_http_server(port, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
