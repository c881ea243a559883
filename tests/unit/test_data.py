"""Data readers: formats, row validation with file:line, TweetEval layout, the built-in benchmark."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncmtl.data import DataError, load_split
from asyncmtl.data.builtin import BENCHMARKS, generate
from asyncmtl.spec import parse_run
from tests.conftest import run_doc


def task_for(tmp_path, fmt: str, rows: list[dict], **task) -> object:
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        import csv

        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    t = {"name": "t", "type": "binary", "data": {"train": str(path), "validation": str(path)}}
    t.update(task)
    return parse_run(run_doc([t])).spec.tasks[0]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_formats_read_the_same_examples(tmp_path, fmt):
    rows = [{"text": "good movie", "label": 1}, {"text": "bad movie", "label": 0}]
    split = load_split(task_for(tmp_path, fmt, rows), "train")
    assert [(e.id, e.text, e.label) for e in split.examples] == [(0, "good movie", 1), (1, "bad movie", 0)]


@pytest.mark.parametrize("fmt,line", [("jsonl", 3), ("csv", 4), ("parquet", 3)])
def test_label_out_of_range_names_file_and_line(tmp_path, fmt, line):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 2}]
    with pytest.raises(DataError) as ei:
        load_split(task_for(tmp_path, fmt, rows), "train")
    msg = str(ei.value)
    assert f"train.{fmt}:{line}: label 2: out of range [0, 1]" in msg


def test_every_bad_row_is_reported(tmp_path):
    rows = [{"text": "", "label": 1}, {"text": "ok", "label": "x"}, {"text": "ok", "label": 1}, {"label": 0}]
    with pytest.raises(DataError) as ei:
        load_split(task_for(tmp_path, "jsonl", rows), "train")
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in ei.value.problems] == ["1", "2", "4"]


def test_invalid_json_line(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"text": "a", "label": 1}\n{not json}\n')
    t = parse_run(run_doc([{"name": "t", "type": "binary", "data": {"train": str(p), "validation": str(p)}}])).spec.tasks[0]
    with pytest.raises(DataError, match=r"train.jsonl:2: invalid JSON"):
        load_split(t, "train")


def test_missing_file(tmp_path):
    t = parse_run(run_doc([{"name": "t", "type": "binary", "data": {"train": str(tmp_path / "nope.jsonl"),
                                                                     "validation": "x.jsonl"}}])).spec.tasks[0]
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_split(t, "train")


def test_multilabel_and_regression_labels(tmp_path):
    ml = task_for(tmp_path, "jsonl", [{"text": "a", "label": [3, 1, 3]}], type="multilabel", numLabels=5)
    assert load_split(ml, "train").examples[0].label == [1, 3]
    bad = task_for(tmp_path, "jsonl", [{"text": "a", "label": [7]}], type="multilabel", numLabels=5)
    with pytest.raises(DataError, match="label 7: out of range"):
        load_split(bad, "train")
    reg = task_for(tmp_path, "csv", [{"text": "a", "label": "4.5"}], type="regression", labelRange=[1, 5])
    assert load_split(reg, "train").examples[0].label == 4.5
    reg_bad = task_for(tmp_path, "csv", [{"text": "a", "label": "6"}], type="regression", labelRange=[1, 5])
    with pytest.raises(DataError, match=r"label 6.0: out of range \[1.0, 5.0\]"):
        load_split(reg_bad, "train")


def test_pair_inputs_and_caps(tmp_path):
    rows = [{"text": f"q{i}", "text_pair": f"a{i}", "label": i % 2} for i in range(10)]
    t = task_for(tmp_path, "jsonl", rows, textFields=["text", "text_pair"])
    t.data.max_train_examples = 4
    ex = load_split(t, "train").examples
    assert len(ex) == 4 and ex[3].text_pair == "a3"


def test_tweeteval_layout(tweeteval_dir):
    doc = run_doc([{"name": "stance", "type": "multiclass", "numLabels": 3, "textFields": ["text", "text_pair"],
                    "data": {"train": "tweeteval://stance/train", "validation": "tweeteval://stance/val"}},
                   {"name": "emotion", "type": "multiclass", "numLabels": 4,
                    "data": {"train": "tweeteval://emotion/train", "validation": "tweeteval://emotion/val"}}])
    stance, emotion = parse_run(doc).spec.tasks
    s = load_split(stance, "train", tweeteval_dir=str(tweeteval_dir))
    targets = {e.text_pair for e in s.examples}
    assert targets == {"abortion", "atheism", "climate", "feminist", "hillary"}
    expected = sum(len((tweeteval_dir / "stance" / t / "train_labels.txt").read_text().splitlines()) for t in targets)
    assert len(s) == expected
    e = load_split(emotion, "validation", tweeteval_dir=str(tweeteval_dir))
    assert len(e) == len((tweeteval_dir / "emotion" / "val_text.txt").read_text().splitlines())


def test_tweeteval_empty_text_is_rejected_unless_allowed(tweeteval_dir):
    doc = run_doc([{"name": "hate", "type": "binary", "data": {"train": "tweeteval://hate/train", "validation": "tweeteval://hate/val"}}])
    hate = parse_run(doc).spec.tasks[0]
    with pytest.raises(DataError, match=r"hate/train_text.txt:\d+: field 'text': empty text"):
        load_split(hate, "train", tweeteval_dir=str(tweeteval_dir))
    hate.data.allow_empty_text = True
    assert len(load_split(hate, "train", tweeteval_dir=str(tweeteval_dir))) == 9000


def test_tweeteval_dir_is_required(monkeypatch):
    monkeypatch.delenv("TWEETEVAL_DIR", raising=False)
    t = parse_run(run_doc([{"name": "e", "type": "binary", "data": {"train": "tweeteval://irony/train",
                                                                     "validation": "tweeteval://irony/val"}}])).spec.tasks[0]
    with pytest.raises(DataError, match="--tweeteval-dir"):
        load_split(t, "train")


def test_builtin_benchmark_is_seeded_and_differs_in_size_and_noise():
    a = generate("quickstart", "sarcasm", "train", 0)
    assert a == generate("quickstart", "sarcasm", "train", 0)
    sizes = {t: len(generate("quickstart", t, "train", 0)) for t in BENCHMARKS["quickstart"]}
    assert len(set(sizes.values())) >= 3 and min(sizes.values()) < max(sizes.values()) / 5
    assert any("text_pair" in generate("quickstart", t, "train", 0)[0] for t in sizes)
    assert any(isinstance(generate("quickstart", t, "train", 0)[0]["label"], float) for t in sizes)
    with pytest.raises(DataError, match="unknown built-in task"):
        generate("quickstart", "nope", "train", 0)


def test_builtin_validation_and_test_splits_are_large_enough_to_decide_on():
    """Every task's validation and test split has at least 300 rows (sarcasm had 50: at 35 % label noise
    its PR-AUC moved more between validation steps than any decision could tolerate)."""
    for task, spec in BENCHMARKS["quickstart"].items():
        for split in ("validation", "test"):
            assert len(generate("quickstart", task, split, 0)) >= 300, (task, split)
    assert len(generate("quickstart", "sarcasm", "train", 0)) == 300  # the training split stays small
    assert len(generate("quickstart", "sentiment", "validation", 0)) == 480  # 12 % of 4,000


def _task(path, **extra):
    t = {"name": "t", "type": "binary", "data": {"train": str(path), "validation": str(path)}}
    t.update(extra)
    return parse_run(run_doc([t])).spec.tasks[0]


@pytest.mark.parametrize("fmt, content, where", [
    ("jsonl", b'{"text": "ok", "label": 1}\n{"text": "caf\xe9", "label": 0}\n', ":2:14: not UTF-8 text (byte 0xe9)"),
    ("csv", b'text,label\nok,1\n"two\nlines",0\nna\xefve,1\n', ":5:3: not UTF-8 text (byte 0xef)"),
])
def test_a_file_that_is_not_utf8_names_its_line_and_column(tmp_path, fmt, content, where):
    p = tmp_path / f"train.{fmt}"
    p.write_bytes(content)
    with pytest.raises(DataError) as ei:
        load_split(_task(p), "train")
    assert ei.value.problems == [f"{p}{where}; save the file as UTF-8"]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    p = tmp_path / "train.csv"
    p.write_bytes("\ufefftext,label\nok,1\n".encode())
    assert load_split(_task(p), "train").examples[0].text == "ok"


def test_a_corrupt_parquet_file_is_named_without_a_traceback(tmp_path):
    p = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "a", "label": 1}] * 50), p)
    p.write_bytes(p.read_bytes()[:-40])  # truncated: the footer is gone
    with pytest.raises(DataError) as ei:
        load_split(_task(p), "train")
    assert len(ei.value.problems) == 1 and ei.value.problems[0].startswith(f"{p}: not a readable Parquet file (")


def test_a_csv_header_without_the_label_column_is_one_error(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("text,sentiment\n" + "".join(f"row {i},1\n" for i in range(20)))
    with pytest.raises(DataError) as ei:
        load_split(_task(p), "train")
    assert ei.value.problems == [f"{p}:1: the header has no column 'label' (it has 'text', 'sentiment'); "
                                 "set textFields/labelField to the names used"]
    assert load_split(_task(p, labelField="sentiment"), "train").examples[0].label == 1


def test_a_regression_label_true_is_not_a_number(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"text": "a", "label": true}\n{"text": "b", "label": 2.5}\n')
    with pytest.raises(DataError) as ei:
        load_split(_task(p, type="regression", labelRange=[1, 5]), "train")
    assert ei.value.problems == [f"{p}:1: label True: not a number"]
