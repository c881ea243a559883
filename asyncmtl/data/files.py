"""Row readers for JSONL, CSV and Parquet files: each yields (1-based line or row, fields)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from asyncmtl.data.examples import DataError


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """One JSON object per line; blank lines are skipped.

    Raises:
        DataError: a line that is not a JSON object (`file:line: reason`).
    """
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError([f"{path}:{i}: invalid JSON ({exc.msg})"]) from None
            if not isinstance(row, dict):
                raise DataError([f"{path}:{i}: expected a JSON object"])
            yield i, row


def iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A CSV file with a header row; the line is where the row starts (quoted newlines count)."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:  # reads the header
            return
        start = reader.line_num + 1
        for row in reader:
            yield start, dict(row)
            start = reader.line_num + 1


def iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A Parquet file; the 'line' is the 1-based row number."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row
