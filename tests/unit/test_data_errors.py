"""asyncmtl.data.errors: `DataError` is a ValueError that keeps its `file:line: reason` problems, one per line
of its message; every reader of the data package raises it."""
from __future__ import annotations

import pytest

from asyncmtl.data import DataError as PackageDataError
from asyncmtl.data.errors import DataError
from asyncmtl.data.files import iter_jsonl
from asyncmtl.data.tweeteval import tweeteval_root


def test_a_data_error_keeps_its_problems_and_says_them_one_per_line():
    problems = ["a.jsonl:3: label 2: out of range [0, 1]", "a.jsonl:9: field 'text': missing text"]
    err = DataError(problems)
    assert err.problems == problems
    assert str(err).splitlines() == problems
    assert isinstance(err, ValueError)


def test_one_problem_is_the_whole_message():
    assert str(DataError(["x.csv: file not found"])) == "x.csv: file not found"


def test_the_package_s_data_error_is_this_class():
    assert PackageDataError is DataError


def test_the_readers_raise_it(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text("[1, 2]\n")
    with pytest.raises(DataError) as ei:
        list(iter_jsonl(p))
    assert ei.value.problems == [f"{p}:1: expected a JSON object"]
    with pytest.raises(DataError):
        tweeteval_root(str(tmp_path / "missing"))
