"""Row readers for JSONL, CSV and Parquet files: each yields (1-based line or row, fields).

Text files must be UTF-8 (a byte-order mark is accepted); a file that is not names the line and
column of the first bad byte. A CSV header must name every column the task reads (one error for
the header, not one per row); a file Parquet cannot read is named with pyarrow's reason.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

from asyncmtl.data.errors import DataError


def read_utf8(path: Path) -> str:
    """The whole file as text.

    Raises:
        DataError: `file:line:column: not UTF-8 text` at the first byte that does not decode.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise DataError([f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[start]:02x}); "
                         f"save the file as UTF-8"]) from None


def split_lines(text: str) -> list[str]:
    """`text`'s lines, split at newlines only ("\n", with a "\r" before it dropped: CRLF files), no final empty
    line. Not `str.splitlines()`: that also breaks at U+2028, U+2029, U+0085, \v, \f and \x1c-\x1e, which a
    JSON string or a tweet may hold unescaped (a JSON Lines file is split at "\n": https://jsonlines.org)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def iter_jsonl(path: Path, required: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """One JSON object per line; blank lines are skipped (`required` is checked per row by the caller).

    Raises:
        DataError: not UTF-8, or a line that is not a JSON object (`file:line: reason`).
    """
    for i, line in enumerate(split_lines(read_utf8(path)), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise DataError([f"{path}:{i}: invalid JSON ({reason})"]) from None
        if not isinstance(row, dict):
            raise DataError([f"{path}:{i}: expected a JSON object"])
        yield i, row


def iter_csv(path: Path, required: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """A CSV file with a header row; the line is where the row starts (quoted newlines count).

    Raises:
        DataError: not UTF-8, a header without a `required` column (one error, naming the columns
            it has), or a malformed row (`file:line: reason`).
    """
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    start = 1  # where the row being read starts (csv's line_num does not advance when a row fails)
    try:
        header = reader.fieldnames  # reads the header
        if header is None:
            return
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError([f"{path}:1: the header has no column {', '.join(map(repr, missing))} "
                             f"(it has {', '.join(map(repr, header))}); set textFields/labelField to the names used"])
        start = reader.line_num + 1
        for row in reader:
            yield start, dict(row)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError([f"{path}:{start}: malformed CSV ({exc})"]) from None


def iter_parquet(path: Path, required: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """A Parquet file; the 'line' is the 1-based row number.

    Raises:
        DataError: a file pyarrow cannot read as Parquet, or a schema without a `required` column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError([f"{path}: not a readable Parquet file ({exc})"]) from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataError([f"{path}: no column {', '.join(map(repr, missing))} "
                         f"(it has {', '.join(map(repr, table.column_names))})"])
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row
