"""Examples and split loading with row validation.

Every reader yields `(line, raw_fields)`; `load_split` validates each row against the task
(text present, label of the right type and in range) and raises `DataError` naming
`file:line` for the first bad rows, before any training starts.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from asyncmtl.data.errors import DataError
from asyncmtl.spec import DataFormat, TaskSpec, TaskType

__all__ = ["DataError", "Example", "Split", "load_split", "load_task_splits"]

Label = int | float | list[int]
MAX_REPORTED_ERRORS = 20


@dataclass(frozen=True)
class Example:
    """One example. `id` is its 0-based row index in the split (soft labels are keyed by it)."""

    id: int
    text: str
    text_pair: str | None
    label: Label


@dataclass
class Split:
    """The examples of one split of one task, and where they came from."""

    task: str
    name: str
    source: str
    examples: list[Example] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


def resolve_path(uri: str, base_dir: Path | None) -> Path:
    """A data path or `file://` URI, relative paths resolved against `base_dir` (the spec's folder)."""
    p = uri.removeprefix("file://")
    path = Path(os.path.expanduser(p))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _iter_rows(uri: str, fmt: DataFormat, task: TaskSpec, base_dir: Path | None,
               tweeteval_dir: str | None, seed: int,
               endpoint_url: str | None = None) -> tuple[str, Iterator[tuple[int, dict[str, Any]]]]:
    if fmt is DataFormat.tweeteval:
        from asyncmtl.data.tweeteval import iter_tweeteval

        return iter_tweeteval(uri, tweeteval_dir)
    if fmt is DataFormat.builtin:
        from asyncmtl.data.builtin import iter_builtin

        return iter_builtin(uri, seed)
    from asyncmtl.data import files

    reader = {DataFormat.jsonl: files.iter_jsonl, DataFormat.csv: files.iter_csv,
              DataFormat.parquet: files.iter_parquet}[fmt]
    required = [*task.text_fields, task.label_field]  # columns the task reads
    if uri.startswith("s3://"):
        from asyncmtl.data.remote import fetch_s3
        from asyncmtl.storage import StorageError

        try:
            return uri, reader(fetch_s3(uri, endpoint_url=endpoint_url), required)
        except (FileNotFoundError, StorageError) as exc:
            raise DataError([str(exc)]) from None
    path = resolve_path(uri, base_dir)
    if not path.is_file():
        raise DataError([f"{path}: file not found"])
    return str(path), reader(path, required)


def load_split(task: TaskSpec, split: str, *, base_dir: Path | None = None,
               tweeteval_dir: str | None = None, seed: int = 0,
               endpoint_url: str | None = None) -> Split | None:
    """Load and validate one split ("train", "validation" or "test") of `task`.

    Returns None when the task has no such split (only test is optional). `s3://` URIs are
    fetched through `endpoint_url` (the run's `spec.storage.endpointUrl`; see
    `asyncmtl.data.remote`); errors then name the `s3://` URI and the line.

    Raises:
        DataError: missing file, or rows with a missing text or a label of the wrong type or
            out of range (`file:line: reason`).
    """
    uri = {"train": task.data.train, "validation": task.data.validation, "test": task.data.test}[split]
    if uri is None:
        return None
    limit = {"train": task.data.max_train_examples, "validation": task.data.max_validation_examples,
             "test": task.data.max_test_examples}[split]
    fmt = task.data.resolved_format()
    source, rows = _iter_rows(uri, fmt, task, base_dir, tweeteval_dir, seed, endpoint_url)
    out = Split(task=task.name, name=split, source=source)
    problems: list[str] = []
    for line, row in rows:
        if limit is not None and len(out.examples) >= limit:
            break
        try:
            out.examples.append(_validate_row(task, row, len(out.examples)))
        except ValueError as exc:
            problems.append(f"{source}:{line}: {exc}")
            if len(problems) >= MAX_REPORTED_ERRORS:
                break
    if problems:
        raise DataError(problems)
    if not out.examples:
        raise DataError([f"{source}: no examples in the {split} split of task {task.name}"])
    return out


def _validate_row(task: TaskSpec, row: dict[str, Any], idx: int) -> Example:
    texts: list[str] = []
    for fname in task.text_fields:
        v = row.get(fname)
        if not isinstance(v, str):
            raise ValueError(f"field {fname!r}: missing text")
        if not v.strip() and not task.data.allow_empty_text:
            raise ValueError(f"field {fname!r}: empty text (set data.allowEmptyText: true to accept it)")
        texts.append(v)
    if task.label_field not in row or row[task.label_field] is None:
        raise ValueError(f"field {task.label_field!r}: missing label")
    label = parse_label(task, row[task.label_field])
    return Example(id=idx, text=texts[0], text_pair=texts[1] if len(texts) > 1 else None, label=label)


def parse_label(task: TaskSpec, raw: Any) -> Label:
    """Check and convert a raw label for `task`.

    Raises:
        ValueError: wrong type, or out of range (class id outside [0, numLabels), or a
            regression value outside labelRange).
    """
    n = task.num_labels or 1
    if task.type is TaskType.regression:
        if isinstance(raw, bool):  # JSON true is not 1.0
            raise ValueError(f"label {raw!r}: not a number")
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"label {raw!r}: not a number") from None
        lo, hi = task.label_range or (0.0, 1.0)
        if not lo <= v <= hi:
            raise ValueError(f"label {v}: out of range [{lo}, {hi}] (labelRange)")
        return v
    if task.type is TaskType.multilabel:
        if isinstance(raw, str):
            s = raw.strip()
            try:
                raw = json.loads(s) if s.startswith("[") else [int(x) for x in s.replace(",", " ").split()]
            except ValueError:
                raise ValueError(f"label {raw!r}: not a list of class ids") from None
        if not isinstance(raw, (list, tuple)):
            raise ValueError(f"label {raw!r}: a multilabel label is a list of class ids")
        ids = [_class_id(x, n) for x in raw]
        return sorted(set(ids))
    return _class_id(raw, n)


def _class_id(raw: Any, n: int) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"label {raw!r}: not an integer class id")
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, str):
        try:
            raw = int(raw.strip())
        except ValueError:
            raise ValueError(f"label {raw!r}: not an integer class id") from None
    if not isinstance(raw, int):
        raise ValueError(f"label {raw!r}: not an integer class id")
    if not 0 <= raw < n:
        raise ValueError(f"label {raw}: out of range [0, {n - 1}] (numLabels={n})")
    return raw


def load_task_splits(task: TaskSpec, *, base_dir: Path | None = None, tweeteval_dir: str | None = None,
                     seed: int = 0, endpoint_url: str | None = None) -> dict[str, Split]:
    """All splits of a task that exist. Raises DataError as `load_split`."""
    out: dict[str, Split] = {}
    for name in ("train", "validation", "test"):
        s = load_split(task, name, base_dir=base_dir, tweeteval_dir=tweeteval_dir, seed=seed,
                       endpoint_url=endpoint_url)
        if s is not None:
            out[name] = s
    return out
