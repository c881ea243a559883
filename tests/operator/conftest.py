"""Fixtures for operator tests: emulated API server, real Prometheus, moto S3, a driven trainer exporter."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import missing, moto_server
from tests.operator.emulator import EmulatedCluster
from tests.operator.prometheus_server import PrometheusServer, find_prometheus, free_port

TIMER = 1.0  # seconds between operator ticks in these tests
os.environ.setdefault("ASYNCMTL_TIMER_INTERVAL", str(TIMER))  # read at operator startup (OperatorConfig)
os.environ.setdefault("ASYNCMTL_POD_CHECK_INTERVAL", str(TIMER))  # why a trainer pod is stuck, seen within a tick


@pytest.fixture()
def cluster(tmp_path, monkeypatch):
    with EmulatedCluster() as c:
        monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig(tmp_path / "kubeconfig")))
        yield c


@pytest.fixture()
def kube(cluster):
    import kubernetes

    kubernetes.config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    return kubernetes.client.ApiClient()


@pytest.fixture()
def s3(monkeypatch):
    """moto's S3 server on loopback; AWS credentials in the environment; yields (endpoint, bucket)."""
    import boto3

    with moto_server() as endpoint:
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="runs")
        yield endpoint, "runs"


class FakeTrainer:
    """The trainer's real exporter (TrainerExporter) on a free port, driven by the test."""

    def __init__(self, run: str, tasks: list[str]) -> None:
        from asyncmtl_trainer.exporter import TrainerExporter

        self.run = run
        self.exporter = TrainerExporter(run, tasks)
        self.port = self.exporter.serve(free_port(), "127.0.0.1")
        self.best: dict[str, tuple[int, float]] = {}
        self.generation = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def validate(self, step: int, values: dict[str, float]) -> None:
        self.exporter.global_step.labels(self.run).set(step)
        for task, v in values.items():
            b = self.best.get(task)
            if b is None or v > b[1]:
                self.best[task] = (step, v)
            self.exporter.record_validation(task, step, v, *self.best[task])
        self.exporter.complete_validation(step)

    def rewind(self, step: int, values: dict[str, float]) -> None:
        """What the trainer does on `converged(..., rewindTo=step)`: state as of the checkpoint."""
        self.exporter.global_step.labels(self.run).set(step)
        for task, v in values.items():
            if self.best[task][0] > step:
                self.best[task] = (step, v)
            self.exporter.set_task_state(task, step, v, *self.best[task])
        self.exporter.complete_validation(step)
        self.exporter.rewinds.labels(self.run).inc()

    def ack(self, generation: int, step: int) -> None:
        self.exporter.control_step.labels(self.run).set(step)
        self.exporter.control_generation.labels(self.run).set(generation)
        self.generation = generation

    def close(self) -> None:
        self.exporter.close()


@pytest.fixture()
def prometheus_binary() -> str:
    binary = find_prometheus()
    if binary is None:
        missing("Prometheus", "`make tools` unpacks the Debian package into .tools/", "run `make tools`")
    return binary


def start_prometheus(binary: str, workdir: Path, targets: list[str], namespace: str = "default") -> PrometheusServer:
    workdir.mkdir(parents=True, exist_ok=True)
    return PrometheusServer(binary, workdir, targets, {"namespace": namespace}).start()


def wait_until(fn, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll `fn` until it returns a truthy value; return it. Raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # the object may not exist yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s (last: {last!r})")


@pytest.fixture()
def driven_operator(cluster, kube, s3, prometheus_binary, tmp_path, monkeypatch):
    """A factory: `driven_operator(run)` starts a FakeTrainer for `run` (tasks a and b) and a real Prometheus
    scraping it, points the operator's settings at that Prometheus, and returns (kube, S3 endpoint, trainer,
    Prometheus); both are stopped after the test."""
    started: list[tuple[FakeTrainer, PrometheusServer]] = []

    def make(run: str):
        trainer = FakeTrainer(run, ["a", "b"])
        prom = start_prometheus(prometheus_binary, tmp_path / f"prom-{run}", [trainer.target])
        started.append((trainer, prom))
        monkeypatch.setenv("PROMETHEUS_URL", prom.url)
        monkeypatch.setenv("ASYNCMTL_OPERATOR_METRICS_PORT", "0")
        return kube, s3[0], trainer, prom

    yield make
    for trainer, prom in started:
        prom.stop()
        trainer.close()
