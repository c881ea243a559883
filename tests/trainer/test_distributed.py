"""The trainer under torchrun (gloo, CPU): the same decisions and parameters as one process with the same
global batch, identical ranks after a rewind, and a group that survives losing a rank."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from asyncmtl.artifacts import EventRecord, ValidationRecord
from tests.conftest import builtin_task, run_doc

pytestmark = pytest.mark.slow  # processes and training: `make test-fast` skips it

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_nodrop(tmp_path_factory) -> Path:
    """Tiny BERT without dropout: ranks and processes draw no random numbers, so runs can be compared."""
    from asyncmtl_trainer.model import save_tiny_random_encoder

    return save_tiny_random_encoder(tmp_path_factory.mktemp("tiny-nodrop"), dropout=0.0)


def write_spec(path: Path, model: Path, name: str, *, max_steps: int, patience: tuple[int, int] = (3, 2),
               lr: float = 5e-4, store: str = "file://./store", parallelism: str = "ddp",
               eval_examples: int = 40, eval_batch_size_per_rank: int = 128, keep: str = "best") -> Path:
    tasks = []
    for task, p in zip(("sentiment", "sarcasm"), patience):
        t = builtin_task(task, "binary", patience=p)
        t["data"].update({"maxTrainExamples": 200, "maxValidationExamples": eval_examples, "maxTestExamples": eval_examples})
        tasks.append(t)
    doc = run_doc(tasks, model=str(model), name=name,
                  training={"batchSize": 16, "learningRate": lr, "maxSteps": max_steps, "validationInterval": 10,
                            "seed": 3, "maxGradNorm": None, "parallelism": parallelism,
                            "evalBatchSizePerRank": eval_batch_size_per_rank},
                  distillation={"whilePending": "Pause", "shards": 1}, storage={"uri": store, "keepCheckpoints": keep},
                  metrics={"pollIntervalSeconds": 0.2})
    doc["spec"]["model"]["dropout"] = 0.0
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "trainer_image"), str(ROOT / "operator"),
                                                        os.environ.get("PYTHONPATH", "")]))


def asyncmtl_run(cwd: Path, spec: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asyncmtl.cli", "run", str(spec), "--no-live", "--threads", "1", *extra],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env())


def decisions(run_dir: Path) -> list[tuple]:
    """The run's history without times and metric values: every event, and each validation's task, step,
    phase and best step (the convergence rule's inputs but for the values themselves)."""
    out = []
    for line in (run_dir / "reports" / "history.jsonl").read_text().splitlines():
        raw = json.loads(line)
        if "event" in raw:
            r = EventRecord.model_validate(raw)
            out.append((r.event, r.task, r.step, r.rewinds))
        else:
            r = ValidationRecord.model_validate(raw)
            out.append(("validation", r.task, r.step, r.mode, r.best_step, r.rewinds))
    return out


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {**load_file(run_dir / "model" / "encoder" / "model.safetensors"),
            **{f"heads.{k}": v for k, v in load_file(run_dir / "model" / "heads.safetensors").items()}}


def test_each_ranks_rescaled_slice_gradients_average_to_the_whole_batchs_gradient(tmp_path, tiny_nodrop):
    """The loss rule DDP relies on, without processes: rank r's loss on its slice, rescaled by
    world · local rows / global rows, has gradients whose mean over ranks is the one-process gradient."""
    from asyncmtl_trainer.distributed import Ranks
    from tests.trainer.test_trainer import make_trainer

    tr = make_trainer(tmp_path, tiny_nodrop)

    def grads(batch) -> dict[str, torch.Tensor]:
        tr.model.zero_grad(set_to_none=True)
        pooled = tr.model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        sum(tr.task_losses(batch, pooled).values()).backward()
        return {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}

    whole = grads(tr.next_batch())
    assert len({t for t in tr.next_batch().rows}) == 3  # every task is in the batch
    shares = []
    for rank in (0, 1, 2):
        tr.ranks = Ranks(rank=rank, world=3)
        b = tr.next_batch()
        assert b.global_rows is not None and sum(b.global_rows.values()) == 8 and b.size in (2, 3)
        shares.append(grads(b))
    tr.ranks = Ranks()
    for name, g in whole.items():
        mean = sum(s[name] if name in s else torch.zeros_like(g) for s in shares) / 3
        assert torch.allclose(mean, g, atol=1e-6, rtol=1e-4), name
    assert any(name not in s for s in shares for name in whole)  # some rank's slice lacks some task's head


def test_a_rewind_on_two_ranks_leaves_bit_identical_parameters_and_optimizer_state(tmp_path, tiny_nodrop):
    spec = write_spec(tmp_path / "run.yaml", tiny_nodrop, "t", max_steps=100, store=f"file://{tmp_path}/store")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(ROOT / "tests" / "trainer" / "rank_worker.py"), str(spec), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=dict(env(), OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    a, b = (torch.load(tmp_path / f"rank-{i}.pt", weights_only=False) for i in (0, 1))
    assert a["step"] == b["step"] == 13 and a["rewinds"] == b["rewinds"] == 1
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 10
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert a["scheduler"] == b["scheduler"]
    # and the rewind went back: the history holds the rewind once, written by rank 0 alone
    history = (tmp_path / "store" / "local" / "t" / "reports" / "history.jsonl").read_text().splitlines()
    assert sum('"event": "rewind"' in line for line in history) == 1


def test_a_rewind_on_two_fsdp_ranks_restores_the_checkpoints_full_state_bit_for_bit(tmp_path, tiny_nodrop):
    """FSDP2: each rank holds its shards; the rewind's checkpoint, restored on both ranks and gathered again,
    is the checkpoint's weights and optimizer state exactly (and the group trains on after it)."""
    spec = write_spec(tmp_path / "run.yaml", tiny_nodrop, "t", max_steps=100, store=f"file://{tmp_path}/store",
                      parallelism="fsdp")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(ROOT / "tests" / "trainer" / "rank_worker.py"), str(spec), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=dict(env(), OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    restored = torch.load(tmp_path / "restored.pt", weights_only=False)
    weights, training = _checkpoint(tmp_path / "store" / "local" / "t" / "checkpoints" / "step-00000010")
    assert restored["params"].keys() == weights.keys()
    for k, v in weights.items():
        assert torch.equal(restored["params"][k], v), k
    saved, got = training["optimizer"], restored["optimizer"]
    assert got["param_groups"] == saved["param_groups"] and got["state"].keys() == saved["state"].keys()
    assert len(saved["state"]) > 10
    for i, st in saved["state"].items():
        for k, v in st.items():
            assert torch.equal(got["state"][i][k], v), (i, k)
    assert all(torch.load(tmp_path / f"rank-{i}.pt", weights_only=False)["step"] == 13 for i in (0, 1))


@pytest.mark.parametrize("parallelism, eval_examples, eval_batch_size_per_rank", [
    ("ddp", 40, 128),
    # FSDP: 41 examples over 2 ranks are shares of 21 and 20, 3 and 2 batches of 10: the ranks' forward
    # passes (collectives under FSDP) must still line up
    ("fsdp", 41, 10),
])
def test_two_processes_make_the_decisions_of_one_with_final_parameters_within_1e_5(
        tmp_path, tiny_nodrop, parallelism, eval_examples, eval_batch_size_per_rank):
    """The same spec and global batch (16) as one process and as two torchrun ranks of 8 each (DDP replicas,
    or FSDP2 shards): the same convergence, rewind and KD decisions at the same steps, the final parameters
    within 1e-5, and checkpoints of one format (full weights, `Optimizer.state_dict()` numbering) whose
    contents agree within the same tolerance."""
    runs = {}
    for name, extra in (("one", ()), ("two", ("--nproc-per-node", "2"))):
        spec = write_spec(tmp_path / f"{name}.yaml", tiny_nodrop, name, max_steps=60, parallelism=parallelism,
                          eval_examples=eval_examples, eval_batch_size_per_rank=eval_batch_size_per_rank, keep="all")
        r = asyncmtl_run(tmp_path, spec, *extra)
        run_dir = tmp_path / "store" / "local" / name
        assert r.returncode == 0, r.stdout[-2000:] + (run_dir / "logs" / "trainer.log").read_text()[-4000:]
        runs[name] = run_dir
    log = (runs["two"] / "logs" / "trainer.log").read_text()
    assert f"rank 1 of 2 ({parallelism})" in log  # it did run as two ranks, with that parallelism
    one, two = decisions(runs["one"]), decisions(runs["two"])
    assert [d for d in one if d[0] == "rewind"], "the run must include a convergence decision and its rewind"
    assert ("kd", "sarcasm") in {d[:2] for d in one}
    assert one == two
    p1, p2 = final_parameters(runs["one"]), final_parameters(runs["two"])
    assert p1.keys() == p2.keys()
    worst = max(float((p1[k].float() - p2[k].float()).abs().max()) for k in p1)
    assert worst <= 1e-5, worst
    moved = max(float((p1[k].float() - v.float()).abs().max()) for k, v in final_parameters_of_initial(tiny_nodrop).items()
                if k in p1)
    assert moved > 1e-3  # training moved the parameters far more than the tolerance
    steps = sorted(p.name for p in (runs["one"] / "checkpoints").iterdir())
    assert steps == sorted(p.name for p in (runs["two"] / "checkpoints").iterdir()) and len(steps) >= 3
    for step in steps:
        c1, c2 = (_checkpoint(runs[n] / "checkpoints" / step) for n in ("one", "two"))
        assert c1[0].keys() == c2[0].keys()
        assert max(float((c1[0][k] - c2[0][k]).abs().max()) for k in c1[0]) <= 1e-5, step
        o1, o2 = c1[1]["optimizer"], c2[1]["optimizer"]
        assert o1["param_groups"] == o2["param_groups"] and o1["state"].keys() == o2["state"].keys(), step
        for i, st in o1["state"].items():
            assert st.keys() == o2["state"][i].keys()
            for k, v in st.items():
                assert torch.allclose(v.float(), o2["state"][i][k].float(), atol=1e-6, rtol=1e-3), (step, i, k)


def _checkpoint(d: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    return load_file(d / "model.safetensors"), torch.load(d / "training_state.pt", weights_only=False)


def final_parameters_of_initial(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def _rank_pid(workdir: Path, rank: int) -> int | None:
    """The pid of the trainer rank `rank` of the run in `workdir` (Linux /proc)."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
            environ = (p / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"asyncmtl_trainer.train" in cmd and str(workdir).encode() in cmd and f"RANK={rank}".encode() in environ:
            return int(p.name)
    return None


def test_killing_one_rank_restarts_the_group_from_the_latest_checkpoint_and_the_run_succeeds(tmp_path, tiny_nodrop):
    spec = write_spec(tmp_path / "k.yaml", tiny_nodrop, "k", max_steps=200, patience=(40, 40))
    run_dir = tmp_path / "store" / "local" / "k"
    proc = subprocess.Popen([sys.executable, "-m", "asyncmtl.cli", "run", str(spec), "--no-live", "--threads", "1",
                             "--nproc-per-node", "2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env())
    try:
        deadline = time.monotonic() + 180
        while not list((run_dir / "checkpoints").glob("step-*/state.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.2)
        pid = _rank_pid(run_dir, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (run_dir / "logs" / "trainer.log").read_text()
    assert proc.returncode == 0, out[-2000:] + log[-4000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    assert "TrainerRestarted: trainer exited with code 1" in out and "retry 1 of 3" in out
    assert "resumed at step" in log  # from the latest checkpoint, not from step 0
    final = json.loads((run_dir / "reports" / "final.json").read_text())
    assert final["step"] == 200


def test_a_method_that_is_not_data_parallel_fails_the_ranks_as_bad_input_without_a_retry(tmp_path, tiny_nodrop):
    """GradNorm needs each task's gradient of the whole batch: refused under torchrun with the field named, and
    the launcher keeps the rank's exit status 2, so the runtime reports it instead of restarting it."""
    spec = write_spec(tmp_path / "g.yaml", tiny_nodrop, "g", max_steps=20)
    doc = yaml.safe_load(spec.read_text())
    doc["spec"]["weighting"] = {"method": "gradnorm"}
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = asyncmtl_run(tmp_path, spec, "--nproc-per-node", "2")
    run_dir = tmp_path / "store" / "local" / "g"
    assert r.returncode != 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["phase"] == "Failed"
    assert "spec.weighting.method: gradnorm" in json.dumps(status)
    assert "TrainerRestarted" not in r.stdout


def test_ranks_sharing_a_workdir_tokenize_into_one_cache_without_tripping_over_each_other(tmp_path):
    """Every rank of a local torchrun writes the same token-cache file: each through its own temporary name
    (a shared one made a rank's rename fail with FileNotFoundError when the other had renamed it first)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_tokenize_into, [str(tmp_path / "cache")] * 16)
    assert all(r == results[0] for r in results)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"] == []


def _tokenize_into(cache: str) -> int:
    from asyncmtl.data import Example, Split
    from asyncmtl.pretrained import resolve_pretrained
    from asyncmtl.spec import MINILM_PACKAGE, TaskSpec
    from asyncmtl_trainer.batching import tokenize_split
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_pretrained(MINILM_PACKAGE)), local_files_only=True)
    task = TaskSpec.model_validate({"name": "t", "type": "binary", "data": {"train": "x", "validation": "y"}})
    split = Split("t", "train", "test", [Example(id=i, text=f"tweet number {i} " * (i % 7 + 1), text_pair=None, label=i % 2)
                                         for i in range(3000)])
    return len(tokenize_split(task, split, tok, 64, Path(cache)).input_ids)
