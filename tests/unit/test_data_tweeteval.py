"""asyncmtl.data.tweeteval: the TweetEval layout (`{split}_text.txt` and `{split}_labels.txt`, one row per
line) behind `tweeteval://<task>/<split>` URIs: `val` also as `validation` or `dev`; stance's five targets
read as one task whose `text_pair` is the target, or one target alone; the root from the argument, else
$TWEETEVAL_DIR; errors name the file (and line)."""
from __future__ import annotations

from pathlib import Path

import pytest

from asyncmtl.data.errors import DataError
from asyncmtl.data.tweeteval import ENV_VAR, STANCE_TARGETS, iter_tweeteval, tweeteval_root


def _write(folder: Path, split: str, rows: list[tuple[str, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_text.txt").write_text("".join(t + "\n" for t, _ in rows), encoding="utf-8")
    (folder / f"{split}_labels.txt").write_text("".join(f"{lab}\n" for _, lab in rows), encoding="utf-8")


@pytest.fixture()
def root(tmp_path) -> Path:
    """A small TweetEval-shaped folder: irony (train, val, test) and stance (every target, train)."""
    r = tmp_path / "tweeteval"
    for split, n in (("train", 5), ("val", 3), ("test", 2)):
        _write(r / "irony", split, [(f"irony {split} {i} #not", i % 2) for i in range(n)])
    for k, target in enumerate(STANCE_TARGETS):
        _write(r / "stance" / target, "train", [(f"{target} tweet {i}", (i + k) % 3) for i in range(k + 1)])
    return r


def _rows(uri: str, root: Path | str | None) -> tuple[str, list]:
    source, rows = iter_tweeteval(uri, None if root is None else str(root))
    return source, list(rows)


def test_a_task_split_reads_each_line_with_its_label_and_line_number(root):
    source, rows = _rows("tweeteval://irony/train", root)
    assert source == str(root.resolve() / "irony" / "train_text.txt")
    assert rows == [(i + 1, {"text": f"irony train {i} #not", "label": str(i % 2)}) for i in range(5)]


@pytest.mark.parametrize("alias", ["val", "validation", "dev"])
def test_validation_and_dev_name_the_val_split(root, alias):
    source, rows = _rows(f"tweeteval://irony/{alias}", root)
    assert source.endswith("val_text.txt")
    assert [r["text"] for _, r in rows] == [f"irony val {i} #not" for i in range(3)]


def test_a_trailing_slash_is_accepted(root):
    assert _rows("tweeteval://irony/test/", root)[1] == _rows("tweeteval://irony/test", root)[1]


def test_stance_reads_every_target_as_one_task_with_the_target_as_text_pair(root):
    _, rows = _rows("tweeteval://stance/train", root)
    expected = [{"text": f"{t} tweet {i}", "label": str((i + k) % 3), "text_pair": t}
                for k, t in enumerate(STANCE_TARGETS) for i in range(k + 1)]
    assert [r for _, r in rows] == expected
    assert [n for n, _ in rows] == list(range(1, len(expected) + 1))  # numbered across the targets
    assert {r["text_pair"] for _, r in rows} == set(STANCE_TARGETS) == {"abortion", "atheism", "climate",
                                                                         "feminist", "hillary"}


def test_one_stance_target_reads_that_target_with_its_name_as_text_pair(root):
    source, rows = _rows("tweeteval://stance/climate/train", root)
    assert source == str(root.resolve() / "stance" / "climate" / "train_text.txt")
    k = STANCE_TARGETS.index("climate")
    assert rows == [(i + 1, {"text": f"climate tweet {i}", "label": str((i + k) % 3), "text_pair": "climate"})
                    for i in range(k + 1)]


def test_a_three_part_uri_outside_stance_has_no_text_pair(root):
    _write(root / "emoji" / "subset", "val", [("🙂 hi", 3)])
    assert _rows("tweeteval://emoji/subset/val", root)[1] == [(1, {"text": "🙂 hi", "label": "3"})]


def test_labels_are_stripped_and_texts_kept_as_written(root):
    folder = root / "hate"
    folder.mkdir()
    (folder / "train_text.txt").write_text("  spaced  \n\nlast\n", encoding="utf-8")
    (folder / "train_labels.txt").write_text(" 1 \n0\n1\r\n", encoding="utf-8")
    assert _rows("tweeteval://hate/train", root)[1] == [
        (1, {"text": "  spaced  ", "label": "1"}), (2, {"text": "", "label": "0"}), (3, {"text": "last", "label": "1"})]


def test_the_root_comes_from_the_environment_when_not_given(root, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(root))
    assert tweeteval_root(None) == root.resolve()
    assert _rows("tweeteval://irony/val", None)[1] == _rows("tweeteval://irony/val", root)[1]
    other = root.parent / "elsewhere"
    other.mkdir()
    assert tweeteval_root(str(other)) == other.resolve()  # the argument wins over the environment


def test_no_root_at_all_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(DataError) as ei:
        tweeteval_root(None)
    assert "--tweeteval-dir" in str(ei.value) and ENV_VAR in str(ei.value)


def test_a_missing_root_is_named(tmp_path):
    with pytest.raises(DataError) as ei:
        tweeteval_root(str(tmp_path / "nope"))
    (problem,) = ei.value.problems
    assert problem.startswith(f"{(tmp_path / 'nope').resolve()}: TweetEval directory not found")


@pytest.mark.parametrize("uri, says", [
    ("tweeteval://irony", "expected tweeteval://<task>/<split>"),
    ("tweeteval://a/b/c/train", "expected tweeteval://<task>/<split>"),
    ("tweeteval://irony/training", "split must be train, val or test"),
])
def test_a_malformed_uri_is_a_data_error_naming_it(root, uri, says):
    with pytest.raises(DataError) as ei:
        iter_tweeteval(uri, str(root))
    (problem,) = ei.value.problems
    assert problem.startswith(f"{uri}: {says}")


def test_an_unknown_task_is_named(root):
    with pytest.raises(DataError) as ei:
        iter_tweeteval("tweeteval://sarcasm/train", str(root))
    assert ei.value.problems == [f"{root.resolve() / 'sarcasm'}: TweetEval task not found"]


def test_a_missing_split_file_is_named(root):
    (root / "irony" / "test_labels.txt").unlink()
    with pytest.raises(DataError) as ei:
        _rows("tweeteval://irony/test", root)
    assert ei.value.problems == [f"{root.resolve() / 'irony' / 'test_labels.txt'}: file not found"]


def test_more_texts_than_labels_names_the_labels_file_and_first_unmatched_line(root):
    folder = root / "irony"
    (folder / "val_labels.txt").write_text("0\n1\n", encoding="utf-8")  # 3 texts
    with pytest.raises(DataError) as ei:
        _rows("tweeteval://irony/val", root)
    (problem,) = ei.value.problems
    assert problem.startswith(f"{root.resolve() / 'irony' / 'val_labels.txt'}:3: 2 labels for 3 texts")


def test_a_tweet_is_one_line_whatever_unicode_it_holds(root):
    folder = root / "offensive"
    texts = ["plain", "line\u2028separator", "form\x0cfeed"]
    _write(folder, "train", [(t, 0) for t in texts])
    assert [r["text"] for _, r in _rows("tweeteval://offensive/train", root)[1]] == texts


# ---- the real TweetEval (tests and benchmarks only; ../shared/data/tweeteval or $TWEETEVAL_DIR) ---------------

def _lines(p: Path) -> list[str]:
    """A file's lines, split at newlines only (the layout's rule: one row per line)."""
    text = p.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def _label_ids(mapping: Path) -> set[str]:
    return {line.split("\t", 1)[0] for line in _lines(mapping) if line.strip()}


def test_every_split_of_the_real_data_reads_line_for_line_with_labels_from_its_mapping(tweeteval_dir):
    tasks = sorted(p.name for p in tweeteval_dir.iterdir() if (p / "mapping.txt").is_file() and p.name != "stance")
    assert tasks, f"no task folders in {tweeteval_dir}"
    for task in tasks:
        ids = _label_ids(tweeteval_dir / task / "mapping.txt")
        for split in ("train", "val", "test"):
            _, rows = iter_tweeteval(f"tweeteval://{task}/{split}", str(tweeteval_dir))
            rows = list(rows)
            texts = _lines(tweeteval_dir / task / f"{split}_text.txt")
            assert [r["text"] for _, r in rows] == texts, (task, split)
            assert [n for n, _ in rows] == list(range(1, len(texts) + 1))
            assert {r["label"] for _, r in rows} <= ids, (task, split)


def test_the_real_stance_split_is_its_five_targets_in_order(tweeteval_dir):
    ids = _label_ids(tweeteval_dir / "stance" / "mapping.txt")
    _, rows = iter_tweeteval("tweeteval://stance/val", str(tweeteval_dir))
    rows = [r for _, r in rows]
    expected = [(t, text) for t in STANCE_TARGETS for text in _lines(tweeteval_dir / "stance" / t / "val_text.txt")]
    assert [(r["text_pair"], r["text"]) for r in rows] == expected
    assert {r["label"] for r in rows} <= ids
