"""Reader for the TweetEval directory layout (Barbieri et al., Findings of EMNLP 2020).

URIs: `tweeteval://<task>/<split>` with split train|val|test (`validation` is accepted for
val), e.g. `tweeteval://emotion/train`. Stance has one folder per target; `tweeteval://stance/
train` reads all five targets as one task whose `text_pair` is the target name (so the model
knows which target a tweet is about), and `tweeteval://stance/abortion/train` reads one target.

The root directory comes from the `tweeteval_dir` argument, else `$TWEETEVAL_DIR`.
Layout per task: `{split}_text.txt` (one tweet per line) and `{split}_labels.txt` (one
integer per line, same order).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from asyncmtl.data.errors import DataError
from asyncmtl.data.files import split_lines

STANCE_TARGETS = ("abortion", "atheism", "climate", "feminist", "hillary")
ENV_VAR = "TWEETEVAL_DIR"


def tweeteval_root(tweeteval_dir: str | None) -> Path:
    """The TweetEval root. Raises DataError if unset or missing."""
    root = tweeteval_dir or os.environ.get(ENV_VAR)
    if not root:
        raise DataError([f"tweeteval:// data needs the TweetEval directory: pass --tweeteval-dir or set ${ENV_VAR}"])
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DataError([f"{path}: TweetEval directory not found (--tweeteval-dir / ${ENV_VAR})"])
    return path


def _read_pair(folder: Path, split: str, pair: str | None, line_offset: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    text_path = folder / f"{split}_text.txt"
    label_path = folder / f"{split}_labels.txt"
    for p in (text_path, label_path):
        if not p.is_file():
            raise DataError([f"{p}: file not found"])
    texts = split_lines(text_path.read_text(encoding="utf-8"))  # one tweet per line, whatever Unicode it holds
    labels = split_lines(label_path.read_text(encoding="utf-8"))
    if len(texts) != len(labels):
        raise DataError([f"{label_path}:{min(len(texts), len(labels)) + 1}: {len(labels)} labels for {len(texts)} texts in {text_path.name}"])
    for i, (t, lab) in enumerate(zip(texts, labels), start=1):
        row: dict[str, Any] = {"text": t, "label": lab.strip()}
        if pair is not None:
            row["text_pair"] = pair
        yield i, row


def iter_tweeteval(uri: str, tweeteval_dir: str | None) -> tuple[str, Iterator[tuple[int, dict[str, Any]]]]:
    """Rows of one TweetEval split; errors name the text file (labels are on the same line of the labels file)."""
    parts = uri.removeprefix("tweeteval://").strip("/").split("/")
    if len(parts) not in (2, 3):
        raise DataError([f"{uri}: expected tweeteval://<task>/<split> or tweeteval://stance/<target>/<split>"])
    split = {"validation": "val", "dev": "val"}.get(parts[-1], parts[-1])
    if split not in ("train", "val", "test"):
        raise DataError([f"{uri}: split must be train, val or test"])
    root = tweeteval_root(tweeteval_dir)
    if len(parts) == 3:
        folder = root / parts[0] / parts[1]
        return str(folder / f"{split}_text.txt"), _read_pair(folder, split, parts[1] if parts[0] == "stance" else None)
    task = parts[0]
    if task == "stance":
        def all_targets() -> Iterator[tuple[int, dict[str, Any]]]:
            n = 0
            for target in STANCE_TARGETS:
                for _, row in _read_pair(root / "stance" / target, split, target):
                    n += 1
                    yield n, row
        return str(root / "stance" / f"{{{','.join(STANCE_TARGETS)}}}/{split}_text.txt"), all_targets()
    folder = root / task
    if not folder.is_dir():
        raise DataError([f"{folder}: TweetEval task not found"])
    return str(folder / f"{split}_text.txt"), _read_pair(folder, split, None)
