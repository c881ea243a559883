"""One rank of a 2-process gloo group for tests/trainer/test_distributed.py (started by torchrun).

It builds the trainer on a tiny BERT, trains to step 10 (a validation step and its checkpoint), trains on to
step 14, then applies one control generation whose `converged` signal rewinds to step 10, trains 3 more
steps, and saves its parameters and optimizer state to `<out>/rank-<rank>.pt` for the test to compare (under
`training.parallelism: fsdp` also the whole state right after the rewind, gathered, to `<out>/restored.pt`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from asyncmtl.control import ConvergedSignal
from asyncmtl.spec import parse_run
from asyncmtl.storage_factory import open_run_storage
from asyncmtl_trainer.distributed import init_ranks
from asyncmtl_trainer.train import Trainer, TrainerOptions


def main(spec_path: str, out: str) -> None:
    spec = parse_run(yaml.safe_load(Path(spec_path).read_text())).spec
    ranks = init_ranks("cpu")
    storage = open_run_storage(spec.storage.uri, namespace="local", run="t")
    wd = Path(out) / "wd"
    tr = Trainer(spec, TrainerOptions(run="t", namespace="local", control_path=Path(out) / "control.json", workdir=wd),
                 storage, ranks)
    tr.setup()
    for _ in range(14):
        tr.step_once()
    tr.apply_generation([ConvergedSignal(generation=1, task="sentiment", best_step=10, rewind_to=10)], 1)
    assert tr.step == 10, tr.step
    if tr.state_io.sharded:  # FSDP: the whole state as the rewind restored it, gathered to rank 0
        restored = {"params": tr.state_io.model_state(tr.model), "optimizer": tr.state_io.optimizer_state(tr.model, tr.optimizer)}
        if ranks.is_coordinator:
            torch.save(restored, Path(out) / "restored.pt")
    for _ in range(3):
        tr.step_once()
    torch.save({"params": {k: v.detach().clone() for k, v in tr.model.state_dict().items()},
                "optimizer": tr.optimizer.state_dict(), "scheduler": tr.scheduler.state_dict(), "step": tr.step,
                "rewinds": tr.rewinds}, Path(out) / f"rank-{ranks.rank}.pt")
    tr.checkpointer.close()
    ranks.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
