"""Task data: readers for JSONL/CSV/Parquet files, the TweetEval layout and the built-in benchmark."""
from asyncmtl.data.examples import DataError, Example, Split, load_split, load_task_splits

__all__ = ["DataError", "Example", "Split", "load_split", "load_task_splits"]
