"""A real Prometheus server (Debian package 2.42) as a child process on a free loopback port.

The binary is found at $PROMETHEUS_BIN, `.tools/prometheus/usr/bin/prometheus` (what `make
tools` unpacks), or on PATH. The first sample lands about 5 s after start (target discovery
batches updates), so `wait_for` polls a query instead of sleeping.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import REPO


def find_prometheus() -> str | None:
    for cand in (os.environ.get("PROMETHEUS_BIN"), str(REPO / ".tools" / "prometheus" / "usr" / "bin" / "prometheus"),
                 shutil.which("prometheus")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusServer:
    """Scrapes `targets` (host:port) every `scrape_interval` with the given extra target labels."""

    def __init__(self, binary: str, workdir: Path, targets: list[str], labels: dict[str, str],
                 scrape_interval: str = "500ms", scrape_configs: list[dict] | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.labels = labels
        self.scrape_interval = scrape_interval
        self.scrape_configs = scrape_configs  # given whole (e.g. what prometheus-operator generates), else one job
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PrometheusServer":
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(json.dumps({
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": "1s"},
            "scrape_configs": self.scrape_configs or [
                {"job_name": "trainer", "scrape_interval": self.scrape_interval,
                 "static_configs": [{"targets": self.targets, "labels": self.labels}]}],
        }))
        self.log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen([self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Prometheus did not become ready: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")

    def query(self, promql: str) -> list[dict]:
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=5) as r:
            return json.loads(r.read())["data"]["result"]

    def series(self, match: str) -> list[dict]:
        """The label sets of the series `match` selects (what Grafana's `label_values` reads)."""
        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/series?{q}", timeout=5) as r:
            return json.loads(r.read())["data"]

    def wait_for(self, promql: str, predicate=lambda res: bool(res), timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                res = self.query(promql)
                if predicate(res):
                    return res
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{promql} did not satisfy the condition within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
