"""Checkpoints at each validation step: safetensors weights + optimizer, scheduler and RNG state.

Layout: `asyncmtl.artifacts.checkpoint_key(step)` holding `model.safetensors`, `training_state.pt` and
`state.json`; `state.json` is written last, holds the sha256 of the other two files, and marks the checkpoint
complete. Saving is split in two: `snapshot` copies what a checkpoint holds off the live model and
optimizer (to CPU; pinned memory on CUDA), and `Checkpointer.write` serialises, hashes and uploads
that copy, so `AsyncCheckpointer` can write it on a background thread while training goes on.
Retention keeps the latest checkpoint and, for every task still needing one, its best
and previous best (the previous covers a best that moved between a convergence decision and the
trainer applying it), and the bests that kept checkpoints recorded; everything else is deleted.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from asyncmtl.artifacts import (CHECKPOINT_STATE, CHECKPOINT_TRAINING, CHECKPOINT_WEIGHTS, checkpoint_file, checkpoint_key,
                                checkpoint_steps)
from asyncmtl.storage import RunStorage, StorageError, as_storage_fault, sha256_file
from asyncmtl_trainer.distributed import Ranks
from asyncmtl_trainer.sharding import StateIO

log = logging.getLogger(__name__)


@dataclass
class CheckpointState:
    """The JSON part of a checkpoint. `trackers`: task -> {bestStep, bestValue, prevBestStep,
    lastStep, lastValue}; `validations`: task -> count; `history`: task -> [[step, value], ...]."""

    step: int
    applied_generation: int
    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)
    validations: dict[str, int] = field(default_factory=dict)
    history: dict[str, list[list[float]]] = field(default_factory=dict)
    weighting: dict[str, Any] = field(default_factory=dict)
    rewinds: int = 0  # rewinds applied before this checkpoint (the batch draw's key; see batching)
    sha256: dict[str, str] = field(default_factory=dict)


@dataclass
class CheckpointSnapshot:
    """A copy of what one checkpoint holds, detached from the live objects (training may go on).

    Attributes:
        weights: parameter name -> CPU tensor (tied names removed, as `safetensors.torch.save_model` does).
        metadata: safetensors metadata (removed tied name -> kept name).
        training: {"optimizer", "scheduler", "rng"[, "rankRng"]}: the optimizer's and scheduler's state
            dicts with CPU tensors, this process's RNG state and, under torchrun, every rank's.
        nbytes: bytes of tensor data copied.
    """

    weights: dict[str, torch.Tensor]
    metadata: dict[str, str] | None
    training: dict[str, Any]
    nbytes: int


def _detached_copy(obj: Any, pin: bool) -> Any:
    """`obj` with every tensor copied to CPU (pinned when `pin`); containers rebuilt, the rest shared."""
    if torch.is_tensor(obj):
        t = obj.detach()
        if t.device.type == "cpu":
            return t.clone()
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
        out.copy_(t, non_blocking=pin)
        return out
    if isinstance(obj, dict):
        return {k: _detached_copy(v, pin) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached_copy(v, pin) for v in obj)
    return obj


def snapshot(model: torch.nn.Module, optimizer, scheduler, rank_rngs: list[dict[str, Any]] | None = None,
             io: StateIO = StateIO()) -> CheckpointSnapshot:
    """Copy model weights, optimizer, scheduler and RNG state off the live objects.

    On CUDA the copies go to pinned host memory asynchronously and are synchronised once at the end.
    Args:
        rank_rngs: every rank's `rng_state()` under torchrun (rank order), stored besides this rank's.
        io: how the state is read; sharded (FSDP): a collective that gathers the full state to rank 0
            (the snapshot of the other ranks is empty).
    """
    from safetensors.torch import _remove_duplicate_names

    state = io.model_state(model)
    metadata: dict[str, str] | None = None
    for kept, removed in _remove_duplicate_names(state).items():
        for name in removed:
            metadata = metadata or {}
            metadata.setdefault(name, kept)
            del state[name]
    pin = any(v.is_cuda for v in state.values())
    weights = {k: _detached_copy(v.contiguous(), pin) for k, v in state.items()}
    training = {"optimizer": _detached_copy(io.optimizer_state(model, optimizer), pin),
                "scheduler": _detached_copy(scheduler.state_dict(), False), "rng": rng_state()}
    if rank_rngs is not None:
        training["rankRng"] = rank_rngs
    if pin:
        torch.cuda.synchronize()
    nbytes = sum(t.numel() * t.element_size() for t in weights.values())
    nbytes += sum(t.numel() * t.element_size() for s in training["optimizer"].get("state", {}).values()
                  for t in s.values() if torch.is_tensor(t))
    return CheckpointSnapshot(weights, metadata, training, nbytes)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves, loads, lists and prunes one run's checkpoints in `storage` (via `scratch` for remote stores).

    `io`: how model and optimizer state are read and restored (`StateIO(sharded=True)` under FSDP:
    `save`, `load` and `load_weights` are then collectives).
    """

    def __init__(self, storage: RunStorage, scratch: Path, io: StateIO = StateIO()) -> None:
        self.storage = storage
        self.scratch = scratch
        self.io = io

    def _local_dir(self, step: int) -> Path:
        p = self.storage.local_path(checkpoint_key(step))
        return p if p is not None else self.scratch / checkpoint_key(step)

    def save(self, step: int, model: torch.nn.Module, optimizer, scheduler, state: CheckpointState) -> None:
        """Write a complete checkpoint for `step` now (state.json last): `write(step, snapshot(...), state)`.

        Raises:
            StorageFault: as `write`.
        """
        self.write(step, snapshot(model, optimizer, scheduler, io=self.io), state)

    def write(self, step: int, snap: CheckpointSnapshot, state: CheckpointState) -> None:
        """Write checkpoint `step` from a snapshot: weights, training state, their sha256 in state.json, last.

        Raises:
            StorageFault: a write failed (disk full, read-only, ...); the partial checkpoint is removed
                (best effort) and, lacking its state.json, is never used.
        """
        from safetensors.torch import save_file

        d = self._local_dir(step)
        try:
            d.mkdir(parents=True, exist_ok=True)
            weights, training = d / CHECKPOINT_WEIGHTS, d / CHECKPOINT_TRAINING
            self.storage.writing(checkpoint_file(step, CHECKPOINT_WEIGHTS))  # a local folder: its checks and failpoints
            save_file(snap.weights, str(weights), metadata=snap.metadata)
            with open(training, "wb") as f:  # a Python file object: a short write raises OSError(ENOSPC)
                torch.save(snap.training, f)
            state.sha256 = {n: sha256_file(d / n) for n in (CHECKPOINT_WEIGHTS, CHECKPOINT_TRAINING)}
            for n in (CHECKPOINT_WEIGHTS, CHECKPOINT_TRAINING):
                self.storage.put_file(checkpoint_file(step, n), d / n)
            self.storage.put_bytes(checkpoint_file(step, CHECKPOINT_STATE), json.dumps(state.__dict__).encode())
        except Exception as exc:
            fault = as_storage_fault(exc, d)
            if fault is None:
                raise
            self._discard(step)
            raise fault from None

    def _discard(self, step: int) -> None:
        """Delete checkpoint `step`'s files, ignoring errors (it is being abandoned)."""
        import shutil

        try:
            self.storage.delete_prefix(checkpoint_key(step))
        except (OSError, StorageError):
            pass
        shutil.rmtree(self.scratch / checkpoint_key(step), ignore_errors=True)

    def discard_incomplete(self) -> list[int]:
        """Delete checkpoints without a state.json (a writer died or failed midway); returns their steps."""
        gone = sorted(set(checkpoint_steps(self.storage, complete=False)) - set(self.steps()))
        for s in gone:
            self._discard(s)
        return gone

    def steps(self) -> list[int]:
        """Steps of complete checkpoints (with a state.json), ascending."""
        return checkpoint_steps(self.storage, complete=True)

    def read_state(self, step: int) -> CheckpointState:
        try:
            raw = json.loads(self.storage.get_bytes(checkpoint_file(step, CHECKPOINT_STATE)))
        except StorageError:
            raise StorageError(f"checkpoint at step {step} not found") from None
        return CheckpointState(**raw)

    def fetch(self, step: int) -> tuple[Path, CheckpointState]:
        """Local folder of checkpoint `step` with verified files, and its state.

        Raises:
            StorageError: missing, or a file's sha256 does not match state.json.
        """
        state = self.read_state(step)
        d = self._local_dir(step)
        for name, digest in state.sha256.items():
            p = self.storage.get_file(checkpoint_file(step, name), d / name)
            if sha256_file(p) != digest:
                raise StorageError(f"checkpoint step {step}: {name} does not match its sha256")
        return d, state

    def load_weights(self, step: int, model: torch.nn.Module) -> CheckpointState:
        """Load only the model weights of checkpoint `step` into `model`."""
        from safetensors import safe_open
        from safetensors.torch import load_file, load_model

        d, state = self.fetch(step)
        path = str(d / CHECKPOINT_WEIGHTS)
        if not self.io.sharded:
            load_model(model, path, device=str(next(model.parameters()).device))
            return state
        weights = load_file(path)
        with safe_open(path, "pt") as f:  # tied names the file stores once (removed name -> kept name)
            weights.update({removed: weights[kept] for removed, kept in (f.metadata() or {}).items() if kept in weights})
        self.io.load_model_state(model, weights)
        return state

    def load(self, step: int, model: torch.nn.Module, optimizer, scheduler, rank: int = 0, world: int = 1) -> CheckpointState:
        """Restore weights, optimizer, scheduler and RNG state of checkpoint `step`.

        Under torchrun each rank restores its own RNG state when the checkpoint holds one per rank of
        a group of the same size (`rank`, `world`); otherwise the saving rank's."""
        state = self.load_weights(step, model)
        d = self._local_dir(step)
        ts = torch.load(d / CHECKPOINT_TRAINING, weights_only=False, map_location=next(model.parameters()).device)
        self.io.load_optimizer_state(model, optimizer, ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        ranks = ts.get("rankRng")
        set_rng_state(ranks[rank] if ranks is not None and len(ranks) == world else ts["rng"])
        return state

    def recorded_bests(self, step: int) -> dict[str, tuple[int | None, int | None]]:
        """task -> (best step, previous best step) as checkpoint `step` recorded them ({} if it is gone)."""
        try:
            trackers = self.read_state(step).trackers
        except StorageError:
            return {}
        return {t: (d.get("bestStep"), d.get("prevBestStep")) for t, d in trackers.items()}

    def prune(self, keep: set[int]) -> list[int]:
        """Delete every checkpoint whose step is not in `keep`; returns the deleted steps."""
        gone = [s for s in self.steps() if s not in keep]
        for s in gone:
            self.storage.delete_prefix(checkpoint_key(s))
            if self.storage.local_path(checkpoint_key(s)) is None:
                import shutil

                shutil.rmtree(self.scratch / checkpoint_key(s), ignore_errors=True)
        return gone


class AsyncCheckpointer:
    """Checkpoints off the training loop's critical path: `save` snapshots the state (a memory copy)
    and a background thread writes, hashes and uploads it, then applies retention; training goes on
    meanwhile. At most one checkpoint is in flight: the next `save` first waits for the previous one.

    Everything that reads checkpoints (`steps`, `read_state`, `load`, `load_weights`, `prune`,
    `discard_incomplete`) first waits for the checkpoint in flight, so a rewind or
    final evaluation sees every checkpoint saved before it; the format, the state.json-last rule and
    the sha256 checks are `Checkpointer`'s. A failed background write raises its `StorageFault` from
    the next call (at the latest `wait`, which the trainer calls before its final evaluation).

    Attributes:
        stalled_seconds: seconds the training loop spent in `save` and in waits (the checkpoint stall).
        written_seconds: seconds the background thread spent writing.
    """

    def __init__(self, storage: RunStorage, scratch: Path, *, background: bool = True, io: StateIO = StateIO()) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.inner = Checkpointer(storage, scratch, io)
        self.storage = storage
        self.background = background
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint") if background else None
        self._in_flight = None  # (step, Future)
        self.stalled_seconds = 0.0
        self.written_seconds = 0.0

    def save(self, step: int, model: torch.nn.Module, optimizer, scheduler, state: CheckpointState,
             keep: "Callable[[Checkpointer], set[int]] | None" = None,
             rank_rngs: list[dict[str, Any]] | None = None, write: bool = True) -> None:
        """Snapshot now; write checkpoint `step` (then prune to `keep(inner)`) in the background.

        Args:
            keep: computes the steps retention keeps once `step` is complete (it may read checkpoints
                through the `Checkpointer` it is given); None keeps everything.
            write: False on the ranks that only take part in a sharded snapshot's gathering (FSDP ranks > 0).
        Raises:
            StorageFault: the previous checkpoint's write failed.
        """
        import time

        t0 = time.perf_counter()
        self.wait()
        snap = snapshot(model, optimizer, scheduler, rank_rngs, self.inner.io)
        if not write:
            self.stalled_seconds += time.perf_counter() - t0
            return

        def job() -> None:
            t = time.perf_counter()
            self.inner.write(step, snap, state)
            if keep is not None:
                self.inner.prune(keep(self.inner))
            self.written_seconds += time.perf_counter() - t

        if self._pool is None:
            job()
        else:
            self._in_flight = (step, self._pool.submit(job))
        self.stalled_seconds += time.perf_counter() - t0

    def in_flight(self) -> int | None:
        """Step of the checkpoint being written, or None."""
        if self._in_flight is None or self._in_flight[1].done():
            return None
        return self._in_flight[0]

    def wait(self) -> None:
        """Block until the checkpoint in flight (if any) is complete.

        Raises:
            StorageFault: its write failed (the partial checkpoint was removed).
        """
        import time

        if self._in_flight is None:
            return
        t0 = time.perf_counter()
        _, fut = self._in_flight
        self._in_flight = None
        try:
            fut.result()
        finally:
            self.stalled_seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Wait for the checkpoint in flight and stop the writer thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    # ---- reads: after the checkpoint in flight ------------------------------------------------
    def steps(self) -> list[int]:
        self.wait()
        return self.inner.steps()

    def discard_incomplete(self) -> list[int]:
        self.wait()
        return self.inner.discard_incomplete()

    def read_state(self, step: int) -> CheckpointState:
        self.wait()
        return self.inner.read_state(step)

    def load_weights(self, step: int, model: torch.nn.Module) -> CheckpointState:
        self.wait()
        return self.inner.load_weights(step, model)

    def load(self, step: int, model: torch.nn.Module, optimizer, scheduler, rank: int = 0, world: int = 1) -> CheckpointState:
        self.wait()
        return self.inner.load(step, model, optimizer, scheduler, rank, world)

    def prune(self, keep: set[int]) -> list[int]:
        self.wait()
        return self.inner.prune(keep)


def checkpoints_to_keep(latest: int | None, bests: dict[str, tuple[int | None, int | None]], needing: set[str],
                   recorded: "Callable[[int], dict[str, tuple[int | None, int | None]]] | None" = None) -> set[int]:
    """Steps to keep: the latest, the best and previous best of every task in `needing`, and,
    closed under rewinds, the best that every kept checkpoint itself recorded for those tasks
    (a rewind to a kept checkpoint restores its trackers, and their bests must still exist).
    Recorded *previous* bests are not followed: every checkpoint of an improving task records the
    one before it, so following them kept every checkpoint of the run. (The previous best covers a
    best that moves between a decision and the trainer applying it; after a rewind the decision
    core cuts its track at the rewind step and names the restored best.)

    bests: task -> (best step, previous best step) now. recorded(step): the same, as checkpoint
    `step` recorded it (None: no closure).
    """
    keep = {latest} if latest is not None else set()
    for t in needing:
        best, prev = bests.get(t, (None, None))
        keep.update(s for s in (best, prev) if s is not None)
    frontier = set(keep) - {latest} if recorded is not None else set()
    while frontier:
        step = frontier.pop()
        for t, (best, _prev) in recorded(step).items():
            if t in needing and best is not None and best not in keep:
                keep.add(best)
                frontier.add(best)
    return keep


class TrainingCheckpoints:
    """The trainer's checkpoints on every rank: save a validation step's, load one (every rank the same),
    rewind to one, find the one to resume from, and score a past checkpoint's weights.

    Rank 0 writes and prunes (through `AsyncCheckpointer`, off the training loop); under FSDP every rank takes
    part in gathering the sharded state. Rewind follows the paper (Sec. 3): restore θ̂_t with its optimizer,
    scheduler and RNG state, and delete the later checkpoints.

    Args:
        checkpointer: rank 0's writer/reader. ranks: the process group (`asyncmtl_trainer.distributed.Ranks`).
        model, optimizer, scheduler: what a checkpoint restores. weighting: the weighting method (its
            `state_dict`/`load_state_dict` travel in `CheckpointState.weighting`).
        enabled: write checkpoints (False only for the benchmarks' no-checkpoint baseline). log: the run's logger.
    Raises:
        asyncmtl.storage.StorageFault: from a failed write or read (the background write's, at the next call).
    """

    def __init__(self, checkpointer: AsyncCheckpointer, ranks: Ranks, model: torch.nn.Module, optimizer, scheduler,
                 weighting: Any, *, enabled: bool = True, log: logging.Logger | logging.LoggerAdapter = log) -> None:
        self.checkpointer, self.ranks, self.enabled, self.log = checkpointer, ranks, enabled, log
        self.model, self.optimizer, self.scheduler, self.weighting = model, optimizer, scheduler, weighting

    def settled(self) -> None:
        """Every checkpoint saved so far is complete and visible to every rank (rank 0 writes them)."""
        self.checkpointer.wait()
        self.ranks.barrier()

    def load(self, step: int) -> CheckpointState:
        """Restore checkpoint `step` (weights, optimizer, scheduler, this rank's RNG, weighting) on every rank."""
        self.settled()
        state = self.checkpointer.load(step, self.model, self.optimizer, self.scheduler, self.ranks.rank,
                                       self.ranks.world)
        if state.weighting:
            self.weighting.load_state_dict(state.weighting)
        return state

    def rewind(self, step: int) -> CheckpointState:
        """Load checkpoint `step` on every rank, then delete every later one (rank 0). Returns its state."""
        state = self.load(step)
        self.ranks.barrier()  # every rank has read it before rank 0 prunes
        if self.ranks.is_coordinator:
            self.checkpointer.prune({s for s in self.checkpointer.steps() if s <= step})
        return state

    def resume(self) -> CheckpointState | None:
        """Load the latest complete checkpoint on every rank (None: there is none). Checkpoints a failed or
        killed writer left without their state.json are deleted first."""
        if self.ranks.is_coordinator:
            gone = self.checkpointer.discard_incomplete()
            if gone:
                self.log.info("resume: deleted incomplete checkpoints at steps %s", ", ".join(map(str, gone)))
        self.ranks.barrier()
        steps = self.checkpointer.steps()
        return self.load(steps[-1]) if steps else None

    def save(self, state: CheckpointState, keep: Callable[[Checkpointer], set[int]]) -> None:
        """Checkpoint `state.step` (rank 0 writes, in the background), then keep only the steps `keep` names
        (called on the writer thread once this checkpoint is complete). Every rank calls it."""
        rank_rngs = self.ranks.all_gather(rng_state()) if self.ranks.distributed else None
        sharded = self.checkpointer.inner.io.sharded
        if not self.enabled or not (self.ranks.is_coordinator or sharded):
            return  # (a sharded model's state is gathered to rank 0 by every rank)
        self.checkpointer.save(state.step, self.model, self.optimizer, self.scheduler, state, keep=keep,
                               rank_rngs=rank_rngs, write=self.ranks.is_coordinator)

    def scored(self, step: int, score: Callable[[], Any]) -> Any:
        """`score()` computed with the weights of checkpoint `step`; the live weights are put back after."""
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.settled()
        self.checkpointer.load_weights(step, self.model)
        try:
            return score()
        finally:
            self.model.load_state_dict(current)


def retention(step: int, bests: dict[str, tuple[int | None, int | None]], needing: set[str],
              pinned: set[int]) -> Callable[[Checkpointer], set[int]]:
    """The `keep` of the checkpoint at `step`: `checkpoints_to_keep` closed over what its checkpoints
    recorded, plus the `pinned` steps (checkpoints soft labels are being made from)."""
    def keep(written: Checkpointer) -> set[int]:  # on the writer thread, once `step` is complete
        return checkpoints_to_keep(step, bests, needing, recorded=written.recorded_bests) | pinned
    return keep
