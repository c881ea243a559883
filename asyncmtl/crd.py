"""The AsyncMTLRun CustomResourceDefinition, generated from the spec models (`asyncmtl crd`).

The pydantic JSON schema of `RunSpec` is turned into a *structural* OpenAPI v3 schema, as the
Kubernetes API server requires (apiextensions.k8s.io/v1, "Specifying a structural schema"):
references inlined, `anyOf [X, null]` -> `nullable: true`, tuples -> arrays with min/max
items, `exclusiveMinimum: x` -> `minimum: x` + `exclusiveMinimum: true`, no `title`,
no `additionalProperties: false` (unknown fields are pruned or, with field validation, rejected).
Enums, bounds, patterns and required fields carry over. Cross-field rules are CEL
`x-kubernetes-validations` declared on the models (`asyncmtl.spec.base._cel`), so `kubectl apply`
refuses what the models refuse; the operator still applies the models and sets phase Failed with
the field path for anything CEL cannot express.

`status` declares the fields the printer columns and users read, and `status.operatorState`: the
operator's own full record of the run (`asyncmtl.core.status.RunStatus`: control signals sent, the
acknowledged generation, history, task order), whose fields are preserved unchecked, so the API server
prunes nothing the operator writes.
"""
from __future__ import annotations

import copy
from typing import Any

import yaml

from asyncmtl.lifecycle import TaskPhase
from asyncmtl.spec import RunSpec

GROUP = "asyncmtl.dev"
VERSION = "v1alpha1"
PLURAL = "asyncmtlruns"
SINGULAR = "asyncmtlrun"
KIND = "AsyncMTLRun"
SHORT_NAMES = ["mtl", "mtlrun"]
CATEGORIES = ["asyncmtl", "ml"]


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return _inline({**target, **extra}, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(v) for v in node]
    if not isinstance(node, dict):
        return node
    n = {k: v for k, v in node.items() if k not in ("title", "discriminator")}
    if n.get("x-kubernetes-int-or-string"):  # the one union a structural schema allows, kept as it is
        return n
    if "propertyNames" in n:  # not in OpenAPI v3: the keys are checked by the operator's models
        n.pop("propertyNames")
    if n.get("additionalProperties") is False:
        del n["additionalProperties"]
    for key in ("anyOf", "oneOf"):
        if key in n:
            options = [o for o in n.pop(key) if o.get("type") != "null"]
            nullable = len(options) < len(node[key])
            if len(options) != 1:
                raise ValueError(f"cannot express a union of {options} in a structural schema")
            merged = {**options[0], **n}
            if nullable:
                merged["nullable"] = True
                if merged.get("default", 0) is None:
                    del merged["default"]
            return _structural(merged)
    if "const" in n:
        n["enum"] = [n.pop("const")]
        n.setdefault("type", "string")
    if "enum" in n and "type" not in n:
        n["type"] = "string"
    if "prefixItems" in n:
        items = n.pop("prefixItems")
        n["items"] = items[0]
        n["minItems"] = n["maxItems"] = len(items)
    for exc, inc in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exc in n and not isinstance(n[exc], bool):
            n[inc] = n.pop(exc)
            n[exc] = True
    if n.get("type") == "object" and "additionalProperties" in n and n["additionalProperties"] is True:
        n.pop("additionalProperties")
        n["x-kubernetes-preserve-unknown-fields"] = True
    return {k: _structural(v) if k not in ("default", "enum") else v for k, v in n.items()}


def _without_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


def spec_schema() -> dict[str, Any]:
    """The structural OpenAPI v3 schema of `spec`.

    `spec.cluster` carries no `default:`: the API server would store every default on every run, and
    the operator could no longer tell a field the user set from one the chart's trainer defaults
    (`ASYNCMTL_TRAINER_DEFAULTS`: image, resources, queue label) should fill; the operator applies
    the models' defaults after the chart's."""
    raw = RunSpec.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    out = _structural(_inline(raw, defs))
    out["properties"]["cluster"] = _without_defaults(out["properties"]["cluster"])
    # task names are unique: a list-map keyed by name, so the API server refuses a duplicate at apply
    # ("spec.tasks[1]: Duplicate value") and server-side apply merges tasks by name
    out["properties"]["tasks"]["x-kubernetes-list-type"] = "map"
    out["properties"]["tasks"]["x-kubernetes-list-map-keys"] = ["name"]
    return out


def status_schema() -> dict[str, Any]:
    """`status`: the fields printer columns and users read, the rest preserved."""
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"}, "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "minimum": 0},
        },
    }
    task = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": {"type": "string", "enum": [p.value for p in TaskPhase]},
            "bestStep": {"type": "integer", "nullable": True}, "bestValue": {"type": "number", "nullable": True},
            "convergedAtStep": {"type": "integer", "nullable": True},
            "softLabelsUri": {"type": "string", "nullable": True},
        },
    }
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": {"type": "string", "enum": ["Pending", "Queued", "Running", "Succeeded", "Failed"]},
            "converged": {"type": "string", "description": "Tasks past Training over all tasks, e.g. 3/6."},
            "step": {"type": "integer"},
            "message": {"type": "string"},
            "observedGeneration": {"type": "integer"},
            "tasks": {"type": "object", "additionalProperties": task},
            # metav1.Condition list: a map keyed by type (server-side apply merges by it)
            "conditions": {"type": "array", "items": condition, "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"]},
            "operatorState": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True,
                "description": "The operator's full record of the run (asyncmtl.core.status.RunStatus): control "
                               "signals sent, the acknowledged generation, history, task order. Written and read "
                               "by the operator; the fields above are the summary for users.",
            },
        },
    }


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "asyncmtl"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": SHORT_NAMES, "categories": CATEGORIES},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Setting", "type": "string", "jsonPath": ".spec.setting"},
                    {"name": "Converged", "type": "string", "jsonPath": ".status.converged"},
                    {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "An asynchronous multi-task learning run (Lu et al., NAACL 2022).",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                }},
            }],
        },
    }


def render() -> str:
    """The CRD as YAML (what `asyncmtl crd` prints and `crds/asyncmtlrun.yaml` holds)."""
    header = "# Generated by `asyncmtl crd` from the spec models (asyncmtl/spec/). Do not edit: a test fails on drift.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
