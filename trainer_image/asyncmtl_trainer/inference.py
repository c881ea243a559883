"""Soft-label inference (entry point `asyncmtl-infer`): one shard of one task from one checkpoint.

For (checkpoint step, task, shard i of n) it loads the model weights of the task's best
checkpoint, runs the task's head over its slice of the task's training split (no grad, batches
sorted by length so each pads little; bf16 on CUDA; several shards on one machine spread over its GPUs) and writes the shard's outputs (fp16 logits, or values for
regression, with example ids) and sha256 to storage. The manifest is written afterwards by
whoever checks every shard (`asyncmtl.softlabels.write_manifest`), or by `--manifest`.

On a cluster the shard index comes from `$JOB_COMPLETION_INDEX` (Indexed Job).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

from asyncmtl import termination
from asyncmtl.data import load_split
from asyncmtl.logs import configure, run_logger
from asyncmtl.softlabels import shard_range, write_manifest
from asyncmtl.spec import load_spec_file
from asyncmtl.storage_factory import open_run_storage
from asyncmtl_trainer.batching import subset, tokenize_split
from asyncmtl_trainer.checkpoint import Checkpointer
from asyncmtl_trainer.distributed import Ranks
from asyncmtl_trainer.evaluation import Evaluator
from asyncmtl_trainer.model import build_model
from asyncmtl_trainer.softlabels import write_shard


def inference_autocast(device: torch.device, precision: str):
    """The autocast context of soft-label inference: bf16 on CUDA (fp16 when the run trains in fp16), the
    training precision on CPU (`training.precision`; fp32 = no autocast). Outputs are stored as fp16 logits."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def shard_device(index: int, want: str) -> torch.device:
    """The device of shard `index`: on a machine with several GPUs, shards go round-robin over them
    (`cuda:index % GPUs`), so one task's shards spread across the GPUs of the pod or workstation."""
    if want == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index % torch.cuda.device_count())


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the shard (and, with --manifest, the manifest) is written; 3 when a storage write
    failed, 1 on any other error (asyncmtl.termination: the one-line reason goes to --termination-log)."""
    configure()
    p = argparse.ArgumentParser(prog="asyncmtl-infer", description="Soft labels for one shard of one task.")
    p.add_argument("--spec", required=True)
    p.add_argument("--run")
    p.add_argument("--namespace", default="local")
    p.add_argument("--task", required=True)
    p.add_argument("--step", type=int, required=True, help="Checkpoint step (the task's best).")
    p.add_argument("--shard", type=int, default=None, help="Shard index (default: $JOB_COMPLETION_INDEX or 0).")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--workdir", required=True)
    p.add_argument("--base-dir")
    p.add_argument("--tweeteval-dir")
    p.add_argument("--threads", type=int)
    p.add_argument("--parent-pid", type=int, default=None,
                   help="Terminate when this parent process is gone (the local runtime passes its pid).")
    p.add_argument("--manifest", action="store_true", help="Only verify all shards and write the manifest.")
    termination.add_argument(p, "the shard")
    args = p.parse_args(argv)
    term_log = args.termination_log or termination.default_path()
    try:
        return _run(args)
    except Exception as exc:
        return termination.exit_status(exc, term_log, logging.getLogger(__name__), "inference")


def _run(args: argparse.Namespace) -> int:
    if args.parent_pid:
        from asyncmtl_trainer.parent_watch import watch_parent

        watch_parent(args.parent_pid)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec, name = load_spec_file(args.spec)
    run = args.run or name or "run"
    log = run_logger(__name__, run)
    base_dir = Path(args.base_dir) if args.base_dir else Path(args.spec).resolve().parent
    storage = open_run_storage(spec.storage.uri, namespace=args.namespace, run=run, base_dir=os.getcwd(),
                               endpoint_url=spec.storage.endpoint_url)
    task = spec.task(args.task)
    split = load_split(task, "train", base_dir=base_dir, tweeteval_dir=args.tweeteval_dir,
                       endpoint_url=spec.storage.endpoint_url)
    assert split is not None
    if args.manifest:
        uri = write_manifest(storage, task.name, args.step, args.shards, len(split))
        log.info("manifest written: %s", uri)
        return 0
    index = args.shard if args.shard is not None else int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    t0 = time.perf_counter()
    model, tokenizer, _ = build_model(spec, base_dir)
    device = shard_device(index, spec.training.device)
    model.to(device)
    Checkpointer(storage, Path(args.workdir) / "staging").load_weights(args.step, model)
    tok = tokenize_split(task, split, tokenizer, spec.model.max_length, Path(args.workdir) / "cache")
    start, end = shard_range(len(tok), index, args.shards)
    part = subset(tok, start, end)
    evaluator = Evaluator(model, Ranks(device=device), spec.training.eval_batch_size_per_rank,
                          int(tokenizer.pad_token_id or 0), lambda: inference_autocast(device, spec.training.precision))
    outputs = torch.from_numpy(evaluator.predict(task, part))  # (rows, num_labels) float32, in shard order
    ids = torch.arange(start, end, dtype=torch.int64)
    key = write_shard(storage, task.name, args.step, index, args.shards, ids, outputs, total=len(tok))
    log.info("task %s step %d shard %d/%d: %d rows in %.1fs -> %s", task.name, args.step, index, args.shards,
             len(part), time.perf_counter() - t0, storage.uri(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
