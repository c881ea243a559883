"""spec.cluster.nodes and gpusPerNode: the training workload as torchrun ranks. One pod with several GPUs runs
`asyncmtl-launch --standalone`; several pods are an Indexed Job whose pods meet at pod 0's stable DNS name
through a headless Service. Every manifest validates against the Kubernetes schemas."""
from __future__ import annotations

import pytest
import yaml

from asyncmtl.spec import parse_run
from tests.conftest import REPO

kubernetes_validate = pytest.importorskip("kubernetes_validate")

from asyncmtl_operator import children  # noqa: E402


def _run(**cluster):
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = "mtl"
    doc["spec"]["cluster"] = cluster
    return parse_run(doc)


def _valid(obj: dict) -> None:
    kubernetes_validate.validate(obj, "1.30", strict=True)


def _split(args: list[str]) -> tuple[list[str], list[str]]:
    """(launcher arguments, trainer arguments) of a container's args."""
    i = args.index("-m")
    assert args[i + 1] == "asyncmtl_trainer.train"
    return args[1:i], args[i + 2:]


def test_two_nodes_make_an_indexed_job_whose_pods_meet_at_pod_0_through_a_headless_service():
    from torch.distributed.run import get_args_parser

    from asyncmtl_trainer.train import build_arg_parser

    run = _run(nodes=2, gpusPerNode=4, backoffLimit=2)
    job = children.training_job(run, "team-x")
    svc = children.rendezvous_service(run)
    metrics = children.metrics_service(run)
    for obj in (job, svc, metrics):
        _valid(obj)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] == "mtl-ranks"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    pod_labels = spec["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())  # the Service selects the pods
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "rendezvous", "containerPort": 29400} in container["ports"]
    launcher, trainer = _split(container["args"])
    assert container["args"][0] == "asyncmtl-launch"
    # torchrun's own parser reads the launcher's arguments; the trainer's reads the rest
    t = get_args_parser().parse_args([*launcher, "asyncmtl_trainer.train", *trainer])
    # torchrun restarts nothing: the Job alone counts retries (before: both did, up to (backoffLimit + 1)^2 tries)
    assert (t.nnodes, t.nproc_per_node, t.rdzv_backend, t.max_restarts) == ("2", "4", "c10d", 0)
    assert spec["backoffLimit"] == 2
    # pod 0's hostname in the headless Service's domain, namespace-qualified (a short name may not resolve)
    assert t.rdzv_endpoint == "mtl-train-0.mtl-ranks.team-x.svc:29400"
    # NCCL needs more than the container runtime's 64 MiB /dev/shm: a memory-backed emptyDir, as KubeRay mounts
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    a = build_arg_parser().parse_args(trainer)
    assert a.run == "mtl" and a.namespace == "team-x" and a.resume
    # the metrics Service (and the PodMonitor) target rank 0 only: pod 0
    assert metrics["spec"]["selector"][children.COMPLETION_INDEX_LABEL] == "0"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                             "values": [2, 3]}}
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"


def test_one_pod_with_several_gpus_runs_standalone_torchrun_and_one_gpu_the_plain_trainer():
    job = children.training_job(_run(gpusPerNode=8), "ns")
    _valid(job)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["asyncmtl-launch", "--standalone"] and "--nproc-per-node=8" in args
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    assert any(v["name"] == "dshm" for v in job["spec"]["template"]["spec"]["volumes"])  # several ranks in one pod
    for cluster in ({"gpusPerNode": 1}, {}):
        job = children.training_job(_run(**cluster), "ns")
        _valid(job)
        c = job["spec"]["template"]["spec"]["containers"][0]
        assert c["args"][0] == "asyncmtl-train"
        gpus = cluster.get("gpusPerNode")
        assert c["resources"]["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    assert not children.multi_node(_run(gpusPerNode=8)) and children.multi_node(_run(nodes=3))


def test_the_pod_monitor_keeps_rank_0_and_single_pod_trainers_only():
    import re

    text = (REPO / "helm" / "asyncmtl-operator" / "templates" / "podmonitor.yaml").read_text()
    block = yaml.safe_load(text[text.index("      relabelings:"):].replace("{{- end }}", ""))
    keep = block["relabelings"][0]
    assert keep["action"] == "keep"
    assert keep["sourceLabels"] == ["__meta_kubernetes_pod_label_batch_kubernetes_io_job_completion_index"]
    regex = re.compile(f"^(?:{keep['regex']})$")  # Prometheus anchors relabel regexes
    assert regex.match("0") and regex.match("") and not regex.match("1") and not regex.match("10")
