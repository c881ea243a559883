"""spec.cluster.podTemplate: a partial PodTemplateSpec merged under the operator's pods (affinity,
runtimeClassName, extra Secret/CSI volumes, sidecars), the operator's own settings kept."""
from __future__ import annotations

import copy

import pytest
import yaml

from asyncmtl.spec import SpecError, parse_run
from tests.conftest import REPO

kubernetes_validate = pytest.importorskip("kubernetes_validate")

AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}]}]}}}
OVERLAY = {
    "metadata": {"labels": {"team": "nlp", "asyncmtl.dev/run": "spoofed"}, "annotations": {"a": "b"}},
    "spec": {
        "affinity": AFFINITY, "runtimeClassName": "nvidia",
        "securityContext": {"runAsNonRoot": False, "supplementalGroups": [2000]},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "volumes": [{"name": "hf-token", "secret": {"secretName": "hf"}},
                    {"name": "dataset", "csi": {"driver": "s3.csi.aws.com", "volumeAttributes": {"bucket": "d"}}}],
        "containers": [
            {"name": "trainer", "env": [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "HOME", "value": "/root"}],
             "volumeMounts": [{"name": "hf-token", "mountPath": "/var/run/hf", "readOnly": True}],
             "securityContext": {"readOnlyRootFilesystem": False}},
            {"name": "log-shipper", "image": "fluent/fluent-bit:3.1",
             "resources": {"limits": {"memory": "64Mi"}}},
        ],
    },
}


def _run(overlay: dict | None, **cluster) -> dict:
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "quickstart.yaml").read_text())
    doc["spec"]["cluster"] = {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                               "effect": "NoSchedule"}], **cluster}
    if overlay is not None:
        doc["spec"]["cluster"]["podTemplate"] = copy.deepcopy(overlay)
    return doc


def _pods(doc: dict) -> list[dict]:
    from asyncmtl_operator import children

    run = parse_run(doc)
    return [children.training_job(run, "team-a"), children.inference_job(run, "team-a", "rating", 200, 4)]


def test_the_overlay_reaches_training_and_inference_pods_under_the_operators_settings():
    plain = {j["metadata"]["name"]: j for j in _pods(_run(None))}
    for job in _pods(_run(OVERLAY)):
        kubernetes_validate.validate(job, "1.30", strict=True)
        tpl, own = job["spec"]["template"], plain[job["metadata"]["name"]]["spec"]["template"]
        spec, own_spec = tpl["spec"], own["spec"]
        assert spec["affinity"] == AFFINITY and spec["runtimeClassName"] == "nvidia"
        assert tpl["metadata"]["labels"]["team"] == "nlp" and tpl["metadata"]["annotations"] == {"a": "b"}
        assert tpl["metadata"]["labels"]["asyncmtl.dev/run"] == own["metadata"]["labels"]["asyncmtl.dev/run"]
        # the operator's security settings win; the overlay's other keys are added
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["supplementalGroups"] == [2000]
        assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu", "dedicated"]
        assert [v["name"] for v in spec["volumes"]] == [v["name"] for v in own_spec["volumes"]] + ["hf-token", "dataset"]
        main, sidecar = spec["containers"]
        own_main = own_spec["containers"][0]
        assert (main["name"], main["image"], main["args"]) == (own_main["name"], own_main["image"], own_main["args"])
        assert main["securityContext"] == own_main["securityContext"]  # readOnlyRootFilesystem stays True
        env = {e["name"]: e.get("value") for e in main["env"]}
        assert env["NCCL_DEBUG"] == "INFO" and env["HOME"] == {e["name"]: e.get("value") for e in own_main["env"]}["HOME"]
        assert main["volumeMounts"][-1]["name"] == "hf-token" and main["resources"] == own_main["resources"]
        assert sidecar["name"] == "log-shipper" and spec["restartPolicy"] == "Never"


def test_no_overlay_leaves_the_pods_as_they_were():
    from asyncmtl_operator.pod_template import apply_overlay

    job = _pods(_run(None))[0]
    assert apply_overlay(copy.deepcopy(job["spec"]["template"]), None) == job["spec"]["template"]
    empty = _pods(_run({}))[0]
    assert empty["spec"]["template"] == job["spec"]["template"]


@pytest.mark.parametrize("overlay, where", [
    ({"spec": {"restartPolicy": "Always"}}, "spec.restartPolicy cannot be overridden"),
    ({"spec": {"serviceAccountName": "x"}}, "set cluster.serviceAccountName"),
    ({"spec": {"containers": [{"name": "trainer", "image": "evil:1"}]}}, "spec.containers[0].image cannot be overridden"),
    ({"spec": {"containers": [{"name": "sidecar"}]}}, "a sidecar needs an image"),
    ({"spec": {"volumes": [{"name": "control", "emptyDir": {}}]}}, "one of the pods' own volumes"),
    ({"spec": {"containers": {"name": "x"}}}, "spec.containers must be a list of objects"),
    ({"metadata": {"labels": {"a": 1}}}, "podTemplate.metadata.labels.a"),
])
def test_what_the_operator_owns_is_refused_with_its_path(overlay, where):
    with pytest.raises(SpecError) as info:
        parse_run(_run(overlay))
    text = str(info.value) + " ".join(f"{i.path}: {i.message}" for i in info.value.issues)
    assert "cluster.podTemplate" in text and where in text, text


def test_the_charts_overlay_and_the_runs_merge_the_runs_winning():
    from asyncmtl_operator.controller import _with_defaults

    run = parse_run(_run({"spec": {"runtimeClassName": "nvidia-cdi", "containers": [
        {"name": "trainer", "env": [{"name": "A", "value": "run"}]}]}}))
    cluster = _with_defaults(run.spec.cluster, {"podTemplate": {"spec": {
        "runtimeClassName": "nvidia", "priorityClassName": "x", "containers": [
            {"name": "trainer", "env": [{"name": "A", "value": "chart"}, {"name": "B", "value": "chart"}]}]}}})
    spec = cluster.pod_template.spec
    assert spec["runtimeClassName"] == "nvidia-cdi" and spec["priorityClassName"] == "x"
    assert spec["containers"][0]["env"] == [{"name": "A", "value": "run"}, {"name": "B", "value": "chart"}]


@pytest.mark.parametrize("spec, path", [
    ({"hostNetwork": True}, "spec.hostNetwork"),
    ({"hostPID": True}, "spec.hostPID"),
    ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "spec.volumes[0].hostPath"),
    ({"containers": [{"name": "side", "image": "busybox", "securityContext": {"privileged": True}}]},
     "spec.containers[0].securityContext.privileged"),
    ({"initContainers": [{"name": "init", "image": "busybox", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]},
     "spec.initContainers[0].securityContext.capabilities.add"),
    ({"containers": [{"name": "side", "image": "busybox", "ports": [{"containerPort": 80, "hostPort": 80}]}]},
     "spec.containers[0].ports[0].hostPort"),
    ({"containers": [{"name": "side", "image": "busybox", "securityContext": {"runAsUser": 0}}]},
     "spec.containers[0].securityContext.runAsUser"),
    ({"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}]}}, "spec.securityContext.sysctls"),
    ({"containers": [{"name": "trainer", "securityContext": {"allowPrivilegeEscalation": True}}]},
     "spec.containers[0].securityContext.allowPrivilegeEscalation"),
])
def test_an_overlay_cannot_make_pods_the_restricted_profile_refuses(spec, path):
    """The confused deputy: the operator creates pods with its own rights, so an overlay must not smuggle in host
    namespaces, hostPath, privileged or escalating containers (before: only the namespace's Pod Security
    admission, where enforced, stopped them)."""
    from asyncmtl.spec import SpecError, parse_run
    from tests.conftest import builtin_task, run_doc

    with pytest.raises(SpecError) as info:
        parse_run(run_doc([builtin_task("sentiment")], cluster={"podTemplate": {"spec": spec}}))
    assert "spec.cluster.podTemplate.spec: " in str(info.value) and path in str(info.value)


def test_sidecars_get_the_restricted_container_defaults():
    from asyncmtl.spec import parse_run
    from asyncmtl_operator import children
    from tests.conftest import builtin_task, run_doc

    run = parse_run(run_doc([builtin_task("sentiment")], cluster={"podTemplate": {"spec": {
        "containers": [{"name": "side", "image": "busybox"}], "volumes": [{"name": "cache", "emptyDir": {}}]}}}))
    pod = children.training_job(run, "ns")["spec"]["template"]["spec"]
    side = next(c for c in pod["containers"] if c["name"] == "side")
    assert side["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
