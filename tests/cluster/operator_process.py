"""The operator as shipped, on the real control plane: installed from the chart's rendered objects, run
as its own process from the operator image's environment (tests/images/image_env.py), started with the
chart Deployment's own command, arguments and environment, and authenticated as the chart's
ServiceAccount (a bound token from the TokenRequest API). A permission the chart does not grant is a
403 from the real RBAC authorizer; a module the image lacks is an ImportError at start.

What differs from a pod: the process runs on this machine (no container), its liveness endpoint binds a
free loopback port instead of 0.0.0.0:8081, and the environment variables the test names replace the
chart's (Prometheus' URL, the metrics port, the poll interval).
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import ControlPlane
from tests.images.image_env import ImageEnv

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "asyncmtl-operator"
RELEASE_NAMESPACE = "asyncmtl-system"


def render_chart(values: dict[str, Any] | None = None, namespace: str = RELEASE_NAMESPACE) -> list[dict[str, Any]]:
    """The chart's objects as `helm install asyncmtl` would create them (Helm's own Go SDK, helm-python-sdk)."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values or {}, name="asyncmtl", namespace=namespace, is_install=True)
    finally:
        chart.close()
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OperatorProcess:
    """The chart installed (RBAC, ServiceAccount) and the operator running as that ServiceAccount.

    Attributes:
        env: replaces the chart's environment variables of the same name (and adds new ones).
        values: the chart's values (default: its defaults, cluster-wide).
    """

    control_plane: ControlPlane
    image: ImageEnv
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    objects: list[dict[str, Any]] = field(init=False, default_factory=list)
    proc: subprocess.Popen | None = field(init=False, default=None)
    log: Path = field(init=False)

    def install(self) -> "OperatorProcess":
        """Apply the chart's RBAC and ServiceAccount objects (the Deployment is this process instead)."""
        cp = self.control_plane
        if not cp.get(f"/api/v1/namespaces/{RELEASE_NAMESPACE}", missing_ok=True):
            cp.create_namespace(RELEASE_NAMESPACE)
        self.objects = render_chart(self.values)
        kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
        wanted = [o for o in self.objects if o["kind"] in kinds]
        cp.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(o) for o in wanted))
        return self

    @property
    def deployment(self) -> dict[str, Any]:
        return next(o for o in self.objects if o["kind"] == "Deployment")

    def command(self) -> list[str]:
        """The Deployment's command and arguments, the program resolved in the image's environment."""
        c = self.deployment["spec"]["template"]["spec"]["containers"][0]
        words = [*c.get("command", []), *c.get("args", [])]
        health = _free_port()
        words = [f"--liveness=http://127.0.0.1:{health}/healthz" if w.startswith("--liveness=") else w for w in words]
        return [str(self.image.bin(words[0])), *words[1:]]

    def start(self, timeout: float = 90.0) -> "OperatorProcess":
        """Start the operator as the chart's ServiceAccount and wait for its startup line.

        Raises:
            RuntimeError: it exited or did not start in time (the log's tail in the message).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        spec = self.deployment["spec"]["template"]["spec"]
        sa = spec["serviceAccountName"]
        kubeconfig = self.control_plane.serviceaccount_kubeconfig(sa, RELEASE_NAMESPACE,
                                                                  self.workdir / "operator.kubeconfig")
        env = self.image.environ()
        env.update({e["name"]: e["value"] for e in spec["containers"][0].get("env", []) if "value" in e})
        env.update({"KUBECONFIG": str(kubeconfig), "ASYNCMTL_OPERATOR_METRICS_PORT": "0"})
        env.update(self.env)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "operator.log"
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "AsyncMTL operator: Prometheus at" in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the operator did not start:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM (kopf stops its handlers), then SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "OperatorProcess":
        return self.install().start()

    def __exit__(self, *exc) -> None:
        self.stop()


def events_of(cp: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    """Events about object `name` in `namespace` (core/v1)."""
    items = cp.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1)[:4000]
