"""asyncmtl.data.examples, beside tests/unit/test_data.py (formats, file:line errors, TweetEval through
`load_split`): label parsing per task type, path resolution against the spec's folder, and
`load_task_splits` (every split that exists; only test is optional)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from asyncmtl.data.errors import DataError
from asyncmtl.data.examples import Example, Split, load_task_splits, parse_label, resolve_path
from asyncmtl.spec import parse_run
from tests.conftest import run_doc


def _task(type_: str = "binary", **extra):
    t = {"name": "t", "type": type_, "data": {"train": "train.jsonl", "validation": "val.jsonl"}}
    t.update(extra)
    return parse_run(run_doc([t])).spec.tasks[0]


# ---- parse_label ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, want", [(0, 0), (2, 2), ("1", 1), (" 2 ", 2), (1.0, 1)])
def test_a_class_id_may_be_an_int_a_numeric_string_or_an_integral_float(raw, want):
    got = parse_label(_task("multiclass", numLabels=3), raw)
    assert got == want and type(got) is int


@pytest.mark.parametrize("raw", [3, -1, "3", True, False, 1.5, "one", None, [1]])
def test_a_class_id_out_of_range_or_of_another_type_is_refused(raw):
    with pytest.raises(ValueError) as ei:
        parse_label(_task("multiclass", numLabels=3), raw)
    assert repr(raw) in str(ei.value) or str(raw) in str(ei.value)


def test_a_binary_label_is_0_or_1():
    t = _task("binary")
    assert [parse_label(t, x) for x in (0, 1, "0", "1")] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match=r"out of range \[0, 1\]"):
        parse_label(t, 2)


@pytest.mark.parametrize("raw, want", [
    ([3, 1, 3], [1, 3]), ((0,), [0]), ([], []), ("[4, 0]", [0, 4]), ("1 2", [1, 2]), ("2,0", [0, 2]), ("", []),
])
def test_a_multilabel_label_is_a_sorted_set_of_class_ids(raw, want):
    assert parse_label(_task("multilabel", numLabels=5), raw) == want


@pytest.mark.parametrize("raw", [[5], [-1], "[1, 9]", "a b", 3, {"1": 1}])
def test_a_multilabel_label_with_an_id_out_of_range_or_not_a_list_is_refused(raw):
    with pytest.raises(ValueError):
        parse_label(_task("multilabel", numLabels=5), raw)


@pytest.mark.parametrize("raw, want", [(1, 1.0), (5, 5.0), ("2.5", 2.5), (3.25, 3.25)])
def test_a_regression_label_is_a_number_within_the_label_range(raw, want):
    got = parse_label(_task("regression", labelRange=[1, 5]), raw)
    assert got == want and type(got) is float


@pytest.mark.parametrize("raw", [0.99, 5.01, "x", True, None, [1.0]])
def test_a_regression_label_outside_the_range_or_not_a_number_is_refused(raw):
    with pytest.raises(ValueError):
        parse_label(_task("regression", labelRange=[1, 5]), raw)


def test_a_regression_task_without_a_label_range_takes_0_to_1():
    t = _task("regression")
    assert parse_label(t, 0) == 0.0 and parse_label(t, 1) == 1.0
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        parse_label(t, 1.5)


# ---- resolve_path -----------------------------------------------------------------------------

def test_a_relative_path_resolves_against_the_base_folder(tmp_path):
    assert resolve_path("data/train.jsonl", tmp_path) == tmp_path / "data" / "train.jsonl"
    assert resolve_path("file://data/train.jsonl", tmp_path) == tmp_path / "data" / "train.jsonl"
    assert resolve_path("data/train.jsonl", None) == Path("data/train.jsonl")


def test_an_absolute_or_home_path_ignores_the_base_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_path("/srv/train.jsonl", tmp_path) == Path("/srv/train.jsonl")
    assert resolve_path("file:///srv/train.jsonl", tmp_path) == Path("/srv/train.jsonl")
    assert resolve_path("~/d/train.jsonl", Path("/elsewhere")) == tmp_path / "home" / "d" / "train.jsonl"


# ---- load_task_splits -------------------------------------------------------------------------

def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_load_task_splits_reads_every_split_relative_to_the_base_folder(tmp_path):
    for split, n in (("train", 4), ("val", 3), ("test", 2)):
        _jsonl(tmp_path / f"{split}.jsonl", [{"text": f"{split} {i}", "label": i % 2} for i in range(n)])
    t = _task(data={"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"})
    splits = load_task_splits(t, base_dir=tmp_path)
    assert list(splits) == ["train", "validation", "test"]
    assert all(isinstance(s, Split) and s.task == "t" for s in splits.values())
    assert {k: len(s) for k, s in splits.items()} == {"train": 4, "validation": 3, "test": 2}
    assert splits["test"].examples == [Example(id=0, text="test 0", text_pair=None, label=0),
                                       Example(id=1, text="test 1", text_pair=None, label=1)]
    assert splits["validation"].source == str(tmp_path / "val.jsonl")


def test_load_task_splits_leaves_out_a_missing_test_split(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 1}])
    _jsonl(tmp_path / "val.jsonl", [{"text": "b", "label": 0}])
    assert list(load_task_splits(_task(), base_dir=tmp_path)) == ["train", "validation"]


def test_load_task_splits_raises_for_a_bad_split(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 1}])
    _jsonl(tmp_path / "val.jsonl", [{"text": "b", "label": 5}])
    with pytest.raises(DataError) as ei:
        load_task_splits(_task(), base_dir=tmp_path)
    assert ei.value.problems == [f"{tmp_path / 'val.jsonl'}:1: label 5: out of range [0, 1] (numLabels=2)"]


def test_a_split_without_examples_is_an_error(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n\n")
    _jsonl(tmp_path / "val.jsonl", [{"text": "b", "label": 0}])
    with pytest.raises(DataError, match="no examples in the train split of task t"):
        load_task_splits(_task(), base_dir=tmp_path)


def test_more_than_twenty_bad_rows_report_the_first_twenty(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 9}] * 30)
    _jsonl(tmp_path / "val.jsonl", [{"text": "b", "label": 0}])
    with pytest.raises(DataError) as ei:
        load_task_splits(_task(), base_dir=tmp_path)
    assert [p.split(":")[-3] for p in ei.value.problems] == [str(i) for i in range(1, 21)]
