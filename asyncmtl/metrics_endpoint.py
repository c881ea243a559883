"""Serving a prometheus-client registry over HTTP (shared by the trainer's exporter and the operator)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    """One registry's /metrics endpoint in a daemon thread (prometheus-client's `start_http_server`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start serving; returns the bound port (`port` 0 binds a free one)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
