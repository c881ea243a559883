"""The NodeAgent of tests/cluster/node_agent.py runs a fake Node's pods as local processes, and the real
Job controller and garbage collector of the control plane act on what happens to them."""
from __future__ import annotations

import base64
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.cluster.controlplane import LOOPBACK, ControlPlane, wait_for
from tests.cluster.node_agent import LocalImage, NodeAgent
from tests.images.image_env import ImageEnv

REPO = Path(__file__).resolve().parents[2]

IMAGE = "registry.invalid/asyncmtl/fake-python:1"
MISSING_IMAGE = "registry.invalid/asyncmtl/never-here:1"


@pytest.fixture
def fake_image(tmp_path: Path) -> Path:
    """A stand-in for an image: a folder whose bin/ holds `python` (this interpreter)."""
    root = tmp_path / "fake-image"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").symlink_to(sys.executable)
    return root


@pytest.fixture
def agent(node_agent: Callable[..., NodeAgent], fake_image: Path) -> NodeAgent:
    return node_agent({IMAGE: fake_image})


def py(script: str, *args: str) -> list[str]:
    return ["python", "-c", textwrap.dedent(script), *args]


def job(name: str, node: str, command: list[str], *, completions: int = 1, indexed: bool = False,
        backoff: int = 0, volumes: list | None = None, **container: Any) -> dict:
    c = {"name": "main", "image": IMAGE, "command": command, **container}
    spec: dict = {"backoffLimit": backoff, "completions": completions, "parallelism": completions,
                  "template": {"spec": {"restartPolicy": "Never", "containers": [c], "volumes": volumes or [],
                                        "nodeSelector": {"kubernetes.io/hostname": node}}}}
    if indexed:
        spec["completionMode"] = "Indexed"
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def pod(name: str, node: str, command: list[str], image: str = IMAGE, **container: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": node},
                     "containers": [{"name": "main", "image": image, "command": command, **container}]}}


def jobs(ns: str) -> str:
    return f"/apis/batch/v1/namespaces/{ns}/jobs"


def job_pods(cp: ControlPlane, ns: str, name: str) -> list[dict]:
    return cp.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name%3D{name}")["items"]


def diagnose(cp: ControlPlane, ns: str, agent: NodeAgent) -> Callable[[], str]:
    def show() -> str:
        pods = cp.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        lines = [f"\n{p['metadata']['name']}: {p['status'].get('phase')} {p['status'].get('containerStatuses')}"
                 for p in pods]
        return "".join(lines) + "\nagent errors: " + "\n".join(agent.errors[-3:])
    return show


def wait_job(cp: ControlPlane, ns: str, name: str, kind: str, agent: NodeAgent, timeout: float = 30) -> dict:
    """Wait until the Job has condition `kind` (Complete, Failed) True; return that condition."""
    def cond():
        j = cp.get(f"{jobs(ns)}/{name}")
        return next((c for c in j.get("status", {}).get("conditions", [])
                     if c["type"] == kind and c["status"] == "True"), None)
    return wait_for(f"Job {ns}/{name} {kind}", cond, timeout, on_timeout=diagnose(cp, ns, agent))


def terminated(p: dict) -> dict:
    return p["status"]["containerStatuses"][0]["state"]["terminated"]


@pytest.mark.slow
def test_job_completes_with_configmap_volume_and_secret_env(control_plane: ControlPlane, namespace: str,
                                                            agent: NodeAgent):
    cp, ns = control_plane, namespace
    cp.request("POST", f"/api/v1/namespaces/{ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"greeting": "hello"}})
    cp.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
        "data": {"token": base64.b64encode(b"s3cret").decode()}})
    script = """
        import os, sys
        greeting, token = open(sys.argv[1]).read(), os.environ["TOKEN"]
        print(greeting, token, os.environ["MY_IP"], os.environ["MY_NAME"], os.getcwd(), flush=True)
        sys.exit(0 if (greeting, token) == ("hello", "s3cret") else 1)
    """
    cp.request("POST", jobs(ns), job(
        "hello", agent.node, py(script, "/etc/cfg/greeting"),
        volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}],
        volumeMounts=[{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True}],
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
             {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
             {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]))
    wait_job(cp, ns, "hello", "Complete", agent)

    (p,) = job_pods(cp, ns, "hello")
    assert p["status"]["phase"] == "Succeeded"
    assert p["status"]["podIP"] == LOOPBACK
    t = terminated(p)
    assert (t["exitCode"], t["reason"]) == (0, "Completed")
    log = agent.log(ns, p["metadata"]["name"])
    assert f"hello s3cret {LOOPBACK} {p['metadata']['name']}" in log, log
    job_status = cp.get(f"{jobs(ns)}/hello")["status"]
    assert job_status["succeeded"] == 1 and not job_status.get("failed")
    assert not agent.errors, agent.errors


@pytest.mark.slow
def test_indexed_job_pods_see_their_completion_index(control_plane: ControlPlane, namespace: str,
                                                     agent: NodeAgent, tmp_path: Path):
    cp, ns = control_plane, namespace
    out = tmp_path / "out"
    out.mkdir()
    script = """
        import os, pathlib, sys
        pathlib.Path(sys.argv[1], "index-" + os.environ["JOB_COMPLETION_INDEX"]).write_text(os.environ["HOSTNAME"])
    """
    cp.request("POST", jobs(ns), job("idx", agent.node, py(script, str(out)), completions=2, indexed=True))
    wait_job(cp, ns, "idx", "Complete", agent)

    assert sorted(f.name for f in out.iterdir()) == ["index-0", "index-1"]
    pods = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
            for p in job_pods(cp, ns, "idx")}
    assert sorted(pods) == ["0", "1"]
    for index, p in pods.items():
        # the Job controller names an Indexed Job's pods' hosts <job>-<index> (spec.hostname): HOSTNAME
        assert (out / f"index-{index}").read_text() == p["spec"]["hostname"] == f"idx-{index}"
        env = {e["name"]: e for e in p["spec"]["containers"][0]["env"]}
        assert "fieldRef" in env["JOB_COMPLETION_INDEX"]["valueFrom"]  # injected by the Job controller
    assert not agent.errors, agent.errors


@pytest.mark.slow
def test_failing_container_fails_the_job_with_its_termination_message(control_plane: ControlPlane,
                                                                        namespace: str, agent: NodeAgent):
    cp, ns = control_plane, namespace
    script = """
        import pathlib, sys
        log = pathlib.Path(sys.argv[1])
        if log.exists():  # as asyncmtl.termination does: only inside a container
            log.write_text("storage full: no space left on device")
        sys.exit(3)
    """
    cp.request("POST", jobs(ns), job("fails", agent.node, py(script, "/dev/termination-log"), backoff=0))
    cond = wait_job(cp, ns, "fails", "Failed", agent)
    assert cond["reason"] == "BackoffLimitExceeded", cond

    (p,) = job_pods(cp, ns, "fails")
    assert p["status"]["phase"] == "Failed"
    t = terminated(p)
    assert (t["exitCode"], t["reason"]) == (3, "Error")
    assert t["message"] == "storage full: no space left on device"
    assert t["startedAt"] and t["finishedAt"]
    assert not agent.errors, agent.errors


@pytest.mark.slow
def test_bare_pods_start_errors_fallback_messages_and_missing_secrets(control_plane: ControlPlane, namespace: str,
                                                                      agent: NodeAgent):
    cp, ns = control_plane, namespace
    pods = f"/api/v1/namespaces/{ns}/pods"
    cp.request("POST", pods, pod("fallback", agent.node, py("print('boom: the last words'); raise SystemExit(1)"),
                                 terminationMessagePolicy="FallbackToLogsOnError"))
    cp.request("POST", pods, pod("no-such-program", agent.node, ["no-such-program", "--help"]))
    cp.request("POST", pods, pod("needs-secret", agent.node, py("import os; assert os.environ['K'] == 'v'"),
                                 env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}]))

    def phase(name: str, want: str) -> dict | None:
        p = cp.get(f"{pods}/{name}")
        return p if p["status"].get("phase") == want else None

    p = wait_for("fallback Failed", lambda: phase("fallback", "Failed"), 30, on_timeout=diagnose(cp, ns, agent))
    assert "boom: the last words" in terminated(p)["message"]
    p = wait_for("no-such-program Failed", lambda: phase("no-such-program", "Failed"), 30)
    assert (terminated(p)["exitCode"], terminated(p)["reason"]) == (128, "StartError")
    assert "executable file not found" in terminated(p)["message"]

    def config_error():
        st = cp.get(f"{pods}/needs-secret")["status"].get("containerStatuses") or [{}]
        return st[0].get("state", {}).get("waiting")
    waiting = wait_for("CreateContainerConfigError", config_error, 30)
    assert waiting["reason"] == "CreateContainerConfigError" and 'secret "later" not found' in waiting["message"]
    cp.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"},
        "data": {"k": base64.b64encode(b"v").decode()}})
    wait_for("needs-secret Succeeded once the Secret exists", lambda: phase("needs-secret", "Succeeded"), 30,
             on_timeout=diagnose(cp, ns, agent))
    assert not agent.errors, agent.errors


@pytest.mark.slow
def test_unknown_image_stays_pending_in_image_pull_backoff(control_plane: ControlPlane, namespace: str,
                                                           agent: NodeAgent):
    cp, ns = control_plane, namespace
    cp.request("POST", f"/api/v1/namespaces/{ns}/pods", pod("unpullable", agent.node, ["true"], image=MISSING_IMAGE))

    def backoff():
        p = cp.get(f"/api/v1/namespaces/{ns}/pods/unpullable")
        st = p["status"].get("containerStatuses") or [{}]
        waiting = st[0].get("state", {}).get("waiting") or {}
        return (p, waiting) if waiting.get("reason") == "ImagePullBackOff" else None
    p, waiting = wait_for("ImagePullBackOff", backoff, 30, on_timeout=diagnose(cp, ns, agent))
    assert p["status"]["phase"] == "Pending"
    assert waiting["message"] == f'image "{MISSING_IMAGE}" is not available on this test node'
    time.sleep(1.0)
    assert cp.get(f"/api/v1/namespaces/{ns}/pods/unpullable")["status"]["phase"] == "Pending"
    assert not agent.pids()
    assert not agent.errors, agent.errors


@pytest.mark.slow
def test_configmap_update_reaches_a_running_pod(control_plane: ControlPlane, namespace: str, agent: NodeAgent):
    cp, ns = control_plane, namespace
    cms = f"/api/v1/namespaces/{ns}/configmaps"
    cp.request("POST", cms, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "control"},
                             "data": {"signal": "run"}})
    script = """
        import pathlib, sys, time
        path, deadline = pathlib.Path(sys.argv[1]), time.monotonic() + 25
        print("first:", path.read_text(), flush=True)
        while time.monotonic() < deadline:
            if path.read_text() == "stop":
                print("saw stop", flush=True)
                sys.exit(0)
            time.sleep(0.1)
        sys.exit(1)
    """
    cp.request("POST", jobs(ns), job("watcher", agent.node, py(script, "/control/signal"),
                                     volumes=[{"name": "control", "configMap": {"name": "control"}}],
                                     volumeMounts=[{"name": "control", "mountPath": "/control"}]))

    def running_pod():
        return next((p["metadata"]["name"] for p in job_pods(cp, ns, "watcher")
                     if p["status"].get("phase") == "Running"), None)
    name = wait_for("the watcher Running", running_pod, 30, on_timeout=diagnose(cp, ns, agent))
    wait_for("the first read", lambda: "first: run" in agent.log(ns, name), 10)
    began = time.monotonic()
    cp.request("PATCH", f"{cms}/control", {"data": {"signal": "stop"}}, content_type="application/merge-patch+json")
    wait_job(cp, ns, "watcher", "Complete", agent, timeout=15)
    assert time.monotonic() - began < 8
    assert "saw stop" in agent.log(ns, name)
    assert not agent.errors, agent.errors


@pytest.mark.slow
@pytest.mark.parametrize("propagation", ["Foreground", "Background"])
def test_deleting_the_job_stops_its_process_and_removes_the_pod(control_plane: ControlPlane, namespace: str,
                                                                agent: NodeAgent, tmp_path: Path, propagation: str):
    cp, ns = control_plane, namespace
    pids = tmp_path / "pids"
    script = """
        import os, pathlib, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stubborn: only SIGKILL after the grace period ends it
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
        child = subprocess.Popen([sys.executable, "-c", stubborn])  # same process group: killed with it
        pathlib.Path(sys.argv[1]).write_text(f"{os.getpid()} {child.pid}")
        time.sleep(300)
    """
    manifest = job("sleeper", agent.node, py(script, str(pids)))
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2
    cp.request("POST", jobs(ns), manifest)
    wait_for("the pid file", lambda: pids.exists() and len(pids.read_text().split()) == 2, 30,
             on_timeout=diagnose(cp, ns, agent))
    procs = [int(x) for x in pids.read_text().split()]
    assert procs[0] in agent.pids().values()

    cp.request("DELETE", f"{jobs(ns)}/sleeper", {"apiVersion": "v1", "kind": "DeleteOptions",
                                                 "propagationPolicy": propagation})

    def gone():
        return not job_pods(cp, ns, "sleeper") and cp.get(f"{jobs(ns)}/sleeper", missing_ok=True) is None
    wait_for("the Job and its pod gone", gone, 30, on_timeout=diagnose(cp, ns, agent))

    def dead(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    wait_for("both processes dead", lambda: all(dead(pid) for pid in procs), 5)
    assert not agent.pids()
    assert not agent.errors, agent.errors


@pytest.mark.slow
def test_an_image_env_is_an_image_and_args_alone_name_the_program(control_plane: ControlPlane, namespace: str,
                                                                   node_agent: Callable[..., NodeAgent]):
    """The operator image's environment (built by its Dockerfile's steps, cached) runs a pod whose container has
    only `args`, as our images have no ENTRYPOINT: the first argument is the program."""
    env = ImageEnv("operator", REPO / "operator" / "Dockerfile", REPO).build()
    image = LocalImage.of(env)
    agent = node_agent({"registry.invalid/asyncmtl/operator:test": image})
    cp, ns = control_plane, namespace
    script = "import os, sys, asyncmtl_operator, kopf; print(os.getcwd(), sys.prefix, os.environ['VIRTUAL_ENV'])"
    manifest = job("op", agent.node, [])
    c = manifest["spec"]["template"]["spec"]["containers"][0]
    del c["command"]
    c.update(image="registry.invalid/asyncmtl/operator:test", args=["python", "-c", script])
    cp.request("POST", jobs(ns), manifest)
    wait_job(cp, ns, "op", "Complete", agent)
    (p,) = job_pods(cp, ns, "op")
    words = agent.log(ns, p["metadata"]["name"]).split()
    assert words == [str(image.workdir), str(env.venv), str(env.venv)], words
    assert not agent.errors, agent.errors


def test_paths_are_rewritten_and_variables_expanded_like_the_kubelet(tmp_path: Path):
    """The agent's string rules, without a cluster: mountPaths (longest first, `--flag=PATH` too) become
    local folders; `$(VAR)` expands, `$$` escapes, an undefined variable stays; volumes swap atomically."""
    from tests.cluster.node_agent import expand, rewrite_path, write_atomic

    mounts = sorted({"/work": "/l/work", "/work/data": "/l/data", "/tmp": "/tmp/agent/tmp"}.items(),
                    key=lambda kv: len(kv[0]), reverse=True)
    assert rewrite_path("/work", mounts) == "/l/work"
    assert rewrite_path("/work/data/x.json", mounts) == "/l/data/x.json"
    assert rewrite_path("/work/dataset", mounts) == "/l/work/dataset"
    assert rewrite_path("--workdir=/work/ckpt", mounts) == "--workdir=/l/work/ckpt"
    assert rewrite_path("/tmp/x", mounts) == "/tmp/agent/tmp/x"
    assert rewrite_path("/workspace", mounts) == "/workspace"
    assert rewrite_path("cat /work/x", mounts) == "cat /work/x"  # inside a longer string: not rewritten
    assert expand("$(A)/b $(NOPE) $$(A) $$", {"A": "/a"}) == "/a/b $(NOPE) $(A) $"

    vol = tmp_path / "vol"
    write_atomic(vol, {"a": (b"1", 0o644), "sub/b": (b"2", 0o600)})
    assert (vol / "a").read_text() == "1" and (vol / "sub" / "b").read_text() == "2"
    first = os.readlink(vol / "..data")
    write_atomic(vol, {"a": (b"3", 0o644)})
    assert (vol / "a").read_text() == "3" and not (vol / "sub").exists()
    assert os.readlink(vol / "..data") != first and not (vol / first).exists()


@pytest.mark.slow
def test_an_image_under_a_folder_a_pod_mounts_over_still_runs(control_plane: ControlPlane, namespace: str,
                                                              node_agent: Callable[..., NodeAgent], tmp_path: Path):
    """The image's folder is this machine's (here under /tmp, as a checkout in /tmp is) while the pod mounts an
    emptyDir at /tmp: the agent's own PATH must not be rewritten into the volume (before: StartError, "executable
    file not found in $PATH", which failed every scenario of a checkout under /tmp)."""
    root = tmp_path / "image-under-tmp"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").symlink_to(sys.executable)
    assert str(root).startswith("/tmp/")
    agent = node_agent({IMAGE: root})
    cp = control_plane
    spec = job("under-tmp", agent.node, py("import os, sys; sys.exit(0 if os.path.isdir('/tmp') else 1)"),
               volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}], volumes=[{"name": "tmp", "emptyDir": {}}])
    cp.request("POST", jobs(namespace), spec)
    wait_job(cp, namespace, "under-tmp", "Complete", agent)
