"""Checkpoints off the critical path (asyncmtl_trainer.checkpoint.AsyncCheckpointer): training goes on while a
checkpoint is written; readers wait for it; a failed background write surfaces as the StorageFault it was."""
from __future__ import annotations

import threading

import pytest
import torch

from asyncmtl.failpoints import Failpoints
from asyncmtl.storage import FileRunStorage, StorageFault
from asyncmtl_trainer.checkpoint import AsyncCheckpointer, CheckpointState


class GatedStorage(FileRunStorage):
    """A folder whose state.json writes wait until the test opens the gate (a slow disk or upload)."""

    def __init__(self, root, gate: threading.Event) -> None:
        super().__init__(root)
        self.gate = gate

    def put_bytes(self, key: str, data: bytes) -> None:
        if key.endswith("state.json"):
            assert self.gate.wait(30)
        super().put_bytes(key, data)


def parts():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def test_training_goes_on_while_a_checkpoint_is_written_and_the_copy_is_the_state_at_save_time(tmp_path):
    gate = threading.Event()
    model, opt, sched = parts()
    ck = AsyncCheckpointer(GatedStorage(tmp_path / "run", gate), tmp_path / "scratch")
    at_save = {k: v.clone() for k, v in model.state_dict().items()}
    ck.save(10, model, opt, sched, CheckpointState(step=10, applied_generation=0))
    assert ck.in_flight() == 10  # save returned; the write waits on the (gated) disk
    assert not (tmp_path / "run" / "checkpoints" / "step-00000010" / "state.json").exists()
    with torch.no_grad():  # training goes on and changes the live weights
        for p in model.parameters():
            p.add_(1.0)
    gate.set()
    assert ck.steps() == [10]  # a reader waits for the checkpoint in flight
    fresh = torch.nn.Linear(4, 2)
    ck.load_weights(10, fresh)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, at_save[k]), k  # the checkpoint holds the weights as they were at save time
    ck.close()


def test_a_failed_background_write_raises_its_storage_fault_at_the_next_call_and_leaves_nothing(tmp_path):
    model, opt, sched = parts()
    storage = FileRunStorage(tmp_path / "run", Failpoints.parse("storage.write:checkpoints=ENOSPC@4"))
    ck = AsyncCheckpointer(storage, tmp_path / "scratch")
    ck.save(10, model, opt, sched, CheckpointState(step=10, applied_generation=0))
    ck.save(20, model, opt, sched, CheckpointState(step=20, applied_generation=0))  # its state.json fails, off-thread
    with pytest.raises(StorageFault, match="No space left on device"):
        ck.wait()
    assert ck.steps() == [10]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000010"]
    ck.close()


def test_retention_runs_after_the_write_with_the_bests_of_save_time(tmp_path):
    model, opt, sched = parts()
    ck = AsyncCheckpointer(FileRunStorage(tmp_path / "run"), tmp_path / "scratch")
    for step in (10, 20, 30):
        ck.save(step, model, opt, sched, CheckpointState(step=step, applied_generation=0),
                keep=lambda written, step=step: {10, step})
    assert ck.steps() == [10, 30]
    ck.close()
