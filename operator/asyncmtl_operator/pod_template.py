"""`spec.cluster.podTemplate`: a partial core/v1 PodTemplateSpec merged under the operator's pods.

The rule, as Kubeflow Trainer v2's `podTemplateOverrides` and KubeRay's templates let users extend a
pod the controller owns (the model, `asyncmtl.spec.PodTemplateOverlay`, refuses what the operator owns
outright):

- the operator's values win: its container, security contexts, restart policy, volumes;
- maps merge key by key (`nodeSelector`, `securityContext`, `resources`, labels, annotations);
- lists of named items (`containers`, `initContainers`, `volumes`, `env`, `volumeMounts`, `ports`,
  `imagePullSecrets`) merge by name: the operator's items first, each merged over the overlay's item
  of the same name, then the overlay's other items (sidecars, extra Secret/CSI volumes);
- `tolerations` are added to the operator's; any other list is the operator's when it sets one.
Pure functions of plain manifests; the API server validates the result against the Kubernetes schema.
"""
from __future__ import annotations

import copy
from typing import Any

from asyncmtl.spec import MAIN_CONTAINER, PodTemplateOverlay

ADDITIVE_LISTS = ("tolerations",)


def merge_under(overlay: Any, own: Any, key: str = "") -> Any:
    """`own` merged over `overlay` (the rule in the module docstring). Neither argument is changed.

    Args:
        overlay: the user's partial manifest (a dict, list or scalar).
        own: the operator's manifest for the same field.
        key: the field's name (decides how its list merges).
    """
    if isinstance(own, dict) and isinstance(overlay, dict):
        out = copy.deepcopy(overlay)
        for k, v in own.items():
            out[k] = merge_under(overlay[k], v, k) if k in overlay else copy.deepcopy(v)
        return out
    if isinstance(own, list) and isinstance(overlay, list):
        if key in ADDITIVE_LISTS:
            return copy.deepcopy(own) + [copy.deepcopy(i) for i in overlay if i not in own]
        if all(isinstance(i, dict) and "name" in i for i in own + overlay):
            theirs = {i["name"]: i for i in overlay}
            merged = [merge_under(theirs[i["name"]], i) if i["name"] in theirs else copy.deepcopy(i) for i in own]
            mine = {i["name"] for i in own}
            return merged + [copy.deepcopy(i) for i in overlay if i["name"] not in mine]
    return copy.deepcopy(own)


def apply_overlay(template: dict[str, Any], overlay: PodTemplateOverlay | None) -> dict[str, Any]:
    """A Job's pod template (`{"metadata": ..., "spec": ...}`) with `overlay` merged under it.

    The overlay's container named `trainer` is merged into the template's first container (the
    operator's: `trainer` in training pods, `infer` in inference pods).
    """
    if overlay is None:
        return template
    spec = copy.deepcopy(overlay.spec)
    own_name = template["spec"]["containers"][0]["name"]
    for c in spec.get("containers", []):
        if c["name"] == MAIN_CONTAINER:
            c["name"] = own_name
    meta = {k: v for k, v in (("labels", overlay.metadata.labels), ("annotations", overlay.metadata.annotations)) if v}
    merged = merge_under(spec, template["spec"])
    for group in ("containers", "initContainers"):  # sidecars too run as the restricted profile asks, unless they say
        for c in merged.get(group) or []:           # otherwise within it (PodTemplateOverlay refuses what it refuses)
            sc = c.setdefault("securityContext", {})
            sc.setdefault("allowPrivilegeEscalation", False)
            sc.setdefault("capabilities", {}).setdefault("drop", ["ALL"])
    return {"metadata": merge_under(meta, template.get("metadata") or {}), "spec": merged}
