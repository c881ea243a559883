"""asyncmtl_trainer.inference (`asyncmtl-infer`): its autocast (bf16 on CUDA, fp16 when training in fp16; the
training precision on CPU), the round-robin device of a shard, and one run of the entry point: each shard
writes the outputs of the task head of a checkpoint's weights for its slice of the training split, the
`--manifest` call verifies them, and a failure is exit status 1 with a one-line termination message."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from asyncmtl import termination
from asyncmtl.softlabels import manifest_key, shard_key
from asyncmtl.spec import parse_run
from asyncmtl.storage_factory import open_run_storage
from asyncmtl_trainer.checkpoint import Checkpointer, CheckpointSnapshot, CheckpointState
from asyncmtl_trainer.inference import inference_autocast, main, shard_device
from asyncmtl_trainer.model import build_model
from asyncmtl_trainer.softlabels import read_soft_labels
from tests.conftest import run_doc


# ---- inference_autocast -------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision, enabled, dtype", [("fp32", False, None), ("fp16", False, None),
                                                       ("bf16", True, torch.bfloat16)])
def test_on_cpu_inference_autocasts_as_training_does_except_fp16(precision, enabled, dtype):
    with inference_autocast(torch.device("cpu"), precision):
        assert torch.is_autocast_enabled("cpu") is enabled
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == (dtype or torch.float32)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.bfloat16), ("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_on_cuda_inference_autocasts_to_bf16_or_to_fp16_for_an_fp16_run(precision, dtype):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without CUDA torch warns that it disables the context
        ctx = inference_autocast(torch.device("cuda", 0), precision)
    assert ctx.device == "cuda" and ctx.fast_dtype == dtype


# ---- shard_device -------------------------------------------------------------------------------------------

def test_a_shard_runs_on_the_cpu_when_asked_or_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert shard_device(3, "auto") == torch.device("cpu")
    assert shard_device(0, "cuda") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert shard_device(3, "cpu") == torch.device("cpu")


def test_shards_go_round_robin_over_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [shard_device(i, "auto") for i in range(7)] == [torch.device("cuda", i % 3) for i in range(7)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert {shard_device(i, "cuda") for i in range(4)} == {torch.device("cuda", 0)}


# ---- the entry point ----------------------------------------------------------------------------------------

TEXTS = ["good", "a much longer piece of text than the rest", "bad", "so so", "fine then", "ok", "no"]
STEP = 40


@pytest.fixture()
def run(tmp_path, tiny_model):
    """A spec file (a three-class task over TEXTS, CPU, file storage) and a checkpoint at STEP whose heads
    differ from any fresh model's; yields (spec path, storage, the checkpoint's model, tokenizer)."""
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t, "label": i % 3}) + "\n"
                                                  for i, t in enumerate(TEXTS)))
    doc = run_doc([{"name": "topic", "type": "multiclass", "numLabels": 3,
                    "data": {"train": "train.jsonl", "validation": "train.jsonl"}}],
                  model=str(tiny_model), name="inf", training={"device": "cpu"},
                  storage={"uri": f"file://{tmp_path / 'store'}"})
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    spec = parse_run(doc).spec
    model, tokenizer, _ = build_model(spec)
    with torch.no_grad():
        g = torch.Generator().manual_seed(11)
        model.heads["topic"].weight.copy_(torch.randn(model.heads["topic"].weight.shape, generator=g))
        model.heads["topic"].bias.copy_(torch.tensor([0.5, -0.25, 1.0]))
    storage = open_run_storage(spec.storage.uri, namespace="local", run="inf")
    weights = {n: p.detach().clone() for n, p in model.state_dict().items()}
    Checkpointer(storage, tmp_path / "scratch").write(STEP, CheckpointSnapshot(weights, None, {}, 0),
                                                      CheckpointState(step=STEP, applied_generation=0))
    return spec_path, storage, model.eval(), tokenizer


def _infer(spec_path: Path, tmp_path: Path, *extra: str) -> int:
    return main(["--spec", str(spec_path), "--task", "topic", "--step", str(STEP), "--workdir", str(tmp_path / "wd"),
                 "--termination-log", str(tmp_path / "termination-log"), *extra])


def test_the_shards_and_manifest_hold_the_checkpoint_s_outputs_for_every_training_example(run, tmp_path):
    spec_path, storage, model, tokenizer = run
    assert _infer(spec_path, tmp_path, "--shard", "1", "--shards", "2") == 0
    assert not storage.exists(manifest_key("topic", STEP))  # a shard alone writes no manifest
    assert _infer(spec_path, tmp_path, "--shard", "0", "--shards", "2") == 0
    assert _infer(spec_path, tmp_path, "--shards", "2", "--manifest") == 0

    soft = read_soft_labels(storage.uri(manifest_key("topic", STEP)), expected_examples=len(TEXTS))
    assert soft.shape == (len(TEXTS), 3)
    with torch.no_grad():  # each example alone through the checkpoint's weights
        want = torch.stack([model.head("topic", model(ids, torch.ones_like(ids)))[0]
                            for ids in (torch.tensor([tokenizer(t)["input_ids"]]) for t in TEXTS)])
    assert torch.allclose(soft, want, atol=5e-3)  # stored as fp16
    assert not (tmp_path / "termination-log").exists() or termination.read_message(tmp_path / "termination-log") is None


def test_the_shard_index_defaults_to_the_indexed_job_s_completion_index(run, tmp_path, monkeypatch):
    from safetensors.torch import load

    spec_path, storage, _, _ = run
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert _infer(spec_path, tmp_path, "--shards", "3") == 0
    assert [storage.exists(shard_key("topic", STEP, i, 3)) for i in range(3)] == [False, True, False]
    ids = load(storage.get_bytes(shard_key("topic", STEP, 1, 3)))["ids"].tolist()
    assert ids == list(range(len(TEXTS)))[3:5]  # the middle third of 7 examples (shards differ by at most one)


def test_a_checkpoint_that_is_not_there_fails_with_status_1_and_says_why(run, tmp_path):
    spec_path, _, _, _ = run
    status = main(["--spec", str(spec_path), "--task", "topic", "--step", "999", "--workdir", str(tmp_path / "wd"),
                   "--termination-log", str(tmp_path / "termination-log")])
    assert status == 1
    message = termination.read_message(tmp_path / "termination-log")
    assert message.startswith("inference failed: ") and "999" in message and "\n" not in message


def test_a_missing_spec_fails_with_status_1_and_says_why(tmp_path):
    status = main(["--spec", str(tmp_path / "nope.yaml"), "--task", "t", "--step", "1", "--workdir", str(tmp_path),
                   "--termination-log", str(tmp_path / "termination-log")])
    assert status == 1
    assert "nope.yaml" in termination.read_message(tmp_path / "termination-log")
