"""asyncmtl.data.files: the JSONL, CSV and Parquet row readers yield (1-based line or row, fields); text must
be UTF-8 (a byte-order mark is fine) and a bad byte is named by line and column; a CSV header or Parquet
schema without a required column is one error naming the columns there are."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncmtl.data.errors import DataError
from asyncmtl.data.files import iter_csv, iter_jsonl, iter_parquet, read_utf8


# ---- read_utf8 ---------------------------------------------------------------------------------

def test_read_utf8_returns_the_text_without_a_byte_order_mark(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes("\ufeffcafé\nzwei".encode())
    assert read_utf8(p) == "café\nzwei"


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_read_utf8_names_line_column_and_byte_of_the_first_bad_byte(tmp_path, bom):
    lines = [b"fine line", b"also fine", b"caf\xe9 au lait"]
    p = tmp_path / "f.txt"
    p.write_bytes(bom + b"\n".join(lines))
    with pytest.raises(DataError) as ei:
        read_utf8(p)
    column = lines[2].index(b"\xe9") + 1  # 1-based, counted in bytes of its line (the BOM is not a column)
    assert ei.value.problems == [f"{p}:3:{column}: not UTF-8 text (byte 0xe9); save the file as UTF-8"]


# ---- JSONL --------------------------------------------------------------------------------------

def test_jsonl_yields_each_object_with_its_line_and_skips_blank_lines(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0, "extra": [1, 2]}]
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(rows[0]) + "\n\n   \n" + json.dumps(rows[1]) + "\n")
    assert list(iter_jsonl(p)) == [(1, rows[0]), (4, rows[1])]


def test_jsonl_does_not_check_required_columns_itself(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"other": 1}\n')
    assert list(iter_jsonl(p, ["text", "label"])) == [(1, {"other": 1})]  # the caller checks rows


@pytest.mark.parametrize("line, reason", [
    ("{not json}", "invalid JSON ("),
    ('"a string"', "expected a JSON object"),
    ("[1, 2]", "expected a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "invalid JSON (nested too deeply)"),
])
def test_jsonl_names_the_line_of_a_row_that_is_not_an_object(tmp_path, line, reason):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "ok"}\n' + line + "\n" + '{"text": "never read"}\n')
    it = iter_jsonl(p)
    assert next(it) == (1, {"text": "ok"})  # rows before the bad one are yielded first
    with pytest.raises(DataError) as ei:
        next(it)
    assert len(ei.value.problems) == 1 and ei.value.problems[0].startswith(f"{p}:2: {reason}")


# ---- CSV ----------------------------------------------------------------------------------------

def test_csv_yields_rows_as_dicts_with_the_line_where_each_row_starts(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text,label\nfirst,1\n"a quoted\nnewline, and comma",0\nlast,1\n')
    assert list(iter_csv(p, ["text", "label"])) == [
        (2, {"text": "first", "label": "1"}),
        (3, {"text": "a quoted\nnewline, and comma", "label": "0"}),
        (5, {"text": "last", "label": "1"}),
    ]


def test_csv_accepts_a_byte_order_mark_before_the_header(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes("\ufefftext,label\nok,1\n".encode())
    assert list(iter_csv(p, ["text", "label"])) == [(2, {"text": "ok", "label": "1"})]


def test_an_empty_csv_has_no_rows(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("")
    assert list(iter_csv(p, ["text"])) == []


def test_a_csv_header_without_required_columns_is_one_error_naming_them_and_the_header(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("sentence,y\n" + "x,1\n" * 50)
    with pytest.raises(DataError) as ei:
        list(iter_csv(p, ["text", "y", "label"]))
    (problem,) = ei.value.problems
    assert problem.startswith(f"{p}:1: ")
    assert "'text', 'label'" in problem and "'sentence', 'y'" in problem


def _oversized_csv(tmp_path):
    """A CSV whose row at line 3 has a field over the csv module's size limit (131,072 characters)."""
    p = tmp_path / "d.csv"
    p.write_text("text,label\nok,1\n" + "x" * 200_000 + ",1\nok,0\n")
    return p


def test_a_malformed_csv_row_is_one_error_with_csv_s_reason(tmp_path):
    p = _oversized_csv(tmp_path)
    it = iter_csv(p, ["text", "label"])
    assert next(it) == (2, {"text": "ok", "label": "1"})  # rows before the bad one are yielded first
    with pytest.raises(DataError) as ei:
        list(it)
    (problem,) = ei.value.problems
    assert problem.startswith(f"{p}:") and "malformed CSV (field larger than field limit" in problem


def test_a_malformed_csv_row_names_its_own_line(tmp_path):
    p = _oversized_csv(tmp_path)
    with pytest.raises(DataError) as ei:
        list(iter_csv(p, ["text", "label"]))
    assert ei.value.problems[0].startswith(f"{p}:3: malformed CSV (")


# ---- Parquet ------------------------------------------------------------------------------------

def test_parquet_yields_rows_numbered_from_1_with_their_types(tmp_path):
    rows = [{"text": "a", "label": 1, "score": 0.5}, {"text": "b", "label": 0, "score": 2.0}]
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p)
    assert list(iter_parquet(p, ["text", "label"])) == [(1, rows[0]), (2, rows[1])]


def test_a_parquet_schema_without_required_columns_names_them_and_the_columns(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"sentence": "a", "y": 1}]), p)
    with pytest.raises(DataError) as ei:
        list(iter_parquet(p, ["text", "y"]))
    (problem,) = ei.value.problems
    assert problem.startswith(f"{p}: no column 'text' ") and "'sentence', 'y'" in problem


@pytest.mark.parametrize("content", [b"", b"PAR1 this is not parquet", b"text,label\nok,1\n"])
def test_a_file_that_is_not_parquet_is_one_error_naming_it(tmp_path, content):
    p = tmp_path / "d.parquet"
    p.write_bytes(content)
    with pytest.raises(DataError) as ei:
        list(iter_parquet(p))
    (problem,) = ei.value.problems
    assert problem.startswith(f"{p}: not a readable Parquet file (")


def test_the_readers_read_the_same_rows_from_the_three_formats(tmp_path):
    rows = [{"text": f"row {i}", "label": str(i % 3)} for i in range(7)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    got = [[row for _, row in reader(tmp_path / f"d.{ext}", ["text", "label"])]
           for reader, ext in ((iter_jsonl, "jsonl"), (iter_csv, "csv"), (iter_parquet, "parquet"))]
    assert got[0] == got[1] == got[2] == rows


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_jsonl_lines_are_split_at_newlines_only(tmp_path, char):
    row = {"text": f"one{char}tweet", "label": 1}
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert json.loads(p.read_text(encoding="utf-8").split("\n")[0]) == row  # a valid JSON Lines file
    assert list(iter_jsonl(p)) == [(1, row)]
