"""The control plane of tests/cluster/controlplane.py is a real one: versions, CRD validation and
defaulting, the scheduler with extended resources, the garbage collector, quota admission, RBAC with
ServiceAccount tokens, and nothing listening beyond loopback."""
from __future__ import annotations

import copy
import ipaddress
import json
import os
from pathlib import Path

import pytest
import yaml

from tests.cluster.controlplane import LOOPBACK, ApiError, ControlPlane, FakeNode, wait_for

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "asyncmtlrun.yaml"
QUICKSTART = REPO / "manifests" / "examples" / "quickstart.yaml"
RUNS = "/apis/asyncmtl.dev/v1alpha1/namespaces/{ns}/asyncmtlruns"


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane) -> str:
    control_plane.kubectl("apply", "-f", str(CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/asyncmtlruns.asyncmtl.dev")
    return "asyncmtlruns.asyncmtl.dev"


def job(name: str, *, gpus: int = 0, suspend: bool = False, owner: dict | None = None) -> dict:
    container = {"name": "main", "image": "registry.invalid/never-pulled:0", "command": ["true"]}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    meta: dict = {"name": name}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"suspend": suspend, "backoffLimit": 0,
                     "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}}


def job_pod(cp: ControlPlane, ns: str, name: str) -> dict:
    def one():
        pods = cp.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name%3D{name}")["items"]
        return pods[0] if pods else None
    return wait_for(f"the pod of Job {ns}/{name}", one, 60)


@pytest.mark.slow
def test_version(control_plane: ControlPlane):
    assert control_plane.get("/version")["gitVersion"].startswith("v1.37.")
    client = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"].startswith("v1.37.")
    assert client["serverVersion"]["gitVersion"] == control_plane.get("/version")["gitVersion"]


@pytest.mark.slow
def test_quickstart_is_accepted_and_defaulted(control_plane: ControlPlane, crd: str, namespace: str):
    control_plane.kubectl("apply", "-n", namespace, "-f", str(QUICKSTART))
    run = json.loads(control_plane.kubectl("get", "-n", namespace, "asyncmtlrun/quickstart", "-o", "json").stdout)
    spec = run["spec"]
    assert spec["model"]["pooling"] == "mean"           # as written
    assert spec["model"]["dropout"] == 0.1              # CRD defaults, absent from the file
    assert spec["method"] == "asyncKD"
    assert spec["training"]["precision"] == "fp32"
    assert [t["name"] for t in spec["tasks"]] == ["sentiment", "topic", "same-topic", "rating", "sarcasm"]


@pytest.mark.slow
def test_duplicate_task_name_is_refused(control_plane: ControlPlane, crd: str, namespace: str):
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["metadata"]["name"] = "dup"
    doc["spec"]["tasks"].append(copy.deepcopy(doc["spec"]["tasks"][0]))
    with pytest.raises(ApiError) as err:
        control_plane.request("POST", RUNS.format(ns=namespace), doc)
    assert err.value.status == 422
    assert "spec.tasks" in str(err.value), err.value.body


@pytest.mark.slow
def test_scheduler_binds_gpu_pods_to_fake_node(control_plane: ControlPlane, namespace: str, gpu_node: FakeNode):
    cp = control_plane
    cp.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job("gpu-a", gpus=1))
    first = wait_for("the first GPU pod bound", lambda: job_pod(cp, namespace, "gpu-a")["spec"].get("nodeName"), 60)
    assert first == gpu_node.name

    cp.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job("gpu-b", gpus=1))

    def unschedulable():
        pod = job_pod(cp, namespace, "gpu-b")
        conds = {c["type"]: c for c in pod.get("status", {}).get("conditions", [])}
        c = conds.get("PodScheduled")
        return (pod, c) if c and c["status"] == "False" else None
    pod, cond = wait_for("the second GPU pod to be unschedulable", unschedulable, 60)
    assert cond["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in cond["message"], cond
    assert not pod["spec"].get("nodeName")
    assert pod["status"]["phase"] == "Pending"


@pytest.mark.slow
def test_deleting_the_owner_garbage_collects_the_job(control_plane: ControlPlane, crd: str, namespace: str):
    cp = control_plane
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["metadata"]["name"] = "owner"
    run = cp.request("POST", RUNS.format(ns=namespace), doc)
    owner = {"apiVersion": "asyncmtl.dev/v1alpha1", "kind": "AsyncMTLRun", "name": "owner",
             "uid": run["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    cp.request("POST", jobs, job("owned", suspend=True, owner=owner))
    cp.request("DELETE", f"{RUNS.format(ns=namespace)}/owner")
    # The garbage collector learns about a new CRD at its next discovery sync (every 30 s).
    wait_for("the garbage collector to delete the Job", lambda: cp.get(f"{jobs}/owned", missing_ok=True) is None,
             120, 1.0, on_timeout=lambda: cp.processes["kube-controller-manager"].tail(20))


@pytest.mark.slow
def test_resource_quota_refuses_an_over_quota_pod(control_plane: ControlPlane, namespace: str):
    cp = control_plane
    cp.request("POST", f"/api/v1/namespaces/{namespace}/resourcequotas", {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "small"},
        "spec": {"hard": {"requests.cpu": "1", "pods": "2"}}})
    wait_for("the quota controller to fill in status.hard",
             lambda: cp.get(f"/api/v1/namespaces/{namespace}/resourcequotas/small").get("status", {}).get("hard"), 60)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big"},
           "spec": {"containers": [{"name": "main", "image": "registry.invalid/never-pulled:0",
                                    "resources": {"requests": {"cpu": "2"}}}]}}
    with pytest.raises(ApiError) as err:
        cp.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    assert err.value.status == 403
    assert "exceeded quota: small" in str(err.value)
    pod["metadata"]["name"], pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "fits", "500m"
    cp.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)


@pytest.mark.slow
def test_serviceaccount_kubeconfig_goes_through_rbac(control_plane: ControlPlane, namespace: str):
    cp = control_plane
    cp.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kc = cp.serviceaccount_kubeconfig("reader", namespace)
    who = cp.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=kc).stdout
    assert who == f"system:serviceaccount:{namespace}:reader"
    denied = cp.kubectl("get", "pods", kubeconfig=kc, check=False)
    assert denied.returncode and "forbidden" in denied.stderr.lower()
    cp.kubectl("create", "rolebinding", "reader-view", "--clusterrole=view",
               f"--serviceaccount={namespace}:reader", "-n", namespace)
    wait_for("RBAC to allow the ServiceAccount",
             lambda: cp.kubectl("get", "pods", kubeconfig=kc, check=False).returncode == 0, 30)


def _listening_sockets(pids: set[int]) -> list[tuple[str, int]]:
    """(local address, port) of the TCP sockets in LISTEN state owned by `pids` (Linux /proc)."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if v6:
                words = [addr_hex[i:i + 8] for i in range(0, 32, 8)]
                raw = b"".join(bytes.fromhex(w)[::-1] for w in words)
                addr = str(ipaddress.IPv6Address(raw))
            else:
                addr = ".".join(str(b) for b in bytes.fromhex(addr_hex)[::-1])
            found.append((addr, int(port_hex, 16)))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_every_component_listens_on_loopback_only(control_plane: ControlPlane):
    pids = {p.popen.pid for p in control_plane.processes.values() if p.alive()}
    assert len(pids) == 4
    sockets = _listening_sockets(pids)
    assert sockets, "no listening sockets found"
    assert {a for a, _ in sockets} == {LOOPBACK}, sockets
    ports = {p for _, p in sockets}
    assert {control_plane.apiserver_port, control_plane.etcd_port, control_plane.controller_manager_port,
            control_plane.scheduler_port} <= ports
