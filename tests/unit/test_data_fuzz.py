"""The data readers cannot crash: JSONL, CSV and Parquet files with bytes inserted, cut or
replaced, and rows with values of every JSON type, end in a `DataError` whose every problem names
the file (and its line where the file has lines); Hypothesis generates the files."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncmtl.data import DataError, load_split
from asyncmtl.spec import parse_run
from tests.conftest import run_doc

ROWS = [{"text": f"row {i} text", "text_pair": f"pair {i}", "label": i % 3} for i in range(30)]
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=6)
_task = st.sampled_from([{"type": "multiclass", "numLabels": 3}, {"type": "regression", "labelRange": [0, 2]},
                         {"type": "multilabel", "numLabels": 3}, {"type": "multiclass", "numLabels": 3,
                                                                  "textFields": ["text", "text_pair"]}])


def _write(path, fmt: str, rows: list[dict]) -> bytes:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        import csv

        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "text_pair", "label"])
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path.read_bytes()


def _load(path, task: dict) -> None:
    t = {"name": "t", "data": {"train": str(path), "validation": str(path)}, **task}
    try:
        load_split(parse_run(run_doc([t])).spec.tasks[0], "train")
    except DataError as exc:
        assert exc.problems and all(p.startswith(str(path)) for p in exc.problems), exc.problems


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["jsonl", "csv", "parquet"]), task=_task, at=st.integers(0, 10_000),
       cut=st.integers(0, 64), junk=st.binary(max_size=16))
def test_mangled_data_files_never_crash(tmp_path, fmt, task, at, cut, junk):
    p = tmp_path / f"train.{fmt}"
    data = _write(p, fmt, ROWS)
    at %= len(data) + 1
    p.write_bytes(data[:at] + junk + data[at + cut:])
    _load(p, task)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["jsonl", "csv"]), task=_task, field=st.sampled_from(["text", "text_pair", "label"]),
       value=_json, row=st.integers(0, len(ROWS) - 1))
def test_odd_values_in_data_files_never_crash(tmp_path, fmt, task, field, value, row):
    rows = [dict(r) for r in ROWS]
    rows[row][field] = value
    p = tmp_path / f"train.{fmt}"
    _write(p, fmt, rows)
    _load(p, task)
