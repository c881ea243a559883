"""What a Kubernetes API server does with a CRD's structural schema that our tests need: defaulting
and `x-kubernetes-validations` CEL rules (cel-python), as apiextensions.k8s.io/v1 documents them."""
from __future__ import annotations

import copy
import json
import functools
from typing import Any


def apply_structural_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Defaulting as the API server does it for a structural schema: a property missing from an object
    that is present gets its `default` (then defaulted itself), recursively (apiextensions.k8s.io/v1,
    "Defaulting")."""
    if not isinstance(obj, dict) or schema.get("type") != "object":
        if isinstance(obj, list) and "items" in schema:
            return [apply_structural_defaults(schema["items"], v) for v in obj]
        return obj
    out = dict(obj)
    for name, prop in (schema.get("properties") or {}).items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = apply_structural_defaults(prop, out[name])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for k in out:
            if k not in (schema.get("properties") or {}):
                out[k] = apply_structural_defaults(extra, out[k])
    return out


def to_jsonschema(node):
    """OpenAPI v3.0 (nullable, x-kubernetes-*) -> JSON Schema draft 4 for validation."""
    if isinstance(node, list):
        return [to_jsonschema(v) for v in node]
    if not isinstance(node, dict):
        return node
    n = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "default"}
    if node.get("nullable"):
        n.pop("nullable")
        if "type" in n:
            n["type"] = [n["type"], "null"]
        if "enum" in n:
            n["enum"] = [*n["enum"], None]
    if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in node:
        n["additionalProperties"] = False  # what the API server's strict field validation does
    return n


def prune(schema: dict[str, Any], obj: Any) -> Any:
    """Drop fields the structural schema does not declare, as the API server does on create and
    update (apiextensions.k8s.io/v1, "Field pruning"); `x-kubernetes-preserve-unknown-fields`,
    `additionalProperties` and a bare `type: object` (metadata) keep theirs."""
    if isinstance(obj, list) and "items" in schema:
        return [prune(schema["items"], v) for v in obj]
    if not isinstance(obj, dict) or schema.get("type") != "object":
        return obj
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    if props is None and not isinstance(extra, dict):
        return obj  # metadata, or a map of anything
    out = {}
    for k, v in obj.items():
        if props is not None and k in props:
            out[k] = prune(props[k], v)
        elif isinstance(extra, dict):
            out[k] = prune(extra, v)
        elif schema.get("x-kubernetes-preserve-unknown-fields"):
            out[k] = v
    return out


def schema_violations(schema: dict[str, Any], obj: Any) -> list[str]:
    """OpenAPI (type, enum, bounds, pattern, required) errors as "path: message", then CEL and
    list-map errors (`cel_violations`): what the API server answers 422 Invalid with."""
    import jsonschema

    out = []
    for err in jsonschema.Draft4Validator(to_jsonschema(schema)).iter_errors(obj):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
        out.append(f"{path or '<root>'}: {err.message}")
    return out + cel_violations(schema, obj)


def _index_of(items, value):
    """Kubernetes' CEL list library `indexOf` (k8s.io/apiserver/pkg/cel/library/lists.go)."""
    from celpy import celtypes

    return celtypes.IntType(next((i for i, v in enumerate(items) if v == value), -1))


def _last_index_of(items, value):
    """Kubernetes' CEL list library `lastIndexOf`."""
    from celpy import celtypes

    return celtypes.IntType(max((i for i, v in enumerate(items) if v == value), default=-1))


K8S_FUNCTIONS = {"indexOf": _index_of, "lastIndexOf": _last_index_of}


@functools.lru_cache(maxsize=None)
def _cel_program(rule: str):
    """A CEL rule (or messageExpression) compiled once (cel-python, with the Kubernetes list functions
    our rules use), as the API server compiles a CRD's rules at install."""
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule), functions=K8S_FUNCTIONS)


def cel_violations(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    """Every `x-kubernetes-validations` rule of `schema` that `obj` breaks, as "path: message" (the
    rule's fieldPath appended to the path of the object it sits on), and every duplicate key of an
    `x-kubernetes-list-type: map` list ("path[i]: Duplicate value"). Evaluate on a defaulted object,
    as the API server does. Transition rules (using oldSelf) are skipped.

    Raises:
        AssertionError: a rule does not compile or fails to evaluate (the API server would refuse the CRD
            or the object for it).
    """
    import celpy

    out: list[str] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue
        result = _cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(obj)})
        assert not isinstance(result, celpy.CELEvalError), f"{path}: {rule['rule']}: {result}"
        if not bool(result):
            message = rule["message"]
            if "messageExpression" in rule:  # the API server uses it, and falls back to message if it fails
                evaluated = _cel_program(rule["messageExpression"]).evaluate({"self": celpy.json_to_cel(obj)})
                assert not isinstance(evaluated, celpy.CELEvalError), f"{path}: {rule['messageExpression']}: {evaluated}"
                message = str(evaluated)
            out.append(f"{path}{rule.get('fieldPath', '')}: {message}")
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for k, v in obj.items():
            sub = props.get(k) or (schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict)
                                   else None)
            if sub is not None:
                out += cel_violations(sub, v, f"{path}.{k}" if path else k)
    elif isinstance(obj, list) and "items" in schema:
        if schema.get("x-kubernetes-list-type") == "map":
            seen: set[tuple] = set()
            for i, item in enumerate(obj):
                key = tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"])
                if key in seen:
                    fields = ",".join(f'"{k}":{json.dumps(v)}' for k, v in zip(schema["x-kubernetes-list-map-keys"], key))
                    out.append(f"{path}[{i}]: Duplicate value: map[string]interface {{}}{{{fields}}}")  # the server's words
                seen.add(key)
        for i, item in enumerate(obj):
            out += cel_violations(schema["items"], item, f"{path}[{i}]")
    return out
