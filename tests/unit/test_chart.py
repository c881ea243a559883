"""The Helm chart, rendered offline with Helm's own SDK (helm-python-sdk), linted, and every rendered
object validated against the Kubernetes schemas (kubernetes-validate) or its CRD's schema."""
from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

helm_python = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

CHART = REPO / "helm" / "asyncmtl-operator"
KUBE_VERSION = "1.30"
# The second values file: namespaced mode, monitoring on, HA (peering standby), defaults for runs.
HA_VALUES = {
    "watchNamespaces": ["team-a", "team-b"],
    "peering": {"enabled": True, "name": "asyncmtl", "standbyReplicas": 1},
    "monitoring": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True},
                   "prometheusRules": {"enabled": True}},
    "storage": {"uri": "s3://asyncmtl-runs/prod", "endpointUrl": "http://minio.minio:9000", "credentialsSecret": "s3"},
    "trainer": {"queueName": "gpu-queue", "priorityClassName": "batch-high",
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "operator": {"logLevel": "debug"},
}


def render(values: dict) -> list[dict]:
    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values, name="asyncmtl", namespace="asyncmtl-system", is_install=True)
    finally:
        chart.close()
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def crd_schemas() -> dict[tuple[str, str], dict]:
    out = {}
    for f in (CHART / "crds").glob("*.yaml"):
        for crd in yaml.safe_load_all(f.read_text()):
            for v in crd["spec"]["versions"]:
                out[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


@pytest.fixture(scope="module", params=["defaults", "namespaced-monitoring-ha"])
def objects(request) -> list[dict]:
    return render({} if request.param == "defaults" else HA_VALUES)


def test_lint_is_clean():
    report = helm_python.lint(str(CHART), strict=True)
    assert report["errors"] == [] and not [m for m in report["messages"] if m["severity"] >= 2], report
    report = helm_python.lint(str(CHART), HA_VALUES, strict=True)
    assert report["errors"] == [] and not [m for m in report["messages"] if m["severity"] >= 2], report


def test_every_rendered_object_validates(objects):
    own = crd_schemas()
    checked = set()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in own:
            jsonschema.Draft4Validator({k: v for k, v in own[key].items()}).validate(obj)
        elif obj["apiVersion"].startswith("monitoring.coreos.com/"):
            # prometheus-operator's schemas are not bundled offline: check the parts it requires
            assert obj["kind"] in ("PodMonitor", "ServiceMonitor", "PrometheusRule") and obj["spec"]
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        checked.add(obj["kind"])
    assert {"Deployment", "ServiceAccount", "Service", "ConfigMap"} <= checked


def test_default_mode_is_cluster_wide_with_one_recreate_replica():
    objs = render({})
    kinds = [o["kind"] for o in objs]
    assert "ClusterRole" in kinds and "Role" not in kinds
    assert not {"PodMonitor", "ServiceMonitor", "PrometheusRule"} & set(kinds)  # auto, and no such API offline
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and "--standalone" in args


def test_namespaced_monitoring_ha_mode():
    objs = render(HA_VALUES)
    roles = [o for o in objs if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    # namespaced: the operator holds no cluster-wide grant (the users' aggregated roles are not the operator's)
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")
                and o["metadata"]["name"] not in ("asyncmtl-edit", "asyncmtl-view")]
    assert not [o for o in objs if o["kind"] == "ClusterRoleBinding"]
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert dep["spec"]["replicas"] == 2 and "--peering=asyncmtl" in c["args"]
    assert {"--namespace=team-a", "--namespace=team-b"} <= set(c["args"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["ASYNCMTL_DEFAULT_STORAGE_URI"] == "s3://asyncmtl-runs/prod"
    defaults = json.loads(env["ASYNCMTL_TRAINER_DEFAULTS"])
    assert defaults["labels"] == {"kueue.x-k8s.io/queue-name": "gpu-queue"} and defaults["priorityClassName"] == "batch-high"
    assert defaults["serviceAccountName"] == "asyncmtl-workload"
    # the operator's trainer defaults are valid spec.cluster values
    from asyncmtl.spec import ClusterSpec
    ClusterSpec.model_validate(defaults)
    pm = next(o for o in objs if o["kind"] == "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    rules = next(o for o in objs if o["kind"] == "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ["AsyncMTLRunMetricsStale", "AsyncMTLSignalNotAcknowledged", "AsyncMTLTaskStalled"]
    assert any(o["kind"] == "KopfPeering" for o in objs)


def test_restricted_security_context_on_the_operator_and_every_job_it_creates(objects):
    from asyncmtl_operator import children

    (dep,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"] == children.POD_SECURITY_CONTEXT
    assert pod["containers"][0]["securityContext"] == children.CONTAINER_SECURITY_CONTEXT
    # the Pod Security "restricted" profile's requirements
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    csc = pod["containers"][0]["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"]
    probe = pod["containers"][0]["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and any(a.startswith("--liveness=http://0.0.0.0:") for a in pod["containers"][0]["args"])


def test_workload_service_account_can_do_nothing(objects):
    sas = [o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "asyncmtl-workload"]
    assert all(sa["automountServiceAccountToken"] is False for sa in sas)
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert all(s["name"] != "asyncmtl-workload" for b in bindings for s in b["subjects"])


def test_dashboard_configmap_carries_the_dashboard():
    objs = render({})
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["asyncmtl.json"]) == json.loads((CHART / "dashboards" / "asyncmtl.json").read_text())


def test_values_schema_rejects_bad_values():
    for bad in ({"monitoring": {"podMonitor": {"enabled": "sometimes"}}}, {"replicaCount": 2},
                {"storage": {"uri": "file:///data"}}, {"unknownKey": 1}):
        with pytest.raises(helm_python.HelmValuesError):
            render(bad)


def test_notes_tell_what_to_apply_next():
    chart = helm_python.Chart.load(str(CHART))
    try:
        notes = chart.render({}, name="asyncmtl", namespace="asyncmtl-system", is_install=True)["asyncmtl-operator/templates/NOTES.txt"]
    finally:
        chart.close()
    assert "kubectl apply -f manifests/examples/quickstart.yaml" in notes and "kubectl get asyncmtlruns" in notes


def test_chart_crd_is_the_generated_crd():
    assert (CHART / "crds" / "asyncmtlrun.yaml").read_text() == (REPO / "crds" / "asyncmtlrun.yaml").read_text()


def test_install_manifests_equal_the_chart_rendered_with_defaults():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_install", REPO / "helm" / "render_install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (REPO / "manifests" / "install" / "asyncmtl-operator.yaml").read_text() == mod.render(), \
        "run `make install-manifests`"


def _trainer_defaults(objects: list[dict]) -> dict:
    dep = next(o for o in objects if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    return json.loads(env.get("ASYNCMTL_TRAINER_DEFAULTS") or "{}")


@pytest.mark.parametrize("values", [{}, HA_VALUES], ids=["cluster-wide", "namespaced"])
def test_the_pods_service_account_exists_wherever_runs_may_be_applied(values):
    """The ServiceAccount admission plugin refuses a pod naming an account its namespace lacks. With the
    defaults (cluster-wide) runs may be applied in any namespace: the pods must name no account (each
    namespace's `default` exists); namespaced, the account must exist in every watched namespace."""
    objects = render(values)
    name = _trainer_defaults(objects).get("serviceAccountName")
    watched = values.get("watchNamespaces")
    if not watched:
        assert name is None
    else:
        have = {o["metadata"]["namespace"] for o in objects
                if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == name}
        assert name and have >= set(watched)


def test_the_service_monitor_keeps_the_operators_namespace_label():
    """The operator's series carry the run's `namespace`; without honorLabels Prometheus renames it
    `exported_namespace` and every panel and rule joining on namespace returns nothing."""
    monitors = [o for o in render(HA_VALUES) if o["kind"] == "ServiceMonitor"]
    assert monitors and all(e.get("honorLabels") is True for m in monitors for e in m["spec"]["endpoints"])


def test_users_get_edit_and_view_roles_aggregated_into_the_default_ones():
    roles = {o["metadata"]["name"]: o for o in render({}) if o["kind"] == "ClusterRole"}
    edit, view = roles["asyncmtl-edit"], roles["asyncmtl-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    verbs = {r["resources"][0]: set(r["verbs"]) for r in edit["rules"]}
    assert {"create", "delete", "patch", "update"} <= verbs["asyncmtlruns"] and verbs["asyncmtlruns/status"] == {
        "get", "list", "watch"}  # status is the operator's to write
    assert all(set(r["verbs"]) == {"get", "list", "watch"} for r in view["rules"])
    assert not [o for o in render({"rbac": {"aggregateToDefaultRoles": False}}) if o["metadata"]["name"] == "asyncmtl-edit"]


@pytest.mark.parametrize("level, flags", [("info", set()), ("debug", {"--debug"})])
def test_the_operator_logs_at_info_unless_debug_is_asked(level, flags):
    """kopf's --verbose is DEBUG (every request and status body logged); the default must be kopf's INFO."""
    (dep,) = [o for o in render({"operator": {"logLevel": level}}) if o["kind"] == "Deployment"]
    args = set(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    assert args & {"--verbose", "-v", "--debug", "-d", "--quiet", "-q"} == flags
