"""Spec errors: `SpecIssue` (one problem: path, reason, file:line), `SpecError` (every problem of a
rejected spec), Kubernetes-style paths (`format_path`) and the translation of pydantic's
`ValidationError` into issues (`issues_from_validation_error`), including the `_FieldError` that
cross-field validators raise to name the field at fault."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError


class _FieldError(ValueError):
    """A cross-field error that knows its path relative to the model that raised it."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


class SpecIssue(BaseModel):
    """One problem in a spec: its path (`spec.tasks[2].patience`), the reason and, if known, file:line."""

    path: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else (f"{self.file}: " if self.file else "")
        return f"{where}{self.path}: {self.message}"


class SpecError(Exception):
    """A spec was rejected. `issues` lists every problem found, each with path and reason."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def format_path(loc: tuple[str | int, ...]) -> str:
    """`("spec", "tasks", 2, "patience")` -> `spec.tasks[2].patience`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    # pydantic adds union/function tags such as 'function-after[...]' or 'list[str]'
    return tuple(p for p in loc if isinstance(p, int) or not re.match(r"^[a-z_-]+\[.*\]$|^function-", str(p)))


def issues_from_validation_error(err: ValidationError, prefix: tuple[str | int, ...] = (),
                                 renamed: Mapping[str, str] | None = None) -> list[SpecIssue]:
    """Turn a pydantic ValidationError into SpecIssues with Kubernetes-style paths.

    `renamed`: path of a field that was renamed -> its new path; where the document still has the old
    field, the issue says what it is called now (not "unknown field")."""
    issues: list[SpecIssue] = []
    for e in err.errors():
        loc = prefix + _clean_loc(tuple(e["loc"]))
        msg = e["msg"]
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _FieldError):
            loc = loc + ctx_err.loc
            msg = ctx_err.msg
        else:
            msg = msg.removeprefix("Value error, ")
            m = re.match(r"^([a-zA-Z]+): (.*)$", msg)
            if m and e["type"] == "value_error":  # "numLabels: must be 2 ..." names a field of this model
                loc, msg = loc + (m.group(1),), m.group(2)
        if e["type"] == "extra_forbidden" and renamed and format_path(loc) in renamed:
            msg = _renamed_message(renamed[format_path(loc)], e.get("input"))
        elif e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            msg = _bound_message(e)
        issues.append(SpecIssue(path=format_path(loc), message=msg))
    return issues


def _renamed_message(new: str, value: Any) -> str:
    """`renamed to spec.method in this v1alpha1 release (method: bam)`: the value as it is to be written."""
    leaf = new.rsplit(".", 1)[-1]
    shown = f" ({leaf}: {value})" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    return f"renamed to {new} in this v1alpha1 release{shown}"


def _bound_message(e: dict[str, Any]) -> str:
    ctx = e.get("ctx") or {}
    for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if key in ctx:
            return f"must be {sym} {ctx[key]} (got {e.get('input')!r})"
    return e["msg"]
