"""A kubelet stand-in for one fake Node of tests/cluster/controlplane.py: it runs the Node's pods as local processes.

The control plane of `ControlPlane` has no kubelet, so the pods the scheduler binds to a fake Node stay
Pending. A `NodeAgent` plays the kubelet for one Node: it runs each pod's containers as processes of this
machine and reports their outcome in the pod's status, so the real Job controller, garbage collector and
quota controller act on real pod outcomes (a Job completes, fails after its backoffLimit, is garbage
collected with its pods).

    images = {"registry.example/trainer:1": LocalImage(Path(".tools/image-envs/trainer/venv"))}
    with NodeAgent(control_plane, "node-a", images, tmp_path / "agent") as agent:
        ...  # create Jobs whose pods select `kubernetes.io/hostname: node-a`

What it does, like the kubelet:

* Every `poll_interval` (0.3 s) it lists the pods with `spec.nodeName=<node>` in all namespaces (the
  admin's REST client of `ControlPlane`) and reconciles each one.
* Images: a container image (exact string) maps to a local environment, a folder whose `bin/` goes first
  on PATH (a virtual environment, e.g. an `ImageEnv`'s venv, or any folder with a `bin/` of scripts). An
  image not in the mapping is "not pullable": the pod stays Pending with the container waiting,
  `ErrImagePull` first and then `ImagePullBackOff`, message `image "X" is not available on this test node`.
* Volumes are folders under `<work>/<pod uid>/volumes/<volume>`: `configMap` and `secret` (all keys, or
  `items` key -> path; `defaultMode`/`mode`; `optional`), `emptyDir`, `hostPath` (the host folder itself),
  `downwardAPI` (fieldRef items) and `projected` (configMap, secret, downwardAPI and serviceAccountToken
  sources; the token comes from the TokenRequest API, so the `kube-api-access-*` volume that the
  ServiceAccount admission plugin adds works). ConfigMap and Secret volumes are written the kubelet's way
  (files are symlinks into a `..data` symlink that is swapped atomically) and re-synced every
  `sync_interval` (1 s), so an update reaches a running process within about a second; projected volumes
  are written once (tokens are not rotated). A missing ConfigMap/Secret keeps the pod Pending (waiting
  reason `ContainerCreating`, the kubelet's mount error as message) and is retried every second.
* Mounts: there is no mount namespace. Each `volumeMount.mountPath` (with `subPath`) maps to its local
  folder, and the container's `command`, `args` and env values are rewritten: a string equal to a
  mountPath or starting with mountPath + "/" becomes the local path (longest mountPath first); so does the
  value of a `--flag=VALUE` argument. Paths inside a longer string (a `python -c` script, a `a:b` list) are
  NOT rewritten: pass them as separate arguments. The container's `terminationMessagePath` (default
  `/dev/termination-log`) maps the same way to a per-container file, created empty before the start (our
  programs write the message only if that file exists). `readOnly` is not enforced, and a `subPath` mount
  of a ConfigMap sees updates (the kubelet's would not).
* Env, in the kubelet's order: PATH (`<env>/bin` first, then a container's usual PATH), HOSTNAME
  (`spec.hostname`, e.g. `<job>-<index>` for Indexed Jobs, else the pod name), HOME (`<work>/<pod uid>/home`),
  `extra_env`, the image's ENV, `KUBERNETES_SERVICE_HOST/PORT` (the API server on 127.0.0.1), then `envFrom` (configMapRef/secretRef, `prefix`, `optional`), then `env`:
  `value` (with `$(VAR)` expansion), `valueFrom.fieldRef` (metadata.name/namespace/uid,
  metadata.labels['k'], metadata.annotations['k'] - e.g. `batch.kubernetes.io/job-completion-index`,
  which the Job controller uses for the JOB_COMPLETION_INDEX env of Indexed Jobs - spec.nodeName,
  spec.serviceAccountName, status.podIP/hostIP -> 127.0.0.1), `secretKeyRef` and `configMapKeyRef` (read
  from the API; a missing object or key is the kubelet's `CreateContainerConfigError`, retried every
  second). `$(VAR)` is expanded in command and args too. Nothing of this machine's environment is passed
  on except `extra_env`; if the image or the pod sets PATH, `<env>/bin` is still put first.
* The process: `command` + `args`, resolved like a container runtime with an image whose ENTRYPOINT/CMD
  are those of the `LocalImage` (empty by default). So with no `command`, the first of `args` is the
  program: our images have no ENTRYPOINT and pods say `args: ["asyncmtl-train", ...]`. The program is
  looked up on the container's PATH (`<env>/bin` first); not found -> the container terminates with
  exit code 128, reason `StartError`, like a runtime. cwd: the mapped `workingDir`, else the
  LocalImage's `workdir`, else the pod folder. Each container runs in a session of its own
  (`start_new_session`), stdout and stderr to `<work>/<pod uid>/containers/<name>/log` (`log_path()`).
* Status (the `/status` subresource, strategic merge patch): Running with podIP/hostIP 127.0.0.1,
  startTime, conditions (PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady, Ready) and
  running containerStatuses (`startedAt`, `ready`, `started`, `restartCount: 0`, `image`, `imageID`,
  `containerID: agent://<pid>`); when every container has exited: Succeeded (all exit 0) or Failed, with
  terminated states (exitCode, reason Completed|Error, startedAt, finishedAt, message: the termination
  message file, or with `FallbackToLogsOnError` and a failure, the log's last 80 lines / 2048 bytes).
  A process killed by signal N reports exit code 128 + N. When the first process of a pod ends, the rest
  of its process group is killed (as when a container's PID 1 exits).
* Deletion: when a pod gets a deletionTimestamp, its process groups get SIGTERM, then SIGKILL after
  `deletionGracePeriodSeconds` (or `terminationGracePeriodSeconds`), capped at `max_grace_seconds` (10 s);
  once they are gone the pod's terminal status is written (Failed unless every container exited 0, as
  the kubelet does, which Jobs with a podFailurePolicy wait for) and the pod is deleted with
  gracePeriodSeconds=0 (the kubelet's final removal), so Job deletion and garbage collection complete.
  A pod that disappears from the API without that (a forced deletion) has its processes killed.

Not supported (the pod stays Pending, its containers waiting with reason `NodeAgentUnsupported` and a
message saying what): restartPolicy OnFailure/Always (only `Never`, what our Jobs use; a bare Pod defaults
to Always, so say Never), initContainers (and sidecars), volumes other than the ones above
(persistentVolumeClaim, csi, ephemeral, image, nfs ...; use hostPath in tests), `resourceFieldRef`, env
fieldRefs other than the ones above, probes (ignored: a running container is Ready), resource limits (not
enforced), ports (not checked), security contexts (ignored: processes run as this user).

Networking: every pod shares this machine's loopback, podIP 127.0.0.1, like hostNetwork pods: two pods
that bind the same port conflict, and a Service's ClusterIP or a pod DNS name does not resolve. The agent
itself talks only to the API server on 127.0.0.1.

When the agent stops (`stop()`, or leaving the `with` block) it kills every process group it started and
waits for them; pods it was running keep their last status in the API (as when a kubelet dies). If the
agent created the Node, it removes it (the pod garbage collector then deletes the Node's pods).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from tests.cluster.controlplane import LOOPBACK, ApiError, ControlPlane, now_rfc3339

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096      # bytes, the kubelet's limit for the file
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048  # FallbackToLogsOnError: the log's tail, the kubelet's limits
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNSUPPORTED = "NodeAgentUnsupported"
MAX_ERRORS = 200                    # agent.errors keeps the last ones


@dataclass
class LocalImage:
    """What a container image stands for on this machine.

    `root`: a folder whose `bin/` goes first on the container's PATH (a virtual environment, or a folder of
    scripts). `env`: the image's ENV. `workdir`: its WORKDIR (the default cwd). `entrypoint`/`cmd`: its
    ENTRYPOINT and CMD (empty: the pod's `command`, else the first of its `args`, is the program).
    """

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        if self.workdir is not None:
            self.workdir = Path(self.workdir)

    @classmethod
    def of(cls, value: "LocalImage | os.PathLike | str | Any") -> "LocalImage":
        """A LocalImage from a folder, a LocalImage, or an `ImageEnv` (tests/images/image_env.py: its venv,
        its staging WORKDIR, and its Dockerfile's ENV when it was built in this process)."""
        if isinstance(value, LocalImage):
            return value
        if hasattr(value, "venv"):
            workdir = getattr(value, "workdir", None)
            return cls(Path(value.venv), env=dict(getattr(value, "_env", {}) or {}),
                       workdir=Path(workdir) if workdir and Path(workdir).is_dir() else None)
        return cls(Path(value))


class _NotReady(Exception):
    """The pod cannot start yet (a missing ConfigMap/Secret/key): retried. `reason` goes in the waiting state."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class _Unsupported(Exception):
    """The pod uses something the agent does not do: it stays Pending with this message."""


# ---------------------------------------------------------------------------------------- small helpers

_EXPAND = re.compile(r"\$(\$|\(([^)]*)\))")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined VAR is replaced, an undefined one left as is, `$$` is `$`."""
    def sub(m: re.Match) -> str:
        if m.group(1) == "$":
            return "$"
        name = m.group(2)
        return env[name] if name in env else m.group(0)
    return _EXPAND.sub(sub, text)


def rewrite_path(text: str, mounts: list[tuple[str, str]]) -> str:
    """`text` with a leading container path (equal to a mountPath, or below one) replaced by the local path;
    `mounts`: (mountPath, local path), longest mountPath first. `--flag=PATH` has its value rewritten."""
    for mount, local in mounts:
        if text == mount or text.startswith(mount + "/"):
            return local + text[len(mount):]
    if text.startswith("-") and "=" in text:
        flag, value = text.split("=", 1)
        new = rewrite_path(value, mounts) if not value.startswith("-") else value
        if new != value:
            return f"{flag}={new}"
    return text


def _safe_relative(path: str) -> str:
    p = Path(path)
    if not path or p.is_absolute() or ".." in p.parts:
        raise _Unsupported(f"invalid volume item path {path!r}")
    return path


def _decoded(obj: dict, *, secret: bool) -> dict[str, bytes]:
    """The payload of a ConfigMap (data + binaryData) or a Secret (data, base64)."""
    out: dict[str, bytes] = {}
    if secret:
        for k, v in (obj.get("data") or {}).items():
            out[k] = base64.b64decode(v)
        return out
    for k, v in (obj.get("data") or {}).items():
        out[k] = v.encode()
    for k, v in (obj.get("binaryData") or {}).items():
        out[k] = base64.b64decode(v)
    return out


def write_atomic(folder: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Write `files` (relative path -> (content, mode)) into `folder` the way the kubelet's AtomicWriter
    does: into a fresh `..<timestamp>` folder, then the `..data` symlink is swapped to it at once (a
    rename), and each top-level name is a symlink through `..data`. Older payloads are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = folder / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns()}"
    payload.mkdir()
    for rel, (content, mode) in files.items():
        target = payload / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    tmp = folder / "..data_tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(payload.name, tmp)
    os.replace(tmp, folder / "..data")  # the atomic step
    tops = {Path(rel).parts[0] for rel in files}
    for top in tops:
        link = folder / top
        if not link.is_symlink():
            os.symlink(f"..data/{top}", link)
    for entry in folder.iterdir():
        if entry.name in ("..data", payload.name):
            continue
        if entry.name.startswith(".."):
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            else:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_symlink() and entry.name not in tops:
            entry.unlink()


def _tail(path: Path, lines: int, max_bytes: int) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = b"\n".join(data.rstrip(b"\n").split(b"\n")[-lines:])[-max_bytes:]
    return text.decode(errors="replace")


# ---------------------------------------------------------------------------------------- per-pod state

@dataclass
class _Container:
    name: str
    spec: dict
    folder: Path
    image: LocalImage | None = None
    waiting: tuple[str, str] | None = None   # (reason, message) while not started
    popen: subprocess.Popen | None = None
    started_at: str = ""
    finished_at: str = ""
    exit_code: int | None = None
    reason: str = ""
    message: str = ""

    @property
    def log(self) -> Path:
        return self.folder / "log"

    @property
    def termination_log(self) -> Path:
        return self.folder / "termination-log"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.exit_code is None

    @property
    def terminated(self) -> bool:
        return self.exit_code is not None

    def status(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "image": self.spec.get("image", ""), "restartCount": 0,
                               "ready": self.running, "started": self.running, "lastState": {},
                               "imageID": f"agent://{self.image.root}" if self.image and self.started_at else ""}
        cid = f"agent://{self.popen.pid}" if self.popen else ""
        if cid:
            out["containerID"] = cid
        if self.terminated:
            term: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason,
                                    "startedAt": self.started_at or None, "finishedAt": self.finished_at}
            if self.message:
                term["message"] = self.message
            if cid:
                term["containerID"] = cid
            out["state"] = {"terminated": term}
        elif self.running:
            out["state"] = {"running": {"startedAt": self.started_at}}
        else:
            reason, message = self.waiting or ("ContainerCreating", "")
            out["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        return out


@dataclass
class _Pod:
    uid: str
    namespace: str
    name: str
    folder: Path
    containers: list[_Container] = field(default_factory=list)
    state: str = "pending"          # pending -> running -> finished; stuck: never starts (unsupported, image)
    start_time: str = field(default_factory=now_rfc3339)
    next_try: float = 0.0
    pull_backoff_at: float | None = None
    synced: list[tuple[Path, dict, dict]] = field(default_factory=list)  # (folder, volume, files written)
    last_sync: float = 0.0
    kill_at: float | None = None    # SIGKILL deadline once terminating
    status_written: dict | None = None
    removed: bool = False           # the final DELETE (gracePeriodSeconds=0) was sent
    phase: str = "Pending"


# ---------------------------------------------------------------------------------------- the agent

class NodeAgent:
    """The kubelet of one fake Node (see the module docstring): `start()`/`stop()`, or a context manager.

    Args:
        control_plane: a started `ControlPlane`.
        node: the Node's name; created with `ControlPlane.add_fake_node(node, gpus=gpus)` if it does not
            exist (and then removed by `stop()`).
        images: container image (exact string) -> a folder whose `bin/` goes first on PATH, a
            `LocalImage`, or an `ImageEnv`.
        work: a folder of the agent's (pod folders `<work>/<pod uid>/`, created).
        gpus: nvidia.com/gpu capacity of the Node if the agent creates it.
        extra_env: variables every container gets before the image's and the pod's (e.g. a LANG).
        poll_interval: seconds between two listings of the Node's pods.
        sync_interval: seconds between two syncs of the ConfigMap and Secret volumes of running pods.
        max_grace_seconds: cap of the termination grace period of deleted pods.
    """

    def __init__(self, control_plane: ControlPlane, node: str, images: Mapping[str, Any], work: os.PathLike | str,
                 *, gpus: int = 0, extra_env: Mapping[str, str] | None = None, poll_interval: float = 0.3,
                 sync_interval: float = 1.0, max_grace_seconds: float = 10.0):
        self.cp, self.node = control_plane, node
        self.images = {image: LocalImage.of(v) for image, v in images.items()}
        self.work = Path(work).resolve()
        self.gpus, self.extra_env = gpus, dict(extra_env or {})
        self.poll_interval, self.sync_interval, self.max_grace_seconds = poll_interval, sync_interval, max_grace_seconds
        self.errors: list[str] = []     # exceptions of the loop (tracebacks), for a test to show or assert on
        self._pods: dict[str, _Pod] = {}
        self._lock = threading.Lock()   # _pods, between the loop and the accessors
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created_node = False

    # --- lifecycle

    def start(self) -> "NodeAgent":
        if self._thread is not None:
            raise RuntimeError("NodeAgent already started")
        self.work.mkdir(parents=True, exist_ok=True)
        if self.cp.get(f"/api/v1/nodes/{self.node}", missing_ok=True) is None:
            self.cp.add_fake_node(self.node, gpus=self.gpus)
            self._created_node = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"node-agent-{self.node}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the loop, kill every process group the agent started (SIGTERM, SIGKILL after 2 s), wait
        for them, and remove the Node if the agent created it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            containers = [c for p in self._pods.values() for c in p.containers if c.running]
        for c in containers:
            _signal_group(c, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        for c in containers:
            try:
                c.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for c in containers:
            _signal_group(c, signal.SIGKILL)
            try:
                c.popen.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        if self._created_node:
            self._created_node = False
            try:
                self.cp.remove_fake_node(self.node)
            except Exception:  # noqa: BLE001 - the control plane may already be gone
                self._error("removing the node")

    def __enter__(self) -> "NodeAgent":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what a test may look at

    def log_path(self, namespace: str, pod: str, container: str | None = None) -> Path:
        """The log file of a container (the first one by default) of a pod the agent has seen."""
        p = self._find(namespace, pod)
        c = next((c for c in p.containers if container in (None, c.name)), None)
        if c is None:
            raise KeyError(f"pod {namespace}/{pod} has no container {container!r}")
        return c.log

    def log(self, namespace: str, pod: str, container: str | None = None) -> str:
        try:
            return self.log_path(namespace, pod, container).read_text(errors="replace")
        except OSError:
            return ""

    def pids(self) -> dict[tuple[str, str, str], int]:
        """(namespace, pod, container) -> pid of each process running now."""
        with self._lock:
            return {(p.namespace, p.name, c.name): c.popen.pid for p in self._pods.values()
                    for c in p.containers if c.running}

    def pod_folder(self, namespace: str, pod: str) -> Path:
        return self._find(namespace, pod).folder

    def _find(self, namespace: str, pod: str) -> _Pod:
        with self._lock:
            for p in self._pods.values():
                if (p.namespace, p.name) == (namespace, pod):
                    return p
        raise KeyError(f"the agent of {self.node} has not seen pod {namespace}/{pod}")

    # --- the loop

    def _error(self, what: str) -> None:
        self.errors.append(f"{what}: {traceback.format_exc()}")
        del self.errors[:-MAX_ERRORS]

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the next tick tries again; the test sees agent.errors
                self._error("listing pods")
            self._stop.wait(max(0.0, self.poll_interval - (time.monotonic() - began)))

    def _tick(self) -> None:
        selector = urllib.parse.quote(f"spec.nodeName={self.node}")
        pods = self.cp.request("GET", f"/api/v1/pods?fieldSelector={selector}", timeout=10)["items"]
        listed = {p["metadata"]["uid"]: p for p in pods}
        for uid, pod in listed.items():
            try:
                self._reconcile(pod)
            except Exception:  # noqa: BLE001
                self._error(f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}")
        with self._lock:
            gone = [p for uid, p in self._pods.items() if uid not in listed]
        for p in gone:  # deleted from the API without the final removal of ours (forced): kill, then forget
            if any(c.running for c in p.containers):
                if p.kill_at is None:
                    self._terminate(p, 0.0)
                self._poll_processes(p, None)
            else:
                with self._lock:
                    self._pods.pop(p.uid, None)

    def _reconcile(self, pod: dict) -> None:
        meta = pod["metadata"]
        uid, deleting = meta["uid"], bool(meta.get("deletionTimestamp"))
        with self._lock:
            p = self._pods.get(uid)
        if p is None:
            p = _Pod(uid, meta["namespace"], meta["name"], self.work / uid)
            p.containers = [_Container(c["name"], c, p.folder / "containers" / c["name"])
                            for c in pod["spec"].get("containers", [])]
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                p.state, p.phase = "finished", pod["status"]["phase"]  # finished before we knew it: leave it
            with self._lock:
                self._pods[uid] = p
        now = time.monotonic()
        if p.state in ("pending", "stuck"):
            if deleting:  # never started: terminal status, then the final removal
                p.state, p.phase = "finished", "Failed"
                for c in p.containers:
                    if not c.terminated:
                        c.exit_code, c.reason, c.finished_at = 137, "ContainerStatusUnknown", now_rfc3339()
                        c.message = "the pod was deleted before its container started"
                self._write_status(p, pod)
            elif p.state == "pending" and now >= p.next_try:
                self._try_start(p, pod)
            elif p.pull_backoff_at is not None and now >= p.pull_backoff_at:
                p.pull_backoff_at = None
                for c in p.containers:
                    if c.waiting and c.waiting[0] == "ErrImagePull":
                        c.waiting = ("ImagePullBackOff", c.waiting[1])
                self._write_status(p, pod)
        if p.state == "running":
            if deleting and p.kill_at is None:
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                self._terminate(p, min(float(grace), self.max_grace_seconds))
            self._poll_processes(p, pod)
            if p.state == "running" and now - p.last_sync >= self.sync_interval:
                p.last_sync = now
                self._resync_volumes(p, pod)
        if p.state == "finished" and deleting and not p.removed:
            self._final_delete(p)

    # --- starting a pod

    def _try_start(self, p: _Pod, pod: dict) -> None:
        p.next_try = time.monotonic() + 1.0
        spec = pod["spec"]
        try:
            if spec.get("restartPolicy", "Always") != "Never":
                raise _Unsupported(f"restartPolicy {spec.get('restartPolicy', 'Always')} is not supported by "
                                   "the test node agent (only Never)")
            if spec.get("initContainers"):
                raise _Unsupported("initContainers are not supported by the test node agent")
            missing = [c for c in p.containers if c.spec.get("image") not in self.images]
            if missing:
                for c in p.containers:
                    c.image = self.images.get(c.spec.get("image"))
                    if any(c is m for m in missing):
                        c.waiting = ("ErrImagePull",
                                     f'image "{c.spec.get("image")}" is not available on this test node')
                p.state, p.pull_backoff_at = "stuck", time.monotonic() + 1.0
                self._write_status(p, pod)
                return
            volumes = self._materialise_volumes(p, pod)
            plans = [self._plan(p, pod, c, volumes) for c in p.containers]
        except _Unsupported as exc:
            for c in p.containers:
                c.waiting = (UNSUPPORTED, str(exc))
            p.state = "stuck"
            self._write_status(p, pod)
            return
        except _NotReady as exc:
            for c in p.containers:
                c.waiting = (exc.reason, exc.message)
            self._write_status(p, pod)
            return
        if self._stop.is_set():  # stopping: start nothing stop() would miss
            return
        for c, (argv, env, cwd) in zip(p.containers, plans):
            self._spawn(c, argv, env, cwd)
        p.state, p.phase, p.last_sync = "running", "Running", time.monotonic()
        self._poll_processes(p, pod)  # a StartError (or an instant exit) is reported at once
        if p.state == "running":
            self._write_status(p, pod)

    def _get_object(self, kind: str, namespace: str, name: str) -> dict | None:
        return self.cp.get(f"/api/v1/namespaces/{namespace}/{kind}s/{name}", missing_ok=True)

    def _source_files(self, pod: dict, source: dict, kind: str, default_mode: int, volume: str) -> dict:
        """The files of a configMap/secret volume (or projected source): relative path -> (bytes, mode)."""
        ns = pod["metadata"]["namespace"]
        name = source.get("name") if kind == "configmap" else source.get("secretName", source.get("name"))
        obj = self._get_object(kind, ns, name)
        if obj is None:
            if source.get("optional"):
                return {}
            noun = "configmap" if kind == "configmap" else "secret"
            raise _NotReady("ContainerCreating",
                            f'MountVolume.SetUp failed for volume "{volume}" : {noun} "{name}" not found')
        data = _decoded(obj, secret=kind == "secret")
        if not source.get("items"):
            return {k: (v, default_mode) for k, v in data.items()}
        files = {}
        for item in source["items"]:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                noun = "configmap" if kind == "configmap" else "secret"
                raise _NotReady("ContainerCreating", f'MountVolume.SetUp failed for volume "{volume}" : '
                                f'{noun} references non-existent {noun} key: {item["key"]}')
            files[_safe_relative(item.get("path", item["key"]))] = (data[item["key"]], item.get("mode", default_mode))
        return files

    def _downward_files(self, pod: dict, items: Iterable[dict], default_mode: int) -> dict:
        files = {}
        for item in items:
            if "fieldRef" not in item:
                raise _Unsupported(f"downwardAPI item {item.get('path')!r}: only fieldRef is supported "
                                   "by the test node agent")
            value = field_ref(pod, item["fieldRef"]["fieldPath"], whole_maps=True)
            files[_safe_relative(item["path"])] = (value.encode(), item.get("mode", default_mode))
        return files

    def _token_file(self, pod: dict, source: dict, default_mode: int) -> dict:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {"expirationSeconds": source.get("expirationSeconds", 3600),
                                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                                   "uid": meta["uid"]}}
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        try:
            tr = self.cp.request("POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token",
                                 {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        except ApiError as exc:
            raise _NotReady("ContainerCreating", f"token for ServiceAccount {sa}: {exc}") from None
        return {_safe_relative(source["path"]): (tr["status"]["token"].encode(), source.get("mode", default_mode))}

    def _volume_files(self, pod: dict, vol: dict) -> dict | None:
        """The files of a volume that the agent writes (None: a plain folder, emptyDir)."""
        name = vol["name"]
        if "configMap" in vol:
            src = vol["configMap"]
            return self._source_files(pod, src, "configmap", src.get("defaultMode", 0o644), name)
        if "secret" in vol:
            src = vol["secret"]
            return self._source_files(pod, src, "secret", src.get("defaultMode", 0o644), name)
        if "downwardAPI" in vol:
            src = vol["downwardAPI"]
            return self._downward_files(pod, src.get("items", []), src.get("defaultMode", 0o644))
        if "projected" in vol:
            mode, files = vol["projected"].get("defaultMode", 0o644), {}
            for source in vol["projected"].get("sources", []):
                if "configMap" in source:
                    files.update(self._source_files(pod, source["configMap"], "configmap", mode, name))
                elif "secret" in source:
                    files.update(self._source_files(pod, source["secret"], "secret", mode, name))
                elif "downwardAPI" in source:
                    files.update(self._downward_files(pod, source["downwardAPI"].get("items", []), mode))
                elif "serviceAccountToken" in source:
                    files.update(self._token_file(pod, source["serviceAccountToken"], mode))
                else:
                    raise _Unsupported(f"volume {name!r}: projected source {sorted(source)} is not supported "
                                       "by the test node agent")
            return files
        return None

    def _materialise_volumes(self, p: _Pod, pod: dict) -> dict[str, Path]:
        """volume name -> local folder; writes them (retry-safe)."""
        out, synced = {}, []
        for vol in pod["spec"].get("volumes", []) or []:
            name = vol["name"]
            kinds = [k for k in vol if k != "name"]
            local = p.folder / "volumes" / name
            if "hostPath" in vol:
                host = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") in ("DirectoryOrCreate",):
                    host.mkdir(parents=True, exist_ok=True)
                out[name] = host
                continue
            if "emptyDir" in vol:
                local.mkdir(parents=True, exist_ok=True)
                out[name] = local
                continue
            if not any(k in vol for k in ("configMap", "secret", "downwardAPI", "projected")):
                raise _Unsupported(f"volume {name!r} ({', '.join(kinds)}) is not supported by the test node agent "
                                   "(configMap, secret, emptyDir, hostPath, downwardAPI, projected are)")
            files = self._volume_files(pod, vol)
            write_atomic(local, files)
            out[name] = local
            if "configMap" in vol or "secret" in vol:
                synced.append((local, vol, files))
        p.synced = synced
        return out

    def _resync_volumes(self, p: _Pod, pod: dict) -> None:
        """The kubelet's periodic sync: rewrite a ConfigMap/Secret volume whose content changed."""
        fresh = []
        for local, vol, fp in p.synced:
            try:
                files = self._volume_files(pod, vol)
            except (_NotReady, _Unsupported):  # deleted meanwhile: the kubelet keeps the last content
                fresh.append((local, vol, fp))
                continue
            if files != fp:
                write_atomic(local, files)
            fresh.append((local, vol, files))
        p.synced = fresh

    def _env_sources(self, pod: dict, c: dict) -> dict[str, str]:
        """The container's env before rewriting: envFrom, then env (with $(VAR) expansion)."""
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for src in c.get("envFrom", []) or []:
            ref = src.get("configMapRef") or src.get("secretRef")
            kind = "configmap" if "configMapRef" in src else "secret"
            obj = self._get_object(kind, ns, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise _NotReady("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
            for k, v in _decoded(obj, secret=kind == "secret").items():
                env[src.get("prefix", "") + k] = v.decode(errors="replace")
        for var in c.get("env", []) or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand(var.get("value", ""), env)
                continue
            vf = var["valueFrom"]
            if "fieldRef" in vf:
                env[name] = field_ref(pod, vf["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind = "secret" if "secretKeyRef" in vf else "configmap"
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                obj = self._get_object(kind, ns, ref["name"])
                data = _decoded(obj, secret=kind == "secret") if obj is not None else None
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    if data is None:
                        msg = f'{kind} "{ref["name"]}" not found'
                    else:
                        msg = (f"couldn't find key {ref['key']} in {'Secret' if kind == 'secret' else 'ConfigMap'} "
                               f"{ns}/{ref['name']}")
                    raise _NotReady("CreateContainerConfigError", msg)
                env[name] = data[ref["key"]].decode(errors="replace")
            else:
                raise _Unsupported(f"env {name}: valueFrom {sorted(vf)} is not supported by the test node agent")
        return env

    def _plan(self, p: _Pod, pod: dict, c: _Container, volumes: dict[str, Path]) -> tuple[list[str], dict, Path]:
        """argv (rewritten, expanded), the process env and the cwd of a container."""
        spec, image = c.spec, self.images[c.spec["image"]]
        c.image = image
        c.folder.mkdir(parents=True, exist_ok=True)
        mounts: dict[str, str] = {}
        for m in spec.get("volumeMounts", []) or []:
            if m["name"] not in volumes:
                raise _Unsupported(f"volumeMount {m['mountPath']}: no volume {m['name']!r}")
            local = volumes[m["name"]]
            if m.get("subPath"):
                local = local / _safe_relative(m["subPath"])
                if not local.exists():
                    local.mkdir(parents=True, exist_ok=True)
            mounts[m["mountPath"].rstrip("/") or "/"] = str(local)
        term_path = spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        c.termination_log.write_bytes(b"")  # exists, empty: the program may write it
        mounts.setdefault(term_path, str(c.termination_log))
        ordered = sorted(mounts.items(), key=lambda kv: len(kv[0]), reverse=True)

        port = urllib.parse.urlsplit(self.cp.server).port
        base = {"PATH": f"{image.root / 'bin'}{os.pathsep}{CONTAINER_PATH}",
                "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"],
                "HOME": str(p.folder / "home"), **self.extra_env, **image.env,
                "KUBERNETES_SERVICE_HOST": LOOPBACK, "KUBERNETES_SERVICE_PORT": str(port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(port), "KUBERNETES_PORT": f"tcp://{LOOPBACK}:{port}"}
        if (image.root / "pyvenv.cfg").exists():
            base["VIRTUAL_ENV"] = str(image.root)
        (p.folder / "home").mkdir(parents=True, exist_ok=True)
        from_pod = self._env_sources(pod, spec)
        raw = {**base, **from_pod}
        bin_dir = str(image.root / "bin")
        if not raw.get("PATH", "").startswith(bin_dir + os.pathsep):  # an image's or pod's PATH: bin/ still first
            raw["PATH"] = f"{bin_dir}{os.pathsep}{raw.get('PATH') or CONTAINER_PATH}"
        # only what the pod says is a path in the container: this machine's own paths (PATH, HOME, the image's
        # folder) are left alone, even where they start like a mountPath (a checkout under /tmp and the pods'
        # /tmp volume: PATH was rewritten into the volume and no program was found)
        env = {k: rewrite_path(v, ordered) if k in from_pod and k != "PATH" else v for k, v in raw.items()}

        command = [expand(s, raw) for s in spec.get("command") or []]
        args = [expand(s, raw) for s in spec.get("args") or []]
        if command:
            argv = command + args
        else:
            argv = image.entrypoint + (args if spec.get("args") else image.cmd)
        if not argv:
            raise _Unsupported(f"container {c.name}: no command or args, and the test image "
                               f"{spec['image']!r} has no ENTRYPOINT/CMD")
        argv = [rewrite_path(s, ordered) for s in argv]

        working = spec.get("workingDir")
        if working:
            mapped = rewrite_path(working, ordered)
            cwd = Path(mapped) if mapped != working else p.folder / "rootfs" / working.lstrip("/")
        elif image.workdir is not None:
            cwd = image.workdir
        else:
            cwd = p.folder
        cwd.mkdir(parents=True, exist_ok=True)
        return argv, env, cwd

    def _spawn(self, c: _Container, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        c.waiting, c.started_at = None, now_rfc3339()
        program = argv[0]
        exe = program if "/" in program else shutil.which(program, path=env.get("PATH", ""))
        if not exe or not os.access(exe, os.X_OK) or os.path.isdir(exe):
            c.exit_code, c.reason, c.finished_at = 128, "StartError", now_rfc3339()
            c.message = (f'exec: "{program}": executable file not found in $PATH' if "/" not in program
                         else f'exec: "{program}": no such file or directory (or not executable)')
            c.started_at = ""
            return
        with open(c.log, "ab") as out:
            c.popen = subprocess.Popen([exe, *argv[1:]], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)

    # --- running pods

    def _terminate(self, p: _Pod, grace: float) -> None:
        for c in p.containers:
            if c.running:
                _signal_group(c, signal.SIGTERM)
        p.kill_at = time.monotonic() + grace

    def _poll_processes(self, p: _Pod, pod: dict | None) -> None:
        changed = False
        if p.kill_at is not None and time.monotonic() >= p.kill_at:
            for c in p.containers:
                if c.running:
                    _signal_group(c, signal.SIGKILL)
        for c in p.containers:
            if not c.running:
                continue
            rc = c.popen.poll()
            if rc is None:
                continue
            _signal_group(c, signal.SIGKILL)  # PID 1 is gone: so is the rest of the container
            c.exit_code = rc if rc >= 0 else 128 - rc
            c.finished_at = now_rfc3339()
            c.reason = "Completed" if c.exit_code == 0 else "Error"
            c.message = self._termination_message(c)
            changed = True
        if all(c.terminated for c in p.containers):
            if p.state == "running":
                p.state = "finished"
                p.phase = "Succeeded" if all(c.exit_code == 0 for c in p.containers) else "Failed"
                changed = True
        if changed and pod is not None:
            self._write_status(p, pod)

    def _termination_message(self, c: _Container) -> str:
        try:
            msg = c.termination_log.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        except OSError:
            msg = ""
        if not msg and c.exit_code and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            msg = _tail(c.log, FALLBACK_LINES, FALLBACK_BYTES)
        return msg

    def _final_delete(self, p: _Pod) -> None:
        try:
            self.cp.request("DELETE", f"/api/v1/namespaces/{p.namespace}/pods/{p.name}",
                            {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                             "preconditions": {"uid": p.uid}}, timeout=10)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
        p.removed = True

    # --- status

    def _write_status(self, p: _Pod, pod: dict) -> None:
        now = now_rfc3339()
        statuses = [c.status() for c in p.containers]
        ready = p.phase == "Running" and all(c.running for c in p.containers)
        terminal = p.phase in ("Succeeded", "Failed")
        unready = [c.name for c in p.containers if not c.running]

        def cond(kind: str, ok: bool, reason: str = "", message: str = "") -> dict:
            out = {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None}
            old = next((x for x in pod.get("status", {}).get("conditions", []) if x["type"] == kind), None)
            out["lastTransitionTime"] = old["lastTransitionTime"] if old and old.get("status") == out["status"] \
                and old.get("lastTransitionTime") else now
            if reason:
                out["reason"] = reason
            if message:
                out["message"] = message
            return out
        not_ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        not_ready_msg = "" if terminal else f"containers with unready status: [{' '.join(unready)}]"
        conditions = [
            cond("PodReadyToStartContainers", not terminal),
            cond("Initialized", True, "PodCompleted" if terminal else ""),
            cond("ContainersReady", ready, "" if ready else not_ready_reason, "" if ready else not_ready_msg),
            cond("Ready", ready, "" if ready else not_ready_reason, "" if ready else not_ready_msg),
            cond("PodScheduled", True),
        ]
        status = {"phase": p.phase, "hostIP": LOOPBACK, "hostIPs": [{"ip": LOOPBACK}], "podIP": LOOPBACK,
                  "podIPs": [{"ip": LOOPBACK}], "startTime": p.start_time, "conditions": conditions,
                  "containerStatuses": statuses}
        if status == p.status_written:
            return
        try:
            self.cp.request("PATCH", f"/api/v1/namespaces/{p.namespace}/pods/{p.name}/status", {"status": status},
                            content_type="application/strategic-merge-patch+json", timeout=10)
        except ApiError as exc:
            if exc.status != 404:
                raise
        p.status_written = status


def field_ref(pod: dict, path: str, *, whole_maps: bool = False) -> str:
    """The value of a downward-API fieldRef (the kubelet's subset; `whole_maps`: metadata.labels and
    metadata.annotations as `k="v"` lines, for downwardAPI volumes)."""
    meta, spec = pod["metadata"], pod["spec"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    if whole_maps and path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f"{k}={json.dumps(v)}" for k, v in items)
    values = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
              "metadata.uid": meta.get("uid", ""), "spec.nodeName": spec.get("nodeName", ""),
              "spec.serviceAccountName": spec.get("serviceAccountName", ""),
              "status.podIP": LOOPBACK, "status.podIPs": LOOPBACK, "status.hostIP": LOOPBACK,
              "status.hostIPs": LOOPBACK}
    if path not in values:
        raise _Unsupported(f"fieldRef {path!r} is not supported by the test node agent")
    return values[path]


def _signal_group(c: _Container, sig: int) -> None:
    if c.popen is None:
        return
    try:
        os.killpg(c.popen.pid, sig)  # the session leader's pid is the group id
    except (ProcessLookupError, PermissionError):
        pass
