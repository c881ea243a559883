"""The operator's Prometheus client behind an authenticating TLS proxy (Thanos, OpenShift monitoring):
a bearer token re-read from its file, a CA bundle, and retries of transient failures."""
from __future__ import annotations

import datetime
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from asyncmtl_operator.prometheus import PrometheusClient, PrometheusError

OK = {"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {"__name__": "up"}, "value": [1700000000.0, "1"]}]}}


class _Proxy(BaseHTTPRequestHandler):
    token = "tok-1"
    failures_left = 0
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen.append(self.headers.get("Authorization", ""))
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        if self.headers.get("Authorization") != f"Bearer {type(self).token}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps(OK).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prometheus.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp / "ca.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture()
def proxy(tmp_path):
    cert, key = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Proxy.token, _Proxy.failures_left, _Proxy.seen = "tok-1", 0, []
    yield f"https://localhost:{server.server_address[1]}", cert
    server.shutdown()


def test_bearer_token_and_ca_bundle(proxy, tmp_path):
    url, ca = proxy
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    client = PrometheusClient(url, bearer_token_file=str(token), ca_file=str(ca))
    assert client.query("up")[0]["value"][1] == "1"
    token.write_text("tok-2")  # the token rotated: the next query reads the new one
    _Proxy.token = "tok-2"
    assert client.query("up") and _Proxy.seen[-1] == "Bearer tok-2"
    with pytest.raises(PrometheusError, match="certificate verify failed|CERTIFICATE_VERIFY_FAILED"):
        PrometheusClient(url, bearer_token_file=str(token), attempts=1).query("up")  # not our CA
    with pytest.raises(PrometheusError, match="HTTP 401: not authorized"):
        PrometheusClient(url, ca_file=str(ca)).query("up")  # no token


def test_transient_failures_are_retried_then_reported(proxy, tmp_path):
    url, ca = proxy
    token = tmp_path / "token"
    token.write_text("tok-1")
    _Proxy.failures_left = 2
    assert PrometheusClient(url, bearer_token_file=str(token), ca_file=str(ca), attempts=3).query("up")
    assert len(_Proxy.seen) == 3
    _Proxy.failures_left = 5
    with pytest.raises(PrometheusError, match="HTTP 503"):
        PrometheusClient(url, bearer_token_file=str(token), ca_file=str(ca), attempts=2).query("up")
