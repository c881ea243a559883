"""The trainer's process group: one process, or `torchrun`'s ranks (torch.distributed).

Under `torchrun` (environment `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`/`MASTER_PORT`, see
https://pytorch.org/docs/stable/elastic/run.html) the trainer joins the default process group:
NCCL when it trains on CUDA (one GPU per rank, `cuda:LOCAL_RANK`), gloo on CPU. Without those
variables it is rank 0 of a world of one, and every collective here is a no-op, so the single-process
trainer runs exactly the code it always ran.

What the ranks share, and who does what:
- every rank draws the same global mixed-task batch (`asyncmtl_trainer.batching`: a pure function of
  seed, step and rewinds) and trains on its contiguous slice of it (`local_slice`); DDP averages the
  gradients, and the trainer scales each task's loss so the average is the single-process gradient of
  the same global batch (`asyncmtl_trainer.losses.TaskLosses`);
- validation and soft-label predictions are computed on a slice of the split per rank and gathered
  (`gather_rows`), so every rank holds the same metrics and makes the same convergence decisions;
- rank 0 alone reads the control file, exports metrics, writes history and checkpoints; it broadcasts
  each control decision (`broadcast`), so every rank applies a generation at the same step.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")

# A rank may wait this long in a collective: rank 0 holding at a decision barrier keeps polling (and
# broadcasting every `control_poll_seconds`), so only a dead peer can reach it (torchrun then restarts).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


class DistributedSetupError(RuntimeError):
    """The trainer cannot run as asked under torchrun (e.g. a weighting method that needs per-rank
    gradients of the whole batch, or fewer examples per batch than ranks)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group.

    Attributes:
        rank: global rank (0 = the coordinator). world: number of processes.
        local_rank: rank on this node (the GPU index under CUDA). device: where this rank computes.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_coordinator(self) -> bool:
        """Rank 0: reads control, exports metrics, writes history and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # ---- collectives (no-ops for a world of one) ----------------------------------------------
    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (pickled; small control objects only)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_coordinator else None]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]  # type: ignore[return-value]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks, in place (returns `t`)."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    # ---- data slicing --------------------------------------------------------------------------
    def slice_bounds(self, n: int) -> tuple[int, int]:
        """[start, end) of this rank's contiguous share of n items (np.array_split's rule: the first
        n % world ranks get one more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def local_slice(self, items: list[T]) -> list[T]:
        """This rank's contiguous share of the global `items` (the same list on every rank)."""
        start, end = self.slice_bounds(len(items))
        return items[start:end]

    def gather_rows(self, idx: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
        """Assemble a split's outputs from every rank's share.

        Args:
            idx: (k,) positions in the split this rank computed; rows: (k, d) their outputs; n: split size.
        Returns:
            (n, d) outputs of the whole split, the same on every rank.
        Raises:
            RuntimeError: the ranks' shares do not cover the split exactly once.
        """
        parts = self.all_gather((idx, rows))
        out = np.empty((n, rows.shape[1]), dtype=rows.dtype)
        seen = np.zeros(n, dtype=bool)
        for i, r in parts:
            out[i] = r
            seen[i] = True
        if not seen.all():
            raise RuntimeError(f"gathered outputs cover {int(seen.sum())} of {n} rows")
        return out

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def local_device(device_pref: str) -> torch.device:
    """The device of a single process for `spec.training.device` (auto, cpu, cuda): CUDA when asked for or, under
    auto, when torch sees one; else the CPU (a single process never fails for want of CUDA here; `init_ranks`
    does, under torchrun)."""
    if device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def under_torchrun(env: dict[str, str] | None = None) -> bool:
    """True when torchrun (or any launcher setting its variables) started this process."""
    env = dict(os.environ) if env is None else env
    return "RANK" in env and "WORLD_SIZE" in env


def init_ranks(device_pref: str) -> Ranks:
    """Join torchrun's process group when launched by it (else a world of one).

    Args:
        device_pref: `spec.training.device` (auto, cpu, cuda).
    Returns:
        this process's `Ranks`; CUDA ranks are bound to `cuda:LOCAL_RANK`.
    Raises:
        DistributedSetupError: CUDA asked for but unavailable, or fewer GPUs than local ranks.
    """
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise DistributedSetupError("spec.training.device: cuda, but torch sees no CUDA device")
    if not under_torchrun():
        return Ranks(device=local_device(device_pref))
    use_cuda = local_device(device_pref).type == "cuda"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT,
                                device_id=device if use_cuda else None)
    return Ranks(rank=rank, world=world, local_rank=local_rank, device=device)


def restarted_by_torchrun(env: dict[str, str] | None = None) -> bool:
    """True when torchrun restarted this worker group after a failure (`TORCHELASTIC_RESTART_COUNT` > 0):
    the trainer then resumes from the latest checkpoint."""
    env = dict(os.environ) if env is None else env
    return int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
