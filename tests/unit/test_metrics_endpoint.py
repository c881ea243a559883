"""asyncmtl.metrics_endpoint: one registry's /metrics over HTTP in a daemon thread; port 0 binds a free
port, which `serve` returns; `close` stops serving (and may be called again)."""
from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from asyncmtl.metrics_endpoint import MetricsEndpoint


def _scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        body = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(body)}


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture()
def endpoint():
    registry = CollectorRegistry()
    e = MetricsEndpoint(registry)
    yield e
    e.close()


def test_serve_on_port_0_binds_a_free_port_and_serves_the_registry_s_current_values(endpoint):
    g = Gauge("t_value", "a gauge", ["run"], registry=endpoint.registry)
    c = Counter("t_events", "a counter", ["run"], registry=endpoint.registry)
    g.labels("r").set(2.5)
    c.labels("r").inc(3)
    port = endpoint.serve(0, "127.0.0.1")
    assert isinstance(port, int) and 0 < port < 65536
    families = _scrape(port)
    assert [(s.labels, s.value) for s in families["t_value"]] == [({"run": "r"}, 2.5)]
    assert ({"run": "r"}, 3.0) in [(s.labels, s.value) for s in families["t_events"] if s.name == "t_events_total"]
    g.labels("r").set(7.0)  # read at scrape time, not at serve time
    assert [s.value for s in _scrape(port)["t_value"]] == [7.0]


def test_an_endpoint_serves_its_own_registry_only():
    a, b = MetricsEndpoint(CollectorRegistry()), MetricsEndpoint(CollectorRegistry())
    Gauge("only_in_a", "x", registry=a.registry).set(1)
    Gauge("only_in_b", "x", registry=b.registry).set(1)
    try:
        pa, pb = a.serve(0, "127.0.0.1"), b.serve(0, "127.0.0.1")
        assert pa != pb
        assert "only_in_a" in _scrape(pa) and "only_in_b" not in _scrape(pa)
        assert "only_in_b" in _scrape(pb) and "only_in_a" not in _scrape(pb)
    finally:
        a.close()
        b.close()


def test_serve_on_a_given_port_binds_that_port():
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        want = s.getsockname()[1]
    e = MetricsEndpoint(CollectorRegistry())
    try:
        assert e.serve(want, "127.0.0.1") == want
        _scrape(want)
    finally:
        e.close()


def test_close_stops_serving_and_a_second_close_does_nothing(endpoint):
    port = endpoint.serve(0, "127.0.0.1")
    _scrape(port)
    endpoint.close()
    assert _refused(port)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    endpoint.close()


def test_close_before_serve_does_nothing():
    MetricsEndpoint(CollectorRegistry()).close()
