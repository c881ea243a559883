"""What a Kubernetes API server does with a CRD's structural schema that our tests need: defaulting
and `x-kubernetes-validations` CEL rules (cel-python), as apiextensions.k8s.io/v1 documents them."""
from __future__ import annotations

import copy
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
        env = celpy.Environment()
        program = env.program(env.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(obj)})
        assert not isinstance(result, celpy.CELEvalError), f"{path}: {rule['rule']}: {result}"
        if not bool(result):
            out.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
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
                    out.append(f"{path}[{i}]: Duplicate value: {dict(zip(schema['x-kubernetes-list-map-keys'], key))}")
                seen.add(key)
        for i, item in enumerate(obj):
            out += cel_violations(schema["items"], item, f"{path}[{i}]")
    return out
