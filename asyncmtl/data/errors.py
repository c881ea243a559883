"""The data package's error, apart from the readers so that they and `examples` (which dispatches to
them) do not import each other."""
from __future__ import annotations


class DataError(ValueError):
    """Bad data. `problems` are `file:line: reason` strings (at most 20 are collected)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
