"""What a real API server does to a run before the operator sees it, and what the operator must make
of it: CRD defaults stored on the object, integer resource quantities, the chart's defaults merged."""
from __future__ import annotations

import yaml

from asyncmtl.crd import crd
from asyncmtl.spec import parse_run
from tests.conftest import REPO
from tests.k8s_schema import apply_structural_defaults


def _stored(doc: dict) -> dict:
    """The object as the API server stores it after a create: with the CRD's defaults applied."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return apply_structural_defaults(schema, doc)


def _quickstart() -> dict:
    return yaml.safe_load((REPO / "manifests" / "examples" / "quickstart.yaml").read_text())


def test_the_charts_trainer_image_is_used_for_a_run_that_names_none():
    """The CRD used to default spec.cluster.image, so every stored run 'set' it and the chart's
    trainer image (ASYNCMTL_TRAINER_DEFAULTS) was silently ignored."""
    from asyncmtl_operator.controller import _with_defaults

    doc = _quickstart()
    doc["spec"]["cluster"] = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}  # the run sets its GPUs, no image
    run = parse_run(_stored(doc))
    cluster = _with_defaults(run.spec.cluster, {"image": "registry.example/asyncmtl/trainer:9.9",
                                                "imagePullPolicy": "Always", "backoffLimit": 7})
    assert (cluster.image, cluster.image_pull_policy, cluster.backoff_limit) == \
        ("registry.example/asyncmtl/trainer:9.9", "Always", 7)
    assert parse_run(_stored(_quickstart())).spec.cluster.image == "asyncmtl/trainer:0.1.0"  # the models' default


def test_a_runs_own_labels_keep_the_charts_kueue_queue_label():
    from asyncmtl_operator.controller import _with_defaults

    doc = _quickstart()
    doc["spec"]["cluster"] = {"labels": {"team": "nlp"}, "env": {"A": "1"}}
    run = parse_run(_stored(doc))
    cluster = _with_defaults(run.spec.cluster, {"labels": {"kueue.x-k8s.io/queue-name": "gpu-queue"},
                                                "env": {"A": "0", "B": "2"}})
    assert cluster.labels == {"kueue.x-k8s.io/queue-name": "gpu-queue", "team": "nlp"}
    assert cluster.env == {"A": "1", "B": "2"}


def test_an_integer_gpu_count_is_accepted_by_the_crd_and_the_models_and_reaches_the_job():
    """`nvidia.com/gpu: 1`, the way everyone writes it, failed every run in the operator."""
    import jsonschema

    from asyncmtl_operator.children import training_job
    from tests.k8s_schema import to_jsonschema

    doc = _quickstart()
    doc["spec"]["cluster"] = {"resources": {"requests": {"cpu": 4, "memory": "16Gi"},
                                            "limits": {"nvidia.com/gpu": 1, "memory": "32Gi"}}}
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.Draft4Validator(to_jsonschema(schema)).validate(doc)  # the CRD's schema, as test_crd reads it
    run = parse_run(_stored(doc))
    job = training_job(run, "team-a")
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"nvidia.com/gpu": "1", "memory": "32Gi"}}


def test_a_resource_quantity_that_is_not_one_is_refused_with_its_path():
    import pytest

    from asyncmtl.spec import SpecError

    for bad in (True, "1.2.3", "lots"):
        doc = _quickstart()
        doc["spec"]["cluster"] = {"resources": {"limits": {"nvidia.com/gpu": bad}}}
        with pytest.raises(SpecError, match=r"spec\.cluster\.resources\.limits\.nvidia\.com/gpu"):
            parse_run(doc)


def _chart_trainer_defaults() -> dict:
    """ASYNCMTL_TRAINER_DEFAULTS as the chart renders it with its default values."""
    import json

    from tests.cluster.operator_process import render_chart

    dep = next(o for o in render_chart() if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    return json.loads(env["ASYNCMTL_TRAINER_DEFAULTS"])


def _controller(**config):
    from asyncmtl_operator.controller import Controller, OperatorConfig
    from asyncmtl_operator.operator_metrics import OperatorMetrics

    return Controller(config=OperatorConfig(metrics_port=0, **config), kube=None, metrics=OperatorMetrics(),
                      post_event=lambda *a: None, prometheus=object())


def test_the_cpu_quickstart_asks_for_no_gpu_under_the_charts_defaults():
    """Before: the chart's default trainer resources (a GPU) went to the CPU quickstart, which then waited for a GPU."""
    from asyncmtl_operator import children

    defaults = _chart_trainer_defaults()
    assert defaults["resources"]["limits"].get("nvidia.com/gpu")  # the chart's default is for GPU runs
    doc = _stored(_quickstart())
    doc["metadata"]["namespace"] = "ns"
    doc["spec"]["storage"] = {"uri": "s3://runs/x"}
    run = _controller(trainer_defaults=defaults).parse(doc)
    limits = children.training_job(run, "ns")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and limits["memory"] == defaults["resources"]["limits"]["memory"]
    doc["spec"]["training"]["device"] = "auto"  # a run that may use a GPU still gets the chart's
    run = _controller(trainer_defaults=defaults).parse(doc)
    assert children.training_job(run, "ns")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "1"


def test_a_run_may_name_only_the_service_accounts_the_operator_allows():
    """The operator creates pods with its own rights: a run naming any ServiceAccount of its namespace would run
    its pods with that account's rights (the confused deputy)."""
    import pytest

    from asyncmtl.spec import SpecError

    doc = _stored(_quickstart())
    doc["metadata"]["namespace"] = "ns"
    doc["spec"]["storage"] = {"uri": "s3://runs/x"}
    doc["spec"]["cluster"] = {"serviceAccountName": "deployer"}
    with pytest.raises(SpecError, match="spec.cluster.serviceAccountName: 'deployer' is not a ServiceAccount"):
        _controller(trainer_defaults={"serviceAccountName": "asyncmtl-workload"}).parse(doc)
    assert _controller(allowed_service_accounts=["deployer"]).parse(doc).spec.cluster.service_account_name == "deployer"
    doc["spec"]["cluster"] = {"serviceAccountName": "asyncmtl-workload"}
    _controller(trainer_defaults={"serviceAccountName": "asyncmtl-workload"}).parse(doc)
