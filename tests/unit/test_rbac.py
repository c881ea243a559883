"""The chart grants the operator exactly the API access its code uses: nothing missing, nothing more,
no wildcard. Derived from the source of asyncmtl_operator/kube.py (every Kubernetes call goes
through it) plus kopf's own needs declared beside the handlers."""
from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import REPO

helm_python = pytest.importorskip("helm_python")

VERBS = {"create": "create", "read": "get", "patch": "patch", "list": "list", "delete": "delete", "replace": "update"}
GROUPS = {"core": "", "batch": "batch"}
PLURALS = {"config_map": "configmaps", "service": "services", "job": "jobs", "pod": "pods", "secret": "secrets",
           "event": "events"}


def derived_permissions(peering: bool = False) -> dict[tuple[str, str], set[str]]:
    from asyncmtl_operator.handlers import KOPF_PEERING_PERMISSIONS, KOPF_PERMISSIONS, OWNER_REFERENCE_PERMISSIONS

    tree = ast.parse((REPO / "operator" / "asyncmtl_operator" / "kube.py").read_text())
    perms: dict[tuple[str, str], set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self" and node.value.attr in GROUPS:
            m = re.fullmatch(r"(create|read|patch|list|delete|replace)_namespaced_([a-z_]+?)(_status)?", node.attr)
            assert m, f"unrecognised API call {node.value.attr}.{node.attr}"
            resource = PLURALS[m.group(2)] + ("/status" if m.group(3) else "")
            perms.setdefault((GROUPS[node.value.attr], resource), set()).add(VERBS[m.group(1)])
    for extra in (KOPF_PERMISSIONS, OWNER_REFERENCE_PERMISSIONS, KOPF_PEERING_PERMISSIONS if peering else {}):
        for key, verbs in extra.items():
            perms.setdefault(key, set()).update(verbs)
    return perms


USER_ROLES = ("asyncmtl-edit", "asyncmtl-view")  # for the people who apply runs, not the operator


def granted(values: dict, kind: str) -> list[dict[tuple[str, str], set[str]]]:
    import yaml

    chart = helm_python.Chart.load(str(REPO / "helm" / "asyncmtl-operator"))
    try:
        out = chart.render(values, name="asyncmtl", namespace="asyncmtl-system", is_install=True)
    finally:
        chart.close()
    roles = [d for path, text in out.items() if not path.endswith("NOTES.txt")
             for d in yaml.safe_load_all(text) if d and d.get("kind") == kind
             and d["metadata"]["name"] not in USER_ROLES]  # the operator's own role(s)
    result = []
    for role in roles:
        perms: dict[tuple[str, str], set[str]] = {}
        for rule in role["rules"]:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    assert "*" not in (g, r) and "*" not in rule["verbs"], f"wildcard in {role['metadata']['name']}"
                    perms.setdefault((g, r), set()).update(rule["verbs"])
        result.append(perms)
    return result


def test_the_derivation_sees_the_calls():
    perms = derived_permissions()
    assert perms[("batch", "jobs")] == {"create", "delete", "get", "list", "watch"} and perms[("", "configmaps")] == {"create", "get", "patch"}


@pytest.mark.parametrize("values,kind,peering", [
    ({}, "ClusterRole", False),
    ({"watchNamespaces": ["a", "b"]}, "Role", False),
    ({"peering": {"enabled": True}}, "ClusterRole", True),
])
def test_chart_grants_exactly_what_the_code_uses(values, kind, peering):
    roles = granted(values, kind)
    assert roles, f"no {kind} rendered"
    want = derived_permissions(peering)
    for perms in roles:
        missing = {k: v - perms.get(k, set()) for k, v in want.items() if v - perms.get(k, set())}
        extra = {k: v - want.get(k, set()) for k, v in perms.items() if v - want.get(k, set())}
        assert not missing, f"missing grants: {missing}"
        assert not extra, f"grants the code does not use: {extra}"


def test_owner_references_that_block_deletion_are_allowed_where_the_api_server_enforces_them():
    """Children carry `blockOwnerDeletion: true` (kopf.adopt); OwnerReferencesPermissionEnforcement then asks
    for `update` on asyncmtlruns/finalizers, else every child is refused with 403 (OpenShift, hardened clusters)."""
    import kopf

    child: dict = {"metadata": {}}
    kopf.adopt(child, owner={"apiVersion": "asyncmtl.dev/v1alpha1", "kind": "AsyncMTLRun",
                             "metadata": {"name": "r", "namespace": "ns", "uid": "u1"}})
    assert child["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
    for values, kind in (({}, "ClusterRole"), ({"watchNamespaces": ["a"]}, "Role")):
        for perms in granted(values, kind):
            assert "update" in perms.get(("asyncmtl.dev", "asyncmtlruns/finalizers"), set())
