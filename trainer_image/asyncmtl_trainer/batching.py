"""Tokenize once (with an on-disk cache), sample mixed-task batches, pad dynamically.

Batches mix tasks: each slot draws a task with probability proportional to its training-set
size times its `samplingWeight` (paper Sec. 4: "sampled roughly in proportion to dataset
size with manual adjustments"), then an example of that task uniformly (with replacement).
The draw is a pure function of (seed, step, rewinds applied so far), so a resumed run sees the
same batches and a rewound run does not replay the discarded ones. It does not depend on the
control generation: how many generations a runtime used to send the same signals (two tasks'
soft labels in one poll or in two) is a matter of timing and must not change a batch.
"""
from __future__ import annotations

import hashlib
from collections import Counter
import os
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from asyncmtl.data import Split
from asyncmtl.spec import TaskSpec, TaskType

if TYPE_CHECKING:
    from asyncmtl_trainer.distributed import Ranks

log = logging.getLogger(__name__)


@dataclass
class TokenizedSplit:
    """Token ids of one split. `input_ids[i]`/`token_type_ids[i]`: lists of ints (unpadded);
    `labels`: (n,) long for binary/multiclass, (n, num_labels) float multi-hot for multilabel,
    (n,) float in [0, 1] for regression."""

    task: str
    split: str
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def subset(split: TokenizedSplit, start: int, end: int) -> TokenizedSplit:
    """Examples [start, end) of a split, as a split of their own (positions restart at 0)."""
    tt = split.token_type_ids[start:end] if split.token_type_ids is not None else None
    return TokenizedSplit(split.task, split.split, split.input_ids[start:end], tt, split.labels[start:end])


def label_tensor(task: TaskSpec, split: Split) -> torch.Tensor:
    """Labels of a split as a tensor (see `TokenizedSplit.labels`); regression is normalised to [0, 1]."""
    labels = [e.label for e in split.examples]
    if task.type is TaskType.regression:
        lo, hi = task.label_range or (0.0, 1.0)
        return (torch.tensor(labels, dtype=torch.float32) - lo) / (hi - lo)
    if task.type is TaskType.multilabel:
        out = torch.zeros(len(labels), int(task.num_labels or 1))
        for i, ids in enumerate(labels):
            out[i, ids] = 1.0
        return out
    return torch.tensor(labels, dtype=torch.long)


def tokenize_split(task: TaskSpec, split: Split, tokenizer, max_length: int, cache_dir: Path | None) -> TokenizedSplit:
    """Tokenize a split, reusing `cache_dir/<hash>.pt` when the same tokenizer, length and texts were seen."""
    texts = [e.text for e in split.examples]
    pairs = [e.text_pair for e in split.examples] if split.examples[0].text_pair is not None else None
    h = hashlib.sha256()
    h.update(f"{getattr(tokenizer, 'name_or_path', '')}|{tokenizer.vocab_size}|{max_length}|{len(texts)}".encode())
    for i, t in enumerate(texts):
        h.update(t.encode())
        if pairs is not None:
            h.update(b"\x00" + (pairs[i] or "").encode())
    key = h.hexdigest()[:24]
    path = cache_dir / f"{task.name}-{split.name}-{key}.pt" if cache_dir else None
    if path is not None and path.is_file():
        enc = torch.load(path)
    else:
        out = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False,
                        return_token_type_ids=True, return_attention_mask=False)
        enc = {"input_ids": out["input_ids"], "token_type_ids": out.get("token_type_ids")}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # torchrun ranks sharing a workdir each write their own
            torch.save(enc, tmp)
            tmp.replace(path)
    return TokenizedSplit(task.name, split.name, enc["input_ids"], enc["token_type_ids"], label_tensor(task, split))


@dataclass
class Batch:
    """A padded mixed-task batch.

    input_ids, attention_mask, token_type_ids: (batch, seq); rows[task]: (rows,) long indices
    into the batch; example_ids[task]: (rows,) ids within the task's split; labels[task]: the
    task's label rows.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    rows: dict[str, torch.Tensor]
    example_ids: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    global_rows: dict[str, int] | None = None  # rows per task in the whole step's batch (this is a rank's slice)
    world: int = 1  # ranks the whole step's batch is split over (each trains a slice)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        return Batch(self.input_ids.to(device, non_blocking=True), self.attention_mask.to(device, non_blocking=True),
                     self.token_type_ids.to(device, non_blocking=True),
                     {k: v.to(device) for k, v in self.rows.items()}, self.example_ids,
                     {k: v.to(device) for k, v in self.labels.items()}, self.global_rows, self.world)


def pad_batch(items: list[tuple[list[int], list[int] | None]], pad_id: int,
              width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad token id lists to the longest in the batch (or to `width` tokens, at least that):
    three (batch, seq) long tensors."""
    n = len(items)
    width = max(max(len(ids) for ids, _ in items), width or 0)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    tt = torch.zeros((n, width), dtype=torch.long)
    for i, (ids, types) in enumerate(items):
        k = len(ids)
        input_ids[i, :k] = torch.as_tensor(ids)
        mask[i, :k] = 1
        if types is not None:
            tt[i, :k] = torch.as_tensor(types)
    return input_ids, mask, tt


class TaskSampler:
    """Draws mixed-task batches (see module docstring). `sizes`: training examples per task."""

    def __init__(self, sizes: dict[str, int], weights: dict[str, float], batch_size: int, seed: int) -> None:
        self.sizes = sizes
        self.weights = weights
        self.batch_size = batch_size
        self.seed = seed

    def probabilities(self, active: list[str], scale: dict[str, float] | None = None) -> dict[str, float]:
        """Per-task share of a batch among `active` tasks (sums to 1); `scale` multiplies some tasks'
        shares (e.g. `distillation.kdSamplingWeight` for converged tasks)."""
        scale = scale or {}
        raw = {t: self.sizes[t] * self.weights[t] * scale.get(t, 1.0) for t in active}
        total = sum(raw.values())
        return {t: v / total for t, v in raw.items()}

    def draw(self, step: int, rewinds: int, active: list[str], scale: dict[str, float] | None = None) -> list[tuple[str, int]]:
        """(task, example id) for each slot of the batch at `step` (steps) after `rewinds` rewinds.
        `active` must be non-empty."""
        rng = np.random.default_rng([self.seed, step, rewinds])
        probs = self.probabilities(active, scale)
        names = list(probs)
        picks = rng.choice(len(names), size=self.batch_size, p=[probs[n] for n in names])
        out = []
        for ti in picks:
            t = names[int(ti)]
            out.append((t, int(rng.integers(self.sizes[t]))))
        return out


def drawn_rows(batch: Batch) -> dict[str, int]:
    """Rows per task in the whole step's draw that `batch` (a rank's slice, or the whole batch in one process)
    belongs to: task -> examples drawn for it at that step."""
    if batch.global_rows is not None:
        return dict(batch.global_rows)
    return {t: int(r.numel()) for t, r in batch.rows.items() if r.numel()}


def draw_width(draw: list[tuple[str, int]], train: dict[str, TokenizedSplit]) -> int:
    """Tokens in the longest example of a draw (the padded width of its whole batch)."""
    return max(len(train[t].input_ids[j]) for t, j in draw)


def make_batch(draw: list[tuple[str, int]], train: dict[str, TokenizedSplit], pad_id: int,
               width: int | None = None) -> Batch:
    """Assemble a padded `Batch` from (task, example id) draws, grouping rows by task (padded to the longest
    example, or to `width` tokens: a rank's slice is padded as the whole batch would be)."""
    items = []
    rows: dict[str, list[int]] = {}
    ids: dict[str, list[int]] = {}
    for i, (t, j) in enumerate(draw):
        s = train[t]
        items.append((s.input_ids[j], s.token_type_ids[j] if s.token_type_ids is not None else None))
        rows.setdefault(t, []).append(i)
        ids.setdefault(t, []).append(j)
    input_ids, mask, tt = pad_batch(items, pad_id, width)
    id_t = {t: torch.tensor(v, dtype=torch.long) for t, v in ids.items()}
    return Batch(input_ids, mask, tt, {t: torch.tensor(v, dtype=torch.long) for t, v in rows.items()}, id_t,
                 {t: train[t].labels[id_t[t]] for t in rows})


def eval_batches(split: TokenizedSplit, batch_size: int, pad_id: int):
    """Yield (example ids (rows,), input_ids, attention_mask, token_type_ids) in length-sorted batches
    (less padding; inference and validation)."""
    order = np.argsort(split.lengths(), kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        items = [(split.input_ids[i], split.token_type_ids[i] if split.token_type_ids is not None else None) for i in idx]
        yield torch.as_tensor(idx, dtype=torch.long), *pad_batch(items, pad_id)


def rank_batch(draw: list[tuple[str, int]], train: dict[str, TokenizedSplit], pad_id: int, ranks: "Ranks",
               every_head: list[str] | None = None) -> Batch:
    """This rank's slice of a step's mixed batch (`draw`: the whole global draw, the same on every rank).

    One process: the whole batch. Under torchrun: the rank's contiguous share (`Ranks.local_slice`), padded as
    the whole batch is (each rank's forward then computes the single-process forward's rows), with
    `global_rows` set. `every_head` (FSDP: every rank runs the same heads in the same order): the global
    batch's tasks in this order, with zero rows where this rank's slice has none.
    """
    if not ranks.distributed:
        return make_batch(draw, train, pad_id)
    batch = make_batch(ranks.local_slice(draw), train, pad_id, draw_width(draw, train))
    batch.global_rows = dict(Counter(t for t, _ in draw))
    batch.world = ranks.world
    if every_head is not None:
        empty = torch.zeros(0, dtype=torch.long)
        order = [t for t in every_head if t in batch.global_rows]
        batch.rows = {t: batch.rows.get(t, empty) for t in order}
        batch.example_ids = {t: batch.example_ids.get(t, empty) for t in order}
        batch.labels = {t: batch.labels[t] if t in batch.labels else train[t].labels[empty] for t in order}
    return batch
