"""asyncmtl_trainer.evaluation: `Evaluator.predict` gives a task head's raw outputs for every example of a
split, in split order, (n, num_labels) float32, in eval mode (no dropout), whatever the batch size (length-sorted
padded batches compute what each example alone computes); `evaluate` scores them; `batches_per_rank` is the
number of forward passes the largest rank share needs (one process, no process group)."""
from __future__ import annotations

import json
import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from asyncmtl.data import load_split
from asyncmtl.spec import parse_run
from asyncmtl_trainer.batching import tokenize_split
from asyncmtl_trainer.distributed import Ranks
from asyncmtl_trainer.evaluation import Evaluator
from asyncmtl_trainer.model import build_model
from tests.conftest import run_doc

TEXTS = ["a", "a much longer sentence with quite a few more tokens in it than the others", "two words",
         "three short words", "", "x y z w v u t s", "one more for an odd count"]
LABELS = [0, 2, 1, 1, 0, 2, 1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_model):
    """(task spec, model with a dropout before its heads, tokenized split of TEXTS)."""
    tmp = tmp_path_factory.mktemp("evaluation")
    (tmp / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in zip(TEXTS, LABELS)))
    doc = run_doc([{"name": "topic", "type": "multiclass", "numLabels": 3, "metric": "accuracy",
                    "data": {"train": str(tmp / "d.jsonl"), "validation": str(tmp / "d.jsonl"),
                             "allowEmptyText": True}}], model=str(tiny_model))
    doc["spec"]["model"]["dropout"] = 0.5
    spec = parse_run(doc).spec
    torch.manual_seed(0)
    model, tokenizer, _ = build_model(spec)
    task = spec.tasks[0]
    split = tokenize_split(task, load_split(task, "validation"), tokenizer, 32, None)
    return task, model, split, int(tokenizer.pad_token_id)


def _alone(model, task, split) -> np.ndarray:
    """Each example's outputs computed on its own (no padding), in eval mode."""
    model.eval()
    rows = []
    with torch.no_grad():
        for i in range(len(split)):
            ids = torch.tensor([split.input_ids[i]])
            tt = torch.tensor([split.token_type_ids[i]])
            rows.append(model.head(task.name, model(ids, torch.ones_like(ids), tt))[0].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_predict_gives_every_example_s_outputs_in_split_order_whatever_the_batch_size(parts, batch_size):
    task, model, split, pad = parts
    out = Evaluator(model, Ranks(), batch_size, pad, nullcontext).predict(task, split)
    assert out.shape == (len(TEXTS), 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, _alone(model, task, split), atol=1e-5)


def test_predict_runs_in_eval_mode_so_repeats_agree_despite_dropout(parts):
    task, model, split, pad = parts
    model.train()
    ev = Evaluator(model, Ranks(), 4, pad, nullcontext)
    first = ev.predict(task, split)
    model.train()
    assert np.array_equal(first, ev.predict(task, split))
    assert not model.training


def test_each_forward_pass_runs_under_the_autocast_context(parts):
    task, model, split, pad = parts
    entered = []

    def autocast():
        entered.append(1)
        return nullcontext()

    Evaluator(model, Ranks(), 3, pad, autocast).predict(task, split)
    assert len(entered) == math.ceil(len(TEXTS) / 3)


def test_evaluate_scores_the_predictions_against_the_split_s_labels(parts):
    task, model, split, pad = parts
    ev = Evaluator(model, Ranks(), 2, pad, nullcontext)
    pred = _alone(model, task, split).argmax(1)
    scores = ev.evaluate(task, split)
    assert scores["accuracy"] == pytest.approx(100.0 * float((pred == np.array(LABELS)).mean()))
    assert all(0.0 <= v <= 100.0 for v in scores.values())


def test_an_empty_split_predicts_nothing(parts):
    from asyncmtl_trainer.batching import subset

    task, model, split, pad = parts
    out = Evaluator(model, Ranks(), 4, pad, nullcontext, lockstep=True).predict(task, subset(split, 0, 0))
    assert out.shape == (0, 3)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 4])
def test_batches_per_rank_is_what_the_largest_rank_share_needs(parts, n, world, batch):
    _, model, _, pad = parts
    largest = max(len(a) for a in np.array_split(np.arange(n), world))  # the ranks' shares (Ranks.slice_bounds)
    ev = Evaluator(model, Ranks(rank=0, world=world), batch, pad, nullcontext)
    assert ev.batches_per_rank(n) == math.ceil(largest / batch)
