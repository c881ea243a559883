"""The spec loader cannot crash: malformed YAML, hostile structure and out-of-range values all end in a
`SpecError` whose every issue names a path (and file:line where the input has lines); Hypothesis
generates the malformed specs."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncmtl.spec import SpecError, load_run_file, parse_run
from tests.conftest import REPO

EXAMPLES = sorted((REPO / "manifests" / "examples").rglob("*.yaml"))
EXAMPLES = [p for p in EXAMPLES if yaml.safe_load(p.read_text()).get("kind") == "AsyncMTLRun"]


def _rejects(path: Path, *, where: str) -> SpecError:
    with pytest.raises(SpecError) as exc:
        load_run_file(path)
    assert all(i.path for i in exc.value.issues), exc.value
    assert where in str(exc.value), str(exc.value)
    return exc.value


@pytest.mark.parametrize("text, where", [
    ("a: &a [*a]\n", "recursive"),                                  # an alias inside itself
    ("a: " + "[" * 2000 + "]" * 2000 + "\n", "nested"),             # deeper than any spec
    ("spec: {training: {seed: " + "9" * 5000 + "}}\n", "spec"),     # an integer Python will not parse
])
def test_hostile_yaml_is_a_spec_error_with_a_line(tmp_path, text, where):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    err = _rejects(p, where=where)
    assert "bad.yaml" in str(err)


def test_a_spec_that_is_not_utf8_is_named_with_its_byte_offset(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("metadata: {name: caf\xe9}\n".encode("latin-1"))
    _rejects(p, where="not UTF-8")


def _base() -> dict:
    return yaml.safe_load((REPO / "manifests" / "examples" / "quickstart.yaml").read_text())


@pytest.mark.parametrize("path, value, message", [
    (("spec", "training", "batchSize"), True, "not true/false"),
    (("spec", "tasks", 0, "minDelta"), math.inf, "finite"),
    (("spec", "tasks", 0, "samplingWeight"), 1e308, "<="),
    (("spec", "training", "seed"), 2 ** 32, "<="),
    (("spec", "training", "validationInterval"), 5000, "maxSteps"),
    (("spec", "tasks", 0, "textFields"), ["text", "text"], "distinct"),
    (("spec", "tasks", 0, "textFields"), [""], "empty"),
    (("spec", "weighting"), {"method": "static", "weights": {"sentiment": -1.0}}, ">="),
    (("metadata", "namespace"), "Bad_NS", "namespace"),
])
def test_values_that_would_fail_later_are_refused_up_front(path, value, message):
    doc = _base()
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(SpecError) as exc:
        parse_run(doc)
    assert message in str(exc.value), str(exc.value)


_odd = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_specs_never_crash(data):
    src = data.draw(st.sampled_from(EXAMPLES), label="example")
    doc = yaml.safe_load(src.read_text())
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths), label="path")
        node = doc
        try:
            for k in path[:-1]:
                node = node[k]
            if data.draw(st.booleans(), label="delete") and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = copy.deepcopy(data.draw(_odd, label="value"))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    try:
        parse_run(doc, file=src.name)
    except SpecError as exc:
        assert exc.issues and all(i.path for i in exc.issues)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 4000), junk=st.binary(max_size=12))
def test_mangled_files_never_crash(tmp_path, cut, junk):
    text = (REPO / "manifests" / "examples" / "quickstart.yaml").read_bytes()
    p = tmp_path / "mangled.yaml"
    p.write_bytes(text[:cut] + junk + text[cut:])
    try:
        load_run_file(p)
    except SpecError as exc:
        assert all(i.path for i in exc.issues)
        assert all(i.line for i in exc.issues if i.path in ("(yaml)",) and i.line is not None)
