"""The base of every spec model: `_Strict` (camelCase aliases, unknown fields refused, numbers finite and
never booleans), the CEL rules a model declares for the CRD (`_cel`) and the DNS-label pattern of names."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

from asyncmtl.spec.errors import _FieldError

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Strict(BaseModel):
    """Base for spec models: camelCase aliases, unknown fields rejected, values validated: numbers are
    finite (no .inf/.nan) and never booleans (YAML's `true` is not the number 1)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, f in cls.model_fields.items():
                key = f.alias if f.alias in data else name
                if isinstance(data.get(key), bool) and _numeric(f.annotation):
                    raise _FieldError((key,), f"must be a number, not true/false (got {data[key]})")
        return data


def _numeric(annotation: Any) -> bool:
    """True for int/float annotations (also inside Optional, tuples and dict values)."""
    import typing

    if annotation in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(annotation) if a is not type(None) and a is not str)


def _cel(*rules: tuple[str, ...]) -> ConfigDict:
    """CEL rules for the CRD (`x-kubernetes-validations`), each (rule, message, fieldPath) or (rule,
    message, fieldPath, messageExpression), so that `kubectl apply` refuses what the model below refuses;
    the model's own validator stays the reference (tests/unit/test_crd_cel.py checks they agree)."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": r[0], "message": r[1], **({"fieldPath": r[2]} if r[2] else {}),
         **({"messageExpression": r[3]} if len(r) > 3 else {})} for r in rules]})
