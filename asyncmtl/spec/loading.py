"""Reading a spec: `parse_run` validates a parsed document, `load_run_file` a YAML file within limits
(size, UTF-8, nesting, alias expansion, integer length), each issue pointed at its file:line;
`load_spec_file` an entry point's spec file (a whole AsyncMTLRun or a bare spec)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from asyncmtl.spec.errors import SpecError, SpecIssue, format_path, issues_from_validation_error
from asyncmtl.spec.run import _RENAMED_FIELDS, API_VERSION, KIND, AsyncMTLRun, RunSpec


def parse_run(doc: Any, *, file: str | None = None, lines: dict[str, int] | None = None) -> AsyncMTLRun:
    """Validate a parsed document as an AsyncMTLRun.

    Args:
        doc: the parsed YAML/JSON mapping.
        file: where it came from, for messages.
        lines: path -> 1-based line, from `load_run_file`, to point at the offending line.

    Raises:
        SpecError: listing every problem with its path (and file:line when known); a field renamed within
            v1alpha1 (`spec.strategy`, `spec.training.evalBatchSize`) is named with its new path.
    """
    if not isinstance(doc, dict):
        raise SpecError([SpecIssue(path="(document)", message="must be a mapping with apiVersion, kind, metadata, spec", file=file)])
    try:
        return AsyncMTLRun.model_validate(doc)
    except ValidationError as err:
        issues = issues_from_validation_error(err, renamed=_RENAMED_FIELDS)
        for issue in issues:
            issue.file = file
            if lines:
                issue.line = _nearest_line(issue.path, lines)
        raise SpecError(issues) from None


def load_spec_file(path: str | Path) -> tuple[RunSpec, str | None]:
    """Read a spec file given to an entry point (`asyncmtl-train`, `asyncmtl-infer`): a whole AsyncMTLRun, or a
    bare spec (what the operator mounts is the whole resource; a user may hand the trainer the spec alone).

    Returns:
        (the run spec, metadata.name or None for a bare spec).
    Raises:
        SpecError: invalid (each issue with its path, and file:line for a whole resource).
    """
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    if isinstance(raw, dict) and "apiVersion" in raw:
        run = load_run_file(path)
        return run.spec, run.name
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "run"}, "spec": raw}
    return parse_run(doc, file=str(path)).spec, None


def _nearest_line(path: str, lines: dict[str, int]) -> int | None:
    p = path
    while p:
        if p in lines:
            return lines[p]
        cut = max(p.rfind("."), p.rfind("["))
        p = p[:cut] if cut > 0 else ""
    return None


MAX_SPEC_BYTES = 1 << 20  # a spec file larger than 1 MiB is refused
MAX_YAML_DEPTH = 64  # nesting levels (a spec needs fewer than 10)
MAX_YAML_NODES = 100_000  # nodes after alias expansion (no "billion laughs")
MAX_INT_DIGITS = 100


def load_run_file(path: str | Path) -> AsyncMTLRun:
    """Read and validate an AsyncMTLRun YAML file; whatever the bytes, it raises nothing but SpecError.

    The file must be UTF-8 and at most `MAX_SPEC_BYTES`; the YAML is read with PyYAML's safe loader,
    after its node graph was checked for recursive aliases, nesting deeper than `MAX_YAML_DEPTH`,
    more than `MAX_YAML_NODES` nodes and integers longer than `MAX_INT_DIGITS` digits.

    Raises:
        SpecError: unreadable or oversized file, bytes that are not UTF-8 (with line and byte offset),
            a YAML syntax or structure error (with line), or invalid fields (with path and line).
    """
    import yaml

    path = Path(path)

    def fail(where: str, message: str, line: int | None = None) -> SpecError:
        return SpecError([SpecIssue(path=where, message=message, file=str(path), line=line)])

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise fail("(file)", f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise fail("(file)", f"{len(data)} bytes: a spec may have at most {MAX_SPEC_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail("(file)", f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                             "(save the file as UTF-8)", data[:exc.start].count(b"\n") + 1) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise fail("(yaml)", str(getattr(exc, "problem", exc)), (mark.line + 1) if mark is not None else None) from None
    except RecursionError:
        raise fail("(yaml)", f"nested too deeply (a spec is nested at most {MAX_YAML_DEPTH} levels)") from None
    if node is not None:
        _check_yaml_structure(node, fail)
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # what the structure check cannot foresee
        raise fail("(yaml)", str(exc)) from None
    lines: dict[str, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return parse_run(doc, file=str(path), lines=lines)


def _check_yaml_structure(root: Any, fail) -> None:
    """Refuse YAML graphs a spec never has: recursive aliases, deep nesting, alias bombs, huge integers."""
    import yaml

    count = 0
    stack: list[tuple[Any, int, frozenset[int]]] = [(root, 1, frozenset())]
    while stack:
        node, depth, ancestors = stack.pop()
        line = node.start_mark.line + 1
        count += 1
        if count > MAX_YAML_NODES:
            raise fail("(yaml)", f"more than {MAX_YAML_NODES} YAML nodes once aliases are expanded", line)
        if id(node) in ancestors:
            raise fail("(yaml)", "recursive alias: an anchor is used inside itself", line)
        if depth > MAX_YAML_DEPTH:
            raise fail("(yaml)", f"nested more than {MAX_YAML_DEPTH} levels deep", line)
        if isinstance(node, yaml.MappingNode):
            children = [c for kv in node.value for c in kv]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            if node.tag == "tag:yaml.org,2002:int" and len(str(node.value).lstrip("+-")) > MAX_INT_DIGITS:
                raise fail("(yaml)", f"an integer of {len(str(node.value))} digits (at most {MAX_INT_DIGITS})", line)
            continue
        inner = ancestors | {id(node)}
        stack.extend((c, depth + 1, inner) for c in children)


def _index_lines(node: Any, loc: tuple[str | int, ...], out: dict[str, int]) -> None:
    import yaml

    out[format_path(loc)] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = str(k.value)
            out[format_path(loc + (key,))] = k.start_mark.line + 1
            _index_lines(v, loc + (key,), out)
            out[format_path(loc + (key,))] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _index_lines(v, loc + (i,), out)
