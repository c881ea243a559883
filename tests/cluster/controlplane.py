"""A real Kubernetes control plane on loopback for tests (envtest style, plus the controllers).

`ControlPlane` runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler from
`.tools/controlplane/bin/` (built from pinned Go modules by `hack/controlplane/build.sh`) the way a
cluster runs them: TLS everywhere the API server is reached, client certificates and RBAC
(`--authorization-mode=Node,RBAC`), ServiceAccount tokens signed by a key pair of ours, the usual
admission plugins plus OwnerReferencesPermissionEnforcement, ResourceQuota, LimitRanger and
PodSecurity. Every process listens on 127.0.0.1 only, on free ports, and logs to a file in the
work directory; `stop()` kills their process groups. There are no kubelets: `FakeNode`s are Node
objects (cpu, memory, pods, nvidia.com/gpu) whose Ready condition and kube-node-lease Lease a
background thread keeps fresh, so the real scheduler binds pods to them and the node lifecycle
controller leaves them alone. Their pods stay Pending (bound, never started).

Only the standard library and the `openssl` command are needed (certificates, JSON kubeconfigs,
HTTPS through `urllib`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
# where hack/controlplane/build.sh puts them ($CONTROLPLANE_BIN for both)
BIN_DIR = Path(os.environ.get("CONTROLPLANE_BIN") or REPO / ".tools" / "controlplane" / "bin")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/12"  # allocation bookkeeping only: nothing is ever sent there
SERVICE_IP = "10.96.0.1"       # the `kubernetes` Service's ClusterIP, in the serving certificate
ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMISSION_PLUGINS = ("NodeRestriction", "OwnerReferencesPermissionEnforcement", "ResourceQuota", "LimitRanger",
                     "PodSecurity")  # on top of the default set (NamespaceLifecycle, ServiceAccount, ...)


class ControlPlaneError(RuntimeError):
    pass


class ApiError(RuntimeError):
    """A non-2xx answer of the API server: `status` (HTTP code) and `body` (the decoded Status)."""

    def __init__(self, status: int, body: Any, method: str, path: str):
        self.status, self.body = status, body
        msg = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {msg}")


def missing_binaries(bin_dir: Path = BIN_DIR) -> list[str]:
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def now_rfc3339(micro: bool = False) -> str:
    t = _dt.datetime.now(_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25,
              on_timeout: Callable[[], str] | None = None) -> Any:
    """Call `check` until it returns something truthy (returned); ControlPlaneError after `timeout`."""
    deadline, last_exc = time.monotonic() + timeout, None
    while True:
        try:
            result = check()
            if result:
                return result
        except (ApiError, OSError, urllib.error.URLError, subprocess.CalledProcessError) as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}"
                                    + (f" (last error: {last_exc})" if last_exc else "") + extra)
        time.sleep(interval)


# ---------------------------------------------------------------------------------------- certificates

def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")


_CNF = """[req]
distinguished_name = dn
prompt = no
[dn]
{dn}
[ext]
{ext}
"""


def _dn(subject: dict[str, str | list[str]]) -> str:
    lines = []
    for key, value in subject.items():
        for i, v in enumerate([value] if isinstance(value, str) else value):
            lines.append(f"{i}.{key} = {v}")
    return "\n".join(lines)


def make_ca(d: Path, name: str = "ca") -> None:
    (d / f"{name}.cnf").write_text(_CNF.format(
        dn=_dn({"CN": f"asyncmtl-test-{name}"}),
        ext="basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign, digitalSignature\n"
            "subjectKeyIdentifier = hash"))
    _openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3650", "-config", f"{name}.cnf",
             "-extensions", "ext", cwd=d)


def make_cert(d: Path, name: str, subject: dict[str, str | list[str]], *, server: bool = False, client: bool = False,
              sans: tuple[str, ...] = (), ca: str = "ca") -> None:
    usages = ",".join(u for u, on in (("serverAuth", server), ("clientAuth", client)) if on)
    ext = ["basicConstraints = critical, CA:FALSE", "keyUsage = critical, digitalSignature, keyEncipherment",
           f"extendedKeyUsage = {usages}", "authorityKeyIdentifier = keyid"]
    if sans:
        ext.append("subjectAltName = " + ", ".join(sans))
    (d / f"{name}.cnf").write_text(_CNF.format(dn=_dn(subject), ext="\n".join(ext)))
    _openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-config", f"{name}.cnf", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-set_serial",
             str(int.from_bytes(os.urandom(8), "big")), "-days", "365", "-extfile", f"{name}.cnf",
             "-extensions", "ext", "-out", f"{name}.crt", cwd=d)


def make_pki(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    make_ca(d, "ca")
    make_cert(d, "apiserver", {"CN": "kube-apiserver"}, server=True, sans=(
        "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local", f"IP:{LOOPBACK}", f"IP:{SERVICE_IP}"))
    make_cert(d, "admin", {"O": "system:masters", "CN": "kubernetes-admin"}, client=True)
    make_cert(d, "controller-manager", {"CN": "system:kube-controller-manager"}, client=True)
    make_cert(d, "scheduler", {"CN": "system:kube-scheduler"}, client=True)
    # The front proxy (aggregation layer) has a CA of its own, as in a kubeadm cluster.
    make_ca(d, "front-proxy-ca")
    make_cert(d, "front-proxy-client", {"CN": "front-proxy-client"}, client=True, ca="front-proxy-ca")
    # The ServiceAccount token signing key pair.
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=d)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, *, client_cert: Path | None = None,
                     client_key: Path | None = None, token: str | None = None, namespace: str = "default") -> Path:
    cred: dict[str, str] = {}
    if client_cert:
        cred = {"client-certificate": str(client_cert), "client-key": str(client_key)}
    if token:
        cred["token"] = token
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": user,
           "clusters": [{"name": "asyncmtl-test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
           "users": [{"name": user, "user": cred}],
           "contexts": [{"name": user, "context": {"cluster": "asyncmtl-test", "user": user, "namespace": namespace}}]}
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------------------------------- processes

@dataclass
class Process:
    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        with open(self.log, "ab") as out:
            # A session of its own: stop() signals the whole process group.
            self.popen = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, env=env)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        state = "running" if self.alive() else f"exited {self.popen.returncode}" if self.popen else "not started"
        return f"\n--- {self.name} ({state}), last {len(text)} lines of {self.log}:\n" + "\n".join(text)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        pgid = self.popen.pid  # the session leader: its pid is the group id
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(wait)
                # the leader is gone; make sure no child of it survives
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            except subprocess.TimeoutExpired:
                continue


# ---------------------------------------------------------------------------------------- fake nodes

@dataclass
class FakeNode:
    """A Node without a kubelet. `capacity` is also its allocatable."""
    name: str
    capacity: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    uid: str = ""
    since: str = field(default_factory=now_rfc3339)  # lastTransitionTime of its conditions

    def manifest(self) -> dict:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "asyncmtl.dev/fake-node": "true", **self.labels}
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": labels},
                "spec": {}, "status": self.status()}

    def status(self) -> dict:
        now, since = now_rfc3339(), self.since
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node (no kubelet)",
                 "lastHeartbeatTime": now, "lastTransitionTime": since}
        conds = [ready] + [{"type": t, "status": "False", "reason": f"KubeletHasNo{t.removesuffix('Pressure')}Pressure"
                            if t != "PIDPressure" else "KubeletHasSufficientPID",
                            "lastHeartbeatTime": now, "lastTransitionTime": since}
                           for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
        return {"capacity": self.capacity, "allocatable": self.capacity, "conditions": conds,
                "nodeInfo": {"kubeletVersion": "v1.37.2", "operatingSystem": "linux", "architecture": "amd64",
                             "containerRuntimeVersion": "fake://0", "kernelVersion": "", "osImage": "fake",
                             "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""}}


# ---------------------------------------------------------------------------------------- control plane

@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on 127.0.0.1.

    `start()` returns once /readyz answers ok, the controller manager and scheduler are healthy and the
    controllers have created the `default` ServiceAccount. `stop()` ends every process group.
    """
    workdir: Path | None = None
    bin_dir: Path = BIN_DIR
    start_timeout: float = 120.0
    node_heartbeat_seconds: float = 10.0
    extra_apiserver_args: list[str] = field(default_factory=list)
    extra_controller_manager_args: list[str] = field(default_factory=list)

    kubeconfig: Path = field(init=False)
    server: str = field(init=False, default="")
    processes: dict[str, Process] = field(init=False, default_factory=dict)
    nodes: dict[str, FakeNode] = field(init=False, default_factory=dict)
    _own_workdir: bool = field(init=False, default=False)
    _ssl: ssl.SSLContext | None = field(init=False, default=None)
    _stop_heartbeat: threading.Event = field(init=False, default_factory=threading.Event)
    _heartbeat: threading.Thread | None = field(init=False, default=None)
    _nodes_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    # --- lifecycle

    def start(self) -> "ControlPlane":
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneError(f"missing in {self.bin_dir}: {', '.join(missing)} (run hack/controlplane/build.sh)")
        if self.workdir is None:
            self.workdir, self._own_workdir = Path(tempfile.mkdtemp(prefix="asyncmtl-controlplane-")), True
        self.workdir = Path(self.workdir).resolve()
        self.pki, self.logs = self.workdir / "pki", self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            make_pki(self.pki)
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            wait_for("the default ServiceAccount (controller manager)",
                     lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default", missing_ok=True),
                     self.start_timeout, on_timeout=self.log_tails)
        except BaseException:
            self.stop()
            raise
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="fake-node-heartbeat", daemon=True)
        self._heartbeat.start()
        return self

    def stop(self) -> None:
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=30)
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            if name in self.processes:
                self.processes[name].stop()

    def cleanup(self) -> None:
        """stop(), then remove the work directory when start() created it."""
        self.stop()
        if self._own_workdir and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def log_tails(self, lines: int = 30) -> str:
        return "".join(p.tail(lines) for p in self.processes.values())

    def _spawn(self, name: str, args: list[str]) -> Process:
        p = Process(name, [str(self.bin_dir / name), *args], self.logs / f"{name}.log")
        self.processes[name] = p
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "ETCD"))}
        env.update(HOME=str(self.workdir), NO_PROXY="*", no_proxy="*")  # nothing reaches a proxy
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(k, None)
        p.start(env)
        return p

    def _check_alive(self, *names: str) -> bool:
        for n in names:
            if not self.processes[n].alive():
                raise ControlPlaneError(f"{n} exited early" + self.log_tails())
        return True

    def _start_etcd(self) -> None:
        self.etcd_port, peer = free_port(), free_port()
        client, peer_url = f"http://{LOOPBACK}:{self.etcd_port}", f"http://{LOOPBACK}:{peer}"
        self.etcd_url = client
        self._spawn("etcd", [
            "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",  # a throwaway data dir: durability is not the point, speed is
            "--log-level=warn"])

        def healthy():
            self._check_alive("etcd")
            with urllib.request.urlopen(f"{client}/health", timeout=2) as r:
                return json.load(r).get("health") == "true"
        wait_for("etcd /health", healthy, 30, on_timeout=self.log_tails)

    def _start_apiserver(self) -> None:
        self.apiserver_port = free_port()
        self.server = f"https://{LOOPBACK}:{self.apiserver_port}"
        pki = self.pki
        self._spawn("kube-apiserver", [
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}", f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={ISSUER}", f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The `kubernetes` Service's endpoints would be the advertise address, which may not be loopback
            # (the apiserver refuses to start): the Service keeps its ClusterIP and gets no endpoints.
            "--endpoint-reconciler-type=none",
            "--authorization-mode=Node,RBAC",
            f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
            "--allow-privileged=true",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--profiling=false",
            *self.extra_apiserver_args])
        self.kubeconfig = write_kubeconfig(self.workdir / "admin.kubeconfig", self.server, pki / "ca.crt",
                                           "kubernetes-admin", client_cert=pki / "admin.crt",
                                           client_key=pki / "admin.key")

        def ready():
            self._check_alive("kube-apiserver", "etcd")
            return self.request("GET", "/readyz", raw=True) == b"ok"
        wait_for("kube-apiserver /readyz", ready, self.start_timeout, 0.5, on_timeout=self.log_tails)

    def _start_controllers(self) -> None:
        pki = self.pki
        kc_cm = write_kubeconfig(self.workdir / "controller-manager.kubeconfig", self.server, pki / "ca.crt",
                                 "system:kube-controller-manager", client_cert=pki / "controller-manager.crt",
                                 client_key=pki / "controller-manager.key")
        kc_sched = write_kubeconfig(self.workdir / "scheduler.kubeconfig", self.server, pki / "ca.crt",
                                    "system:kube-scheduler", client_cert=pki / "scheduler.crt",
                                    client_key=pki / "scheduler.key")
        self.controller_manager_port, self.scheduler_port = free_port(), free_port()
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kc_cm}", f"--authentication-kubeconfig={kc_cm}", f"--authorization-kubeconfig={kc_cm}",
            f"--bind-address={LOOPBACK}", f"--secure-port={self.controller_manager_port}",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            "--controllers=*", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false", "--profiling=false",
            *self.extra_controller_manager_args])
        self._spawn("kube-scheduler", [
            f"--kubeconfig={kc_sched}", f"--authentication-kubeconfig={kc_sched}",
            f"--authorization-kubeconfig={kc_sched}",
            f"--bind-address={LOOPBACK}", f"--secure-port={self.scheduler_port}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
            "--leader-elect=false", "--profiling=false"])
        insecure = ssl.create_default_context()  # their serving certificates are self-signed
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE

        def healthy(name: str, port: int) -> Callable[[], bool]:
            def check():
                self._check_alive(name)
                with urllib.request.urlopen(f"https://{LOOPBACK}:{port}/healthz", timeout=2, context=insecure) as r:
                    return r.read() == b"ok"
            return check
        wait_for("kube-controller-manager /healthz", healthy("kube-controller-manager", self.controller_manager_port),
                 self.start_timeout, 0.5, on_timeout=self.log_tails)
        wait_for("kube-scheduler /healthz", healthy("kube-scheduler", self.scheduler_port),
                 self.start_timeout, 0.5, on_timeout=self.log_tails)

    # --- clients

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
            self._ssl = ctx
        return self._ssl

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                raw: bool = False, timeout: float = 30.0) -> Any:
        """One API call as the cluster admin. JSON in and out (bytes with raw=True); ApiError when not 2xx."""
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        req.add_header("Accept", "application/json")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=self.ssl_context()))
        try:
            with opener.open(req, timeout=timeout) as r:
                out = r.read()
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                decoded: Any = json.loads(text)
            except ValueError:
                decoded = text.decode(errors="replace")
            raise ApiError(exc.code, decoded, method, path) from None
        return out if raw else json.loads(out) if out else None

    def get(self, path: str, *, missing_ok: bool = False) -> Any:
        try:
            return self.request("GET", path)
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None,
                timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run kubectl as the admin (or with `kubeconfig`); CalledProcessError (stderr in the message) if check."""
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}",
               f"--cache-dir={self.workdir / 'kubectl-cache'}", *args]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["HOME"] = str(self.workdir)
        r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env)
        if check and r.returncode:
            raise subprocess.CalledProcessError(r.returncode, cmd, r.stdout, r.stderr) from RuntimeError(
                f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def serviceaccount_kubeconfig(self, name: str, namespace: str, path: Path | None = None,
                                  duration: str = "1h") -> Path:
        """A kubeconfig that authenticates as ServiceAccount `namespace/name` with a bound token from the
        TokenRequest API (`kubectl create token`), signed by our service-account key."""
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
        path = path or self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        return write_kubeconfig(path, self.server, self.pki / "ca.crt", f"system:serviceaccount:{namespace}:{name}",
                                token=token, namespace=namespace)

    # --- namespaces

    def create_namespace(self, name: str, labels: dict[str, str] | None = None, timeout: float = 60.0) -> str:
        """Create a namespace and wait for its `default` ServiceAccount (pods need it to be admitted)."""
        self.request("POST", "/api/v1/namespaces",
                     {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}})
        wait_for(f"ServiceAccount {name}/default",
                 lambda: self.get(f"/api/v1/namespaces/{name}/serviceaccounts/default", missing_ok=True), timeout)
        return name

    def delete_namespace(self, name: str) -> None:
        try:
            self.request("DELETE", f"/api/v1/namespaces/{name}")
        except ApiError as exc:
            if exc.status != 404:
                raise

    # --- fake nodes

    def add_fake_node(self, name: str, *, gpus: int = 0, cpu: str = "8", memory: str = "32Gi", pods: int = 110,
                      labels: dict[str, str] | None = None, timeout: float = 60.0) -> FakeNode:
        """Register a Node without a kubelet and wait until it is schedulable (the node lifecycle controller
        has removed the not-ready taint that TaintNodesByCondition puts on every new Node)."""
        capacity = {"cpu": cpu, "memory": memory, "pods": str(pods), "ephemeral-storage": "100Gi"}
        labels = dict(labels or {})
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
            labels.setdefault("nvidia.com/gpu.present", "true")
        node = FakeNode(name, capacity, labels)
        created = self.request("POST", "/api/v1/nodes", node.manifest())
        node.uid = created["metadata"]["uid"]
        self._heartbeat_node(node)  # the status (capacity, Ready) and the Lease, now
        with self._nodes_lock:
            self.nodes[name] = node

        def schedulable():
            n = self.get(f"/api/v1/nodes/{name}")
            return not n["spec"].get("taints") and n["status"].get("allocatable", {}).get("pods")
        wait_for(f"node {name} without taints", schedulable, timeout,
                 on_timeout=lambda: f"; node: {json.dumps(self.get(f'/api/v1/nodes/{name}'))}")
        return node

    def remove_fake_node(self, name: str) -> None:
        with self._nodes_lock:
            self.nodes.pop(name, None)
        for path in (f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}", f"/api/v1/nodes/{name}"):
            try:
                self.request("DELETE", path)
            except ApiError as exc:
                if exc.status != 404:
                    raise

    def _heartbeat_node(self, node: FakeNode) -> None:
        """What a kubelet does every few seconds: the Ready condition (a status patch) and its Lease."""
        self.request("PATCH", f"/api/v1/nodes/{node.name}/status", {"status": node.status()},
                     content_type="application/strategic-merge-patch+json")
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node.name}"
        renew = now_rfc3339(micro=True)
        try:
            self.request("PATCH", lease_path, {"spec": {"renewTime": renew}},
                         content_type="application/merge-patch+json")
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node.name, "namespace": "kube-node-lease",
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name,
                                                  "uid": node.uid}]},
                "spec": {"holderIdentity": node.name, "leaseDurationSeconds": 40, "renewTime": renew}})

    def _heartbeat_loop(self) -> None:
        while not self._stop_heartbeat.wait(self.node_heartbeat_seconds):
            with self._nodes_lock:
                nodes = list(self.nodes.values())
            for node in nodes:
                try:
                    self._heartbeat_node(node)
                except Exception:  # noqa: BLE001 - the next beat tries again; a test sees a NotReady node
                    pass
