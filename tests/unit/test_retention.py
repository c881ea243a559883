"""A Succeeded run keeps what `storage.keepCheckpoints` says, and a kept best checkpoint still loads."""
from __future__ import annotations

import json

import pytest
import torch

from asyncmtl.artifacts import FINAL
from asyncmtl.retention import retain_after_run
from asyncmtl.storage import FileRunStorage
from asyncmtl_trainer.checkpoint import Checkpointer, CheckpointState


@pytest.fixture
def finished(tmp_path):
    """A finished run: checkpoints at steps 10..50; a's best is 20, b's 40."""
    storage = FileRunStorage(tmp_path / "run")
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ck = Checkpointer(storage, tmp_path / "scratch")
    for step in (10, 20, 30, 40, 50):
        ck.save(step, model, opt, sched, CheckpointState(step=step, applied_generation=0))
    storage.put_bytes(FINAL, json.dumps({"step": 50, "tasks": {
        "a": {"bestCheckpoint": {"step": 20}}, "b": {"bestCheckpoint": {"step": 40}}}}).encode())
    return storage, ck, model


def test_best_keeps_each_tasks_best_checkpoint_weights_only_and_it_still_loads(finished):
    storage, ck, model = finished
    done = retain_after_run(storage, ["a", "b"], "best")
    assert done.kept == [20, 40] and done.deleted == [10, 30, 50]
    assert ck.steps() == [20, 40]
    root = storage.local_path("checkpoints")
    assert sorted(p.name for p in (root / "step-00000020").iterdir()) == ["model.safetensors", "state.json"]
    fresh = torch.nn.Linear(4, 2)
    ck.load_weights(20, fresh)  # sha256 verified against the rewritten state.json
    assert torch.equal(fresh.weight, model.weight)


def test_none_and_all(finished):
    storage, ck, _ = finished
    assert retain_after_run(storage, ["a", "b"], "all").kept == [10, 20, 30, 40, 50]
    assert ck.steps() == [10, 20, 30, 40, 50]
    assert retain_after_run(storage, ["a", "b"], "none").deleted == [10, 20, 30, 40, 50]
    assert ck.steps() == [] and storage.exists(FINAL)
