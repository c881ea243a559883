"""Trainer behaviour on a tiny random BERT: rewind, KD switch, no supervised gradient after convergence."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asyncmtl.control import ConvergedSignal, SoftLabelsReadySignal
from asyncmtl.softlabels import write_manifest
from asyncmtl.spec import parse_run
from asyncmtl.storage_factory import open_run_storage
from asyncmtl_trainer.exporter import TrainerExporter
from asyncmtl_trainer.losses import kd_loss, supervised_loss
from asyncmtl_trainer.softlabels import write_shard
from asyncmtl.lifecycle import TaskPhase
from asyncmtl_trainer.train import Trainer, TrainerOptions
from tests.conftest import builtin_task, run_doc

pytestmark = pytest.mark.slow  # processes, servers or training: `make test-fast` skips it


@pytest.fixture(scope="module")
def tiny_nodrop(tmp_path_factory) -> Path:
    """Tiny BERT without dropout, so a forward pass in train mode is deterministic."""
    from asyncmtl_trainer.model import save_tiny_random_encoder

    return save_tiny_random_encoder(tmp_path_factory.mktemp("tiny-nodrop"), dropout=0.0)


def make_trainer(tmp_path: Path, model_dir: Path, *, while_pending: str = "Continue", **training) -> Trainer:
    caps = {"maxTrainExamples": 64, "maxValidationExamples": 32, "maxTestExamples": 32}
    tasks = []
    for name, typ in (("sentiment", "binary"), ("sarcasm", "binary"), ("rating", "regression")):
        t = builtin_task(name, typ)
        t["data"].update(caps)
        if typ == "regression":
            t["labelRange"] = [1, 5]
        tasks.append(t)
    doc = run_doc(tasks, model=str(model_dir), training={"batchSize": 8, "learningRate": 1e-3, "maxSteps": 1000,
                                                         "validationInterval": 5, "maxGradNorm": None, **training},
                  distillation={"whilePending": while_pending}, storage={"uri": f"file://{tmp_path}/store"})
    doc["spec"]["model"]["dropout"] = 0.0
    spec = parse_run(doc).spec
    storage = open_run_storage(spec.storage.uri, namespace="local", run="t")
    opts = TrainerOptions(run="t", namespace="local", control_path=tmp_path / "control.json", workdir=tmp_path / "wd")
    tr = Trainer(spec, opts, storage)
    tr.setup()
    return tr


def snapshot(tr: Trainer) -> dict:
    return {
        "params": {k: v.detach().clone() for k, v in tr.model.state_dict().items()},
        "opt": copy.deepcopy(tr.optimizer.state_dict()),
        "sched": copy.deepcopy(tr.scheduler.state_dict()),
        "rng": torch.get_rng_state().clone(),
        "step": tr.step,
    }


def assert_state_equal(a, b) -> None:
    assert a.keys() == b.keys()
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, dict):
            assert_state_equal(va, vb)
        elif isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), k
        elif isinstance(va, list):
            assert len(va) == len(vb)
            for x, y in zip(va, vb):
                if isinstance(x, dict):
                    assert_state_equal(x, y)
                else:
                    assert x == y
        else:
            assert va == vb, k


def _next_batch_outputs(tr: Trainer, task: str):
    """The next batch (which must hold `task`), its pooled features and `task`'s outputs, in train mode
    without gradients: (batch, pooled: (batch, hidden), outputs: (rows, num_labels))."""
    batch = tr.next_batch()
    assert task in batch.rows
    with torch.no_grad():
        tr.model.train()
        pooled = tr.model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        return batch, pooled, tr.model.head(task, pooled[batch.rows[task]])


def test_rewind_restores_parameters_optimizer_scheduler_and_rng_exactly(tmp_path, tiny_model):
    tr = make_trainer(tmp_path, tiny_model)
    for _ in range(5):
        tr.step_once()  # step 5: validation + checkpoint
    at5 = snapshot(tr)
    for _ in range(5):
        tr.step_once()  # step 10: parameters and optimizer moved on
    moved = snapshot(tr)
    assert not all(torch.equal(at5["params"][k], moved["params"][k]) for k in at5["params"])
    assert tr.checkpointer.steps() == [5, 10]

    tr.rewind(5)
    after = snapshot(tr)
    assert after["step"] == 5
    assert_state_equal(at5["params"], after["params"])
    assert_state_equal(at5["opt"], after["opt"])
    assert_state_equal(at5["sched"], after["sched"])
    assert torch.equal(at5["rng"], after["rng"])
    assert tr.checkpointer.steps() == [5]  # the discarded checkpoint is gone
    # trackers are cut back too: no task remembers a validation after step 5
    assert all(st.last_step == 5 and all(p[0] <= 5 for p in st.history) for st in tr.states.values())
    # the history says how far training had gone: the 5 steps the rewind discarded count as steps made
    from asyncmtl.artifacts import EventRecord, read_history

    rewinds = [r for r in read_history(tr.storage) if isinstance(r, EventRecord) and r.event == "rewind"]
    assert [(r.step, r.from_step) for r in rewinds] == [(5, 10)]


def _make_soft_labels(tr: Trainer, task: str, step: int, logits: torch.Tensor) -> str:
    n = len(tr.train[task])
    write_shard(tr.storage, task, step, 0, 2, torch.arange(0, n // 2), logits[: n // 2])
    write_shard(tr.storage, task, step, 1, 2, torch.arange(n // 2, n), logits[n // 2:])
    return write_manifest(tr.storage, task, step, 2, n)


def _mean_kl(tr: Trainer, task: str, teacher: torch.Tensor) -> float:
    out = torch.from_numpy(tr.predict(task, tr.train[task]))
    return float(F.kl_div(F.log_softmax(out, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean"))


def test_after_soft_labels_ready_the_loss_is_kd_and_moves_outputs_toward_the_soft_labels(tmp_path, tiny_nodrop):
    tr = make_trainer(tmp_path, tiny_nodrop)
    for _ in range(5):
        tr.step_once()
    n = len(tr.train["sentiment"])
    teacher = torch.tensor([[-3.0, 3.0]]).repeat(n, 1)  # confident "positive" for every example
    uri = _make_soft_labels(tr, "sentiment", 5, teacher)
    tr.apply_generation([ConvergedSignal(generation=1, task="sentiment", best_step=5, rewind_to=5)], 1)
    assert tr.states["sentiment"].mode == TaskPhase.AWAITING_SOFT_LABELS and "sentiment" not in tr.active_tasks()
    tr.apply_generation([SoftLabelsReadySignal(generation=2, task="sentiment", uri=uri)], 2)
    assert tr.states["sentiment"].mode == TaskPhase.KD

    # the task's loss is the KD loss against its soft labels (not the supervised loss)
    batch, pooled, logits = _next_batch_outputs(tr, "sentiment")
    with torch.no_grad():
        expected = kd_loss(tr.task_specs["sentiment"].type, logits, teacher[batch.example_ids["sentiment"]], 1.0)
        supervised = F.cross_entropy(logits, batch.labels["sentiment"])
    losses = tr.train_step(batch)
    tr.step += 1
    assert torch.allclose(losses["sentiment"], expected, atol=1e-6)
    assert not torch.allclose(losses["sentiment"], supervised, atol=1e-3)

    # and its gradient moves the task's outputs toward the soft labels
    before = _mean_kl(tr, "sentiment", teacher)
    for _ in range(30):
        tr.step_once()
    after = _mean_kl(tr, "sentiment", teacher)
    assert after < before * 0.7, (before, after)
    pos = torch.softmax(torch.from_numpy(tr.predict("sentiment", tr.train["sentiment"])), -1)[:, 1].mean()
    assert pos > 0.8  # true labels are about half negative: only the soft labels push this way


def test_a_converged_task_receives_no_supervised_gradient(tmp_path, tiny_model):
    tr = make_trainer(tmp_path, tiny_model, while_pending="Continue")
    for _ in range(5):
        tr.step_once()
    tr.apply_generation([ConvergedSignal(generation=1, task="sarcasm", best_step=5, rewind_to=5)], 1)
    head_before = {k: v.clone() for k, v in tr.model.heads["sarcasm"].state_dict().items()}
    seen = []
    for _ in range(12):
        batch = tr.next_batch()
        seen.extend(batch.rows)
        losses = tr.train_step(batch)
        tr.step += 1
        assert "sarcasm" not in losses
        assert all(p.grad is None for p in tr.model.heads["sarcasm"].parameters())
    assert "sarcasm" not in seen and {"sentiment", "rating"} <= set(seen)
    for k, v in tr.model.heads["sarcasm"].state_dict().items():
        assert torch.equal(v, head_before[k])  # AdamW skips parameters without gradients


def test_pause_while_soft_labels_are_pending(tmp_path, tiny_model):
    tr = make_trainer(tmp_path, tiny_model, while_pending="Pause")
    for _ in range(5):
        tr.step_once()
    assert not tr.paused()
    tr.apply_generation([ConvergedSignal(generation=1, task="sarcasm", best_step=5, rewind_to=5)], 1)
    assert tr.paused()


def test_exported_metrics_parse_into_observations():
    from prometheus_client import generate_latest

    from asyncmtl.local.scrape import parse_trainer_metrics

    ex = TrainerExporter("r", ["a", "b"])
    for step, v in [(100, 50.0), (200, 60.0), (300, 55.0)]:
        ex.record_validation("a", step, v, 200 if step >= 200 else 100, 60.0 if step >= 200 else 50.0)
    ex.control_generation.labels("r").set(3)
    ex.global_step.labels("r").set(310)
    obs = parse_trainer_metrics(generate_latest(ex.registry).decode(), "r")
    a = obs.tasks["a"]
    assert (a.validations, a.last_step, a.last_value, a.best_step, a.best_value) == (3, 300, 55.0, 200, 60.0)
    assert obs.tasks["b"].validations == 0 and obs.tasks["b"].last_step is None
    assert obs.applied_generation == 3 and obs.global_step == 310
    assert parse_trainer_metrics(generate_latest(ex.registry).decode(), "other").tasks == {}


def _trainer_with(tmp_path, model_dir, **spec_over):
    caps = {"maxTrainExamples": 64, "maxValidationExamples": 32, "maxTestExamples": 32}
    tasks = []
    for name in ("sentiment", "sarcasm"):
        t = builtin_task(name)
        t["data"].update(caps)
        tasks.append(t)
    fields = {"training": {"batchSize": 8, "learningRate": 1e-3, "maxSteps": 1000, "validationInterval": 5}}
    fields.update(spec_over)
    doc = run_doc(tasks, model=str(model_dir), storage={"uri": f"file://{tmp_path}/store"}, **fields)
    spec = parse_run(doc).spec
    storage = open_run_storage(spec.storage.uri, namespace="local", run="t")
    tr = Trainer(spec, TrainerOptions(run="t", namespace="local", control_path=tmp_path / "c.json", workdir=tmp_path / "wd"),
                 storage)
    tr.setup()
    return tr


def test_sequential_tasks_wait_for_start_task(tmp_path, tiny_model):
    from asyncmtl.control import StartTaskSignal

    tr = _trainer_with(tmp_path, tiny_model, setting="sequential", order="explicit", taskOrder=["sarcasm", "sentiment"])
    assert {n: s.mode for n, s in tr.states.items()} == {"sentiment": TaskPhase.PENDING, "sarcasm": TaskPhase.PENDING}
    assert tr.paused()
    tr.apply_generation([StartTaskSignal(generation=1, task="sarcasm")], 1)
    for _ in range(5):
        assert set(tr.step_once()) == {"sarcasm"}
    assert tr.states["sentiment"].last_step is None  # an inactive task is not validated


def test_rewind_none_keeps_training_from_where_it_is(tmp_path, tiny_model):
    tr = _trainer_with(tmp_path, tiny_model, rewind="none")
    for _ in range(10):
        tr.step_once()
    tr.apply_generation([ConvergedSignal(generation=1, task="sarcasm", best_step=5, rewind_to=None)], 1)
    assert tr.step == 10 and tr.states["sarcasm"].mode == TaskPhase.AWAITING_SOFT_LABELS and tr.checkpointer.steps() == [5, 10]


def test_gradnorm_weights_move_and_keep_their_sum(tmp_path, tiny_model):
    tr = _trainer_with(tmp_path, tiny_model, weighting={"method": "gradnorm", "alpha": 1.5, "learningRate": 0.05})
    assert tr.last_shared is not None
    for _ in range(10):
        tr.step_once()
    w = tr.weighting.weights()
    assert sum(w.values()) == pytest.approx(2.0) and w != {"sentiment": 1.0, "sarcasm": 1.0}


@pytest.mark.parametrize("method", ["famo", "uw", "upgrad"])
def test_torchjd_methods_train_checkpoint_and_rewind_in_the_trainer(tmp_path, tiny_model, method):
    tr = _trainer_with(tmp_path, tiny_model, weighting={"method": method, "learningRate": 0.05})
    assert tr.weighting.method == method
    first = tr.weighting.weights()
    for _ in range(10):  # validation steps (and checkpoints with the method's state) at 5 and 10
        tr.step_once()
    moved = tr.weighting.weights()
    assert moved != first and all(v > 0 for v in moved.values())
    at5 = tr.checkpointer.read_state(5).weighting
    tr.apply_generation([ConvergedSignal(generation=1, task="sarcasm", best_step=5, rewind_to=5)], 1)
    assert tr.step == 5 and tr.weighting.state_dict() == at5
    tr.apply_generation([SoftLabelsReadySignal(generation=2, task="sarcasm", uri=_make_soft_labels(
        tr, "sarcasm", 5, torch.zeros(64, 2)))], 2)
    for _ in range(3):  # mixed batches with a KD task
        losses = tr.step_once()
        assert all(torch.isfinite(l) for l in losses.values())


def test_kd_sampling_weight_shrinks_a_converged_tasks_share(tmp_path, tiny_model):
    tr = _trainer_with(tmp_path, tiny_model, distillation={"kdSamplingWeight": 0.25})
    tr.states["sarcasm"].mode = TaskPhase.KD
    p = tr.sampler.probabilities(tr.active_tasks(), tr._sampling_scale())
    # both splits hold 64 examples: shares 1 : 0.25
    assert p["sarcasm"] == pytest.approx(0.2) and p["sentiment"] == pytest.approx(0.8)


def test_under_bam_every_tasks_best_checkpoint_is_kept_for_the_report(tmp_path, tiny_model):
    """BAM distils every task from the start (mode kd) and never converges one; the final report scores
    each task's best checkpoint (the Best row), so retention must keep them."""
    tr = make_trainer(tmp_path, tiny_model)
    tr.spec.method = "bam"
    for st in tr.states.values():
        st.mode = TaskPhase.KD
    for step, best in [(5, {}), (10, {"sarcasm": 5}), (15, {"sarcasm": 5, "sentiment": 10})]:
        tr.step = step
        for name, st in tr.states.items():
            st.best.best_step = best.get(name, step)
        tr.save_checkpoint()
    assert tr.checkpointer.steps() == [5, 10, 15]
    tr.step = 20
    for st in tr.states.values():
        st.best.best_step = 20
    tr.save_checkpoint()
    assert tr.checkpointer.steps() == [20]  # no best refers to the others any more


def test_retention_keeps_the_bests_a_rewind_target_refers_to(tmp_path, tiny_model):
    """A task's best checkpoint recorded in an earlier checkpoint survives a trajectory in which the
    task's best moved on: rewinding to that earlier checkpoint brings the old best back into use."""
    tr = make_trainer(tmp_path, tiny_model)

    def bests(**steps):
        for name, st in tr.states.items():
            st.best.best_step, st.prev_best_step = steps.get(name, tr.step), None

    for _ in range(10):
        tr.step_once()  # checkpoints 5, 10
    bests(sarcasm=5)
    tr.save_checkpoint()  # step 10 records sarcasm's best at 5; every other task's at 10
    for _ in range(5):
        tr.step_once()
    bests(sentiment=10)
    tr.save_checkpoint()  # at 15: sentiment's best is still 10 (a possible rewind target), the others' 15
    assert tr.checkpointer.steps() == [5, 10, 15]  # 10 refers to sarcasm's best at 5
    tr.rewind(10)
    assert tr.states["sarcasm"].best.best_step == 5
    tr.checkpointer.load_weights(5, tr.model)  # what scoring a converged sarcasm would do


def test_chance_scores_are_a_constant_predictors_metrics():
    """The class prior / training mean scored on validation: accuracy is the majority class's share
    of the validation labels, prAuc the positive rate, rmseScore that of predicting the training mean."""
    import numpy as np

    from asyncmtl.spec import TaskType
    from asyncmtl_trainer.metrics import chance_scores

    b = chance_scores(TaskType.binary, 2, np.array([0, 1, 1, 1]), np.array([1, 0, 1, 1, 0]))
    assert b["accuracy"] == pytest.approx(60.0) and b["prAuc"] == pytest.approx(60.0)
    m = chance_scores(TaskType.multiclass, 4, np.array([0, 2, 2, 3]), np.array([2, 0, 3, 2, 1, 2]))
    assert m["accuracy"] == pytest.approx(50.0)
    r = chance_scores(TaskType.regression, 1, np.array([0.2, 0.4, 0.6]), np.array([0.4, 0.6, 0.2]))
    assert r["rmseScore"] == pytest.approx((1 - np.sqrt((0.04 + 0.04) / 3)) * 100) and r["pearson"] == 0.0
    ml = chance_scores(TaskType.multilabel, 2, np.array([[1, 0], [1, 0], [0, 1]]), np.array([[1, 0], [0, 1]]))
    assert ml["accuracy"] == pytest.approx(50.0)  # priors 2/3 and 1/3: predicts label 0 alone


def test_the_trainer_exports_each_tasks_chance_score_and_decides_with_it(tmp_path, tiny_model):
    import numpy as np
    from prometheus_client import generate_latest

    from asyncmtl.local.scrape import parse_trainer_metrics

    tr = _trainer_with(tmp_path, tiny_model, training={"batchSize": 8, "learningRate": 1e-3, "maxSteps": 1000,
                                                       "validationInterval": 5})
    obs = parse_trainer_metrics(generate_latest(tr.exporter.registry).decode(), "t")
    for name, split in tr.val.items():
        assert tr.task_specs[name].metric.value == "prAuc"  # binary default: a constant score's AP is the positive rate
        share = float(split.labels.numpy().mean()) * 100
        assert tr.chance[name] == pytest.approx(share)
        assert obs.tasks[name].chance == pytest.approx(share)
    # the trainer's own decision (the Pause barrier) reads the floor too: a best below chance + gain is not due
    tr.spec.tasks[0].min_gain_over_chance = 100.0
    st = tr.states["sentiment"]
    st.best.best_step, st.best.best_value, st.last_step, st.last_value = 5, 99.0, 100, 10.0
    tr.spec.distillation.while_pending = "Pause"
    assert "sentiment" not in tr.decision_due()
    tr.spec.tasks[0].min_gain_over_chance = None
    assert "sentiment" in tr.decision_due()


@pytest.mark.parametrize("regression_loss", ["mse", "normalizedMse"])
def test_regression_loss_is_mse_or_mse_over_the_training_targets_variance(tmp_path, tiny_nodrop, regression_loss):
    """normalizedMse: the rating task's loss (supervised, and KD) is MSE / Var(training targets), so the
    training mean costs exactly 1; classification losses are unchanged."""
    tr = make_trainer(tmp_path, tiny_nodrop, regressionLoss=regression_loss)
    y = tr.train["rating"].labels.float()
    var = float(y.var(unbiased=False))
    assert 0.01 < var < 0.5
    expected_scale = var if regression_loss == "normalizedMse" else 1.0
    assert tr.loss_scale.get("rating", 1.0) == pytest.approx(expected_scale)
    assert "sentiment" not in tr.loss_scale
    mean = torch.full((len(y), 1), float(y.mean()))
    assert float(supervised_loss(tr.task_specs["rating"].type, mean, y, tr.loss_scale.get("rating", 1.0))) == \
        pytest.approx(1.0 if regression_loss == "normalizedMse" else var, rel=1e-5)
    batch, pooled, out = _next_batch_outputs(tr, "rating")
    with torch.no_grad():
        plain = F.mse_loss(out[:, 0], batch.labels["rating"])
        losses = tr.task_losses(batch, pooled)
    assert float(losses["rating"]) == pytest.approx(float(plain) / expected_scale, rel=1e-5)


def test_a_checkpoint_that_cannot_be_written_is_removed_and_raises_a_storage_fault(tmp_path):
    """Disk full midway (the second file): no partial checkpoint stays behind to take space."""
    import torch

    from asyncmtl.failpoints import Failpoints
    from asyncmtl.storage import FileRunStorage, StorageFault
    from asyncmtl_trainer.checkpoint import Checkpointer, CheckpointState

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    storage = FileRunStorage(tmp_path / "run", Failpoints.parse("storage.write:checkpoints=ENOSPC@4"))
    ck = Checkpointer(storage, tmp_path / "scratch")
    ck.save(10, model, opt, sched, CheckpointState(step=10, applied_generation=0))
    with pytest.raises(StorageFault, match="No space left on device"):
        ck.save(20, model, opt, sched, CheckpointState(step=20, applied_generation=0))  # its state.json fails
    assert ck.steps() == [10]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000010"]


def test_resume_discards_checkpoints_without_their_state_json(tmp_path):
    import torch

    from asyncmtl.storage import FileRunStorage
    from asyncmtl_trainer.checkpoint import Checkpointer, CheckpointState

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ck = Checkpointer(FileRunStorage(tmp_path / "run"), tmp_path / "scratch")
    ck.save(10, model, opt, sched, CheckpointState(step=10, applied_generation=0))
    half = tmp_path / "run" / "checkpoints" / "step-00000020"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half a file")
    assert ck.discard_incomplete() == [20]
    assert not half.exists() and ck.steps() == [10]


def test_retention_stays_bounded_while_every_task_keeps_improving(tmp_path, tiny_model):
    """Each checkpoint records (best, previous best) = (itself, the one before): following previous
    bests from checkpoint to checkpoint kept every checkpoint of an improving run (seen: 205 MB for a
    tiny model at step 190, ~3 GB per TweetEval run). Kept: the latest and each task's best and
    previous best, plus the bests those record."""
    tr = make_trainer(tmp_path, tiny_model)
    for _ in range(8):
        for _ in range(5):
            tr.step_once()
        for st in tr.states.values():  # every task improved at this validation step
            st.prev_best_step, st.best.best_step = st.best.best_step, tr.step
        tr.save_checkpoint()
    assert tr.checkpointer.steps() == [35, 40]


def test_continual_a_converged_task_keeps_its_labels_and_no_longer_holds_the_trainer(tmp_path, tiny_model):
    """Continual MTL under Pause: the core's converged signal (no rewind) tells the trainer the decision
    was made; the task trains on with its labels and the decision barrier no longer waits for it. With
    no signal (before), the barrier waited metrics.ackTimeoutSeconds (600 s) at each such step, again
    after every restart: a resumed continual TweetEval run sat 10 minutes at step 1000."""
    from asyncmtl.control import ControlDocument, ConvergedSignal, StartTaskSignal, write_control_file

    tr = _trainer_with(tmp_path, tiny_model, setting="sequential", order="explicit",
                       taskOrder=["sentiment", "sarcasm"], method="continual",
                       distillation={"whilePending": "Pause"})
    start = [StartTaskSignal(generation=1, task="sentiment")]
    write_control_file(tmp_path / "c.json", ControlDocument(run="t", generation=1, signals=start))
    tr.poll_control()
    doc = ControlDocument(run="t", generation=2, signals=[
        *start, ConvergedSignal(generation=2, task="sentiment", best_step=5, rewind_to=None)])
    for _ in range(10):
        tr.step_once()  # checkpoints at 5 and 10
    st = tr.states["sentiment"]
    st.best.best_step, st.best.best_value, st.last_step, st.last_value = 5, 99.0, 20, 10.0  # patience 3 spent
    assert tr.decision_due() == ["sentiment"]  # meets the rule: the barrier would hold for the decision
    write_control_file(tmp_path / "c.json", doc)
    tr.poll_control()
    assert st.mode == TaskPhase.TRAINING and st.decided and tr.decision_due() == []
    assert tr.step == 10  # no rewind
    tr.save_checkpoint()
    tr.checkpointer.wait()  # complete, as when a trainer exits (checkpoints are written in the background)
    resumed = _trainer_with(tmp_path, tiny_model, setting="sequential", order="explicit",
                            taskOrder=["sentiment", "sarcasm"], method="continual",
                            distillation={"whilePending": "Pause"})
    resumed.resume()
    rs = resumed.states["sentiment"]
    assert rs.mode == TaskPhase.TRAINING and rs.decided and resumed.decision_due() == []


def test_the_trainer_counts_each_tasks_epochs_from_its_draws_and_decides_with_them(tmp_path, tiny_model):
    """Epochs = examples the deterministic sampler drew for the task / its training-split size, at every
    validation: in the trainer's state, the history, the exported gauge (what the runtimes read) and the
    trainer's own decision barrier; a rewind restores the count of its checkpoint."""
    from collections import Counter

    from prometheus_client import generate_latest

    from asyncmtl.artifacts import ValidationRecord, read_history
    from asyncmtl.local.scrape import parse_trainer_metrics

    tr = _trainer_with(tmp_path, tiny_model)  # batch 8, validation every 5 steps, 64 training examples per task
    names = list(tr.task_specs)
    drawn: list[Counter] = []  # cumulative examples per task after each step, drawn independently of the trainer
    total: Counter = Counter()
    for step in range(10):
        total.update(t for t, _ in tr.sampler.draw(step, 0, names))
        drawn.append(Counter(total))
    assert sum(drawn[-1].values()) == 80 and all(drawn[-1][n] > 0 for n in names)
    for _ in range(10):
        tr.step_once()
    sizes = {n: len(s) for n, s in tr.train.items()}
    assert sizes == {"sentiment": 64, "sarcasm": 64}
    obs = parse_trainer_metrics(generate_latest(tr.exporter.registry).decode(), "t")
    records = [r for r in read_history(tr.storage) if isinstance(r, ValidationRecord)]
    for n in names:
        st = tr.states[n]
        assert st.examples == drawn[9][n]
        assert st.last_epochs == pytest.approx(drawn[9][n] / 64)
        assert obs.tasks[n].last_epochs == pytest.approx(drawn[9][n] / 64)
        assert [(r.step, r.epochs) for r in records if r.task == n] == [
            (5, pytest.approx(drawn[4][n] / 64)), (10, pytest.approx(drawn[9][n] / 64))]
        assert st.track(None).epochs == st.last_epochs
    # the trainer's barrier reads the same floor as the decision core: not due below it, due at it
    tr.spec.distillation.while_pending = "Pause"
    st = tr.states["sentiment"]
    st.best.best_step, st.best.best_value = 5, 99.0  # no improvement since step 5
    tr.spec.tasks[0].patience = 1
    tr.spec.tasks[0].min_epochs = st.last_epochs + 0.01
    assert "sentiment" not in tr.decision_due()
    tr.spec.tasks[0].min_epochs = st.last_epochs
    assert "sentiment" in tr.decision_due()
    tr.rewind(5)
    for n in names:
        assert tr.states[n].examples == drawn[4][n]
        assert tr.states[n].last_epochs == pytest.approx(drawn[4][n] / 64)
    obs = parse_trainer_metrics(generate_latest(tr.exporter.registry).decode(), "t")
    assert obs.tasks["sarcasm"].last_epochs == pytest.approx(drawn[4]["sarcasm"] / 64)


def test_the_trainer_runs_the_paired_bootstrap_stores_the_rows_and_a_rewind_restores_the_best_rows(tmp_path, tiny_model):
    """significance: every validation's per-example rows are stored (what replay_rule.py replays), the best
    checkpoint's rows are kept and the streak is the paired bootstrap's, in the history and the exported gauge;
    a rewind restores the best rows and streak of its checkpoint."""
    import numpy as np
    from prometheus_client import generate_latest

    from asyncmtl.artifacts import ValidationRecord, read_array, read_history, validation_rows_key
    from asyncmtl.local.scrape import parse_trainer_metrics
    from asyncmtl_trainer.significance import bootstrap_seed, paired_lower_bound

    tr = _trainer_with(tmp_path, tiny_model)
    for t in tr.spec.tasks:
        t.significance, t.metric = 0.05, type(t.metric)("accuracy")
    for _ in range(15):
        tr.step_once()
    records = [r for r in read_history(tr.storage) if isinstance(r, ValidationRecord)]
    obs = parse_trainer_metrics(generate_latest(tr.exporter.registry).decode(), "t")
    for name, st in tr.states.items():
        labels = read_array(tr.storage, validation_rows_key(name))
        assert np.array_equal(labels, tr.val[name].labels.numpy())
        rows = {s: read_array(tr.storage, validation_rows_key(name, s, 0)) for s in (5, 10, 15)}
        assert all(r.shape == (32,) and r.dtype == np.int8 for r in rows.values())
        mine = [r for r in records if r.task == name]
        assert [r.value for r in mine] == pytest.approx([rows[s].mean() * 100 for s in (5, 10, 15)])
        assert np.array_equal(st.best_rows, rows[st.best.best_step])
        streak = 0  # the streak replayed from the stored rows with the same seeded bootstrap
        for r in mine:
            if r.best_step == r.step:
                streak = 0
                assert r.lower_bound is None
            else:
                lb = paired_lower_bound(tr.task_specs[name].type, tr.task_specs[name].metric, rows[r.best_step],
                                        rows[r.step], labels, 0.05, bootstrap_seed(tr.spec.training.seed, name, r.step))
                streak = streak + 1 if lb > 0 else 0
                assert r.lower_bound == pytest.approx(lb)
            assert r.streak == streak
        assert st.streak == streak and obs.tasks[name].last_streak == streak
    tr.checkpoints.settled()
    target = min(tr.checkpointer.steps())  # a kept (best or previous best) checkpoint before step 15
    assert target < 15
    tr.rewind(target)
    for name, st in tr.states.items():
        then = [r for r in records if r.task == name and r.step == target][0]
        assert st.streak == then.streak
        assert np.array_equal(st.best_rows, read_array(tr.storage, validation_rows_key(name, then.best_step, 0)))
