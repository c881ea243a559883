"""A run's artifacts: where each lives in its storage, and the typed records the trainer writes and
the report, the comparison, the local runtime and the operator read (torch-free).

Layout, relative to the run's storage root (`runs/local/<run>/` locally,
`s3://bucket/prefix/<namespace>/<run>/` on a cluster):

- `checkpoints/step-<8 digits>/{model.safetensors, training_state.pt, state.json}`, state.json last;
- `softlabels/<task>/step-<8 digits>/...` (shard naming: `asyncmtl.softlabels`);
- `reports/history.jsonl`: one `ValidationRecord` or `EventRecord` per line, in the order written;
- `validation_rows/<task>/step-<8 digits>-rewinds-<n>.npy`: the task's per-example validation rows at
  that validation step (`asyncmtl_trainer.significance.example_rows`), and `.../labels.npy` its validation labels:
  what `benchmarks/replay_rule.py` replays the significance rule on without retraining;
- `reports/best_checkpoint_scores.json`: `BestScores`, each task's best checkpoint scored when it converged;
- `reports/final.json`: `FinalReport`, the final evaluation;
- `reports/{report.json, report.md, curves.png}`: the run report (`asyncmtl.report`);
- `model/`: the final model for serving.

No other module spells a storage key. Records are pydantic models with the camelCase field names
the files have always had, so runs written before this module read as they did.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from asyncmtl.lifecycle import TaskPhase

if TYPE_CHECKING:
    from asyncmtl.storage import RunStorage

CHECKPOINTS = "checkpoints"
SOFTLABELS = "softlabels"
REPORTS = "reports"
HISTORY = f"{REPORTS}/history.jsonl"
BEST_SCORES = f"{REPORTS}/best_checkpoint_scores.json"
FINAL = f"{REPORTS}/final.json"
REPORT_JSON = f"{REPORTS}/report.json"
REPORT_MD = f"{REPORTS}/report.md"
CURVES = f"{REPORTS}/curves.png"
MODEL = "model"
VALIDATION_ROWS = "validation_rows"
CHECKPOINT_STATE = "state.json"  # written last: a checkpoint folder without it is incomplete
CHECKPOINT_WEIGHTS = "model.safetensors"  # the model's weights (safetensors)
CHECKPOINT_TRAINING = "training_state.pt"  # optimizer, scheduler, RNG and trackers (what a resume needs)
RUN_PREFIXES = (CHECKPOINTS, SOFTLABELS, REPORTS, MODEL, VALIDATION_ROWS)  # everything a run stores (what cleanupOnDelete deletes)
RUN_OWNER = "run.json"  # which instance of a run (its Kubernetes UID) the artifacts belong to


def checkpoint_key(step: int) -> str:
    """The folder of the checkpoint at `step` (steps): `checkpoints/step-00000200`."""
    return f"{CHECKPOINTS}/step-{step:08d}"


def checkpoint_file(step: int, name: str) -> str:
    """A file of the checkpoint at `step`, e.g. `checkpoints/step-00000200/model.safetensors`."""
    return f"{checkpoint_key(step)}/{name}"


def softlabel_key(task: str, step: int) -> str:
    """The folder of `task`'s soft labels computed from the checkpoint at `step`."""
    return f"{SOFTLABELS}/{task}/step-{step:08d}"


def validation_rows_key(task: str, step: int | None = None, rewinds: int = 0) -> str:
    """`task`'s per-example validation rows at validation `step` (steps) after `rewinds` rewinds (the history
    record's step and rewinds); `step` None: the task's validation labels."""
    if step is None:
        return f"{VALIDATION_ROWS}/{task}/labels.npy"
    return f"{VALIDATION_ROWS}/{task}/step-{step:08d}-rewinds-{rewinds}.npy"


def write_array(storage: "RunStorage", key: str, array: object) -> None:
    """A numpy array as a .npy file at `key` (numpy imported here: the module stays numpy-free to import)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    storage.put_bytes(key, buf.getvalue())


def read_array(storage: "RunStorage", key: str):  # -> numpy.ndarray
    """The .npy array at `key` (raises the storage's error when it is missing)."""
    import io

    import numpy as np

    return np.load(io.BytesIO(storage.get_bytes(key)), allow_pickle=False)


def model_file(relative: str) -> str:
    """A file of the final model, e.g. `model/config.json`."""
    return f"{MODEL}/{relative}"


def checkpoint_steps(storage: "RunStorage", *, complete: bool) -> list[int]:
    """Steps of the checkpoints in `storage`, ascending: only those with their state.json (written
    last, it marks a checkpoint complete) when `complete`, else every checkpoint folder."""
    out = set()
    for k in storage.list(CHECKPOINTS):
        parts = k.split("/")
        if len(parts) == 3 and parts[1].startswith("step-") and parts[1][5:].isdigit() and (
                not complete or parts[2] == CHECKPOINT_STATE):
            out.add(int(parts[1][5:]))
    return sorted(out)


# a task's phase in a record; trainers before asyncmtl.lifecycle wrote their own words (supervised, kd, ...)
Phase = Annotated[TaskPhase, BeforeValidator(lambda v: TaskPhase.of(v) if isinstance(v, str) else v)]


class _Record(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ValidationRecord(_Record):
    """One task's validation at one validation step. `value`: the task's metric (points, 0-100);
    `metrics`: every metric computed; `mode`: how the task was trained then (supervised, kd, ...);
    `generation`: the control generation applied; `best_step`/`best_value`: the trainer's best so
    far; `rewinds`: rewinds applied before it (with kind, task and step: what makes it unique);
    `epochs`: epochs of the task's training data drawn by then (examples drawn for it along the run's
    timeline / its training-split size; None in histories written before it was recorded);
    `streak`: consecutive validations up to this one significantly below the best, and `lower_bound` (metric
    points): this one's paired-bootstrap lower bound of best − current (significance rule only)."""

    time: float = 0.0
    step: int
    task: str
    metric: str = ""
    value: float
    metrics: dict[str, float] = Field(default_factory=dict)
    mode: Phase = TaskPhase.TRAINING
    generation: int = 0
    best_step: int | None = None
    best_value: float | None = None
    rewinds: int | None = None
    epochs: float | None = None
    streak: int | None = None
    lower_bound: float | None = None

    @property
    def kind(self) -> str:
        return "validation"


class EventRecord(_Record):
    """A trainer event in the history, in order with the validations: `start` (sequential: a task
    starts), `converged` (the trainer applied a task's convergence decision; `step` is the task's best
    step, the checkpoint it converged at), `kd` (a task
    switched to its KD loss), `rewind` (the whole model went back to `step`; `from_step`: the step it
    had trained to, so the optimizer steps `step + 1 .. from_step` were discarded; None in histories
    written before it was recorded)."""

    event: Literal["start", "converged", "kd", "rewind"]
    time: float = 0.0
    step: int
    task: str | None = None
    rewinds: int | None = None
    from_step: int | None = None

    @property
    def kind(self) -> str:
        return self.event


HistoryRecord = ValidationRecord | EventRecord


def parse_record(data: dict) -> HistoryRecord:
    """A history line's record.

    Raises:
        pydantic.ValidationError: not a record (missing step, task or value).
    """
    return EventRecord.model_validate(data) if "event" in data else ValidationRecord.model_validate(data)


def record_json(record: HistoryRecord) -> str:
    """The record as one history line (camelCase keys, as the trainer has always written them)."""
    if isinstance(record, EventRecord):
        return json.dumps(record.model_dump(by_alias=True, exclude_none=True))
    # fields added later are written only when set, so a line reads as it always did
    return json.dumps(record.model_dump(by_alias=True, exclude={k for k in _LATER_FIELDS if getattr(record, k) is None}))


_LATER_FIELDS = ("epochs", "streak", "lower_bound")  # ValidationRecord fields histories before them lack


def history_key(record: HistoryRecord) -> tuple:
    """What makes a history record the same record: its kind (`validation`, or the event: `rewind`,
    `kd`, `start`), task, step and the rewinds applied before it. A trainer that resumes from a
    checkpoint repeats the records written after it with the same key; a rewind changes the key of
    every later record (the same step, validated again on a new trajectory, is a new record)."""
    return (record.kind, record.task, record.step, record.rewinds)


def read_history(storage: "RunStorage") -> list[HistoryRecord]:
    """The run's history records in the order written (empty if none)."""
    if not storage.exists(HISTORY):
        return []
    return [parse_record(json.loads(line)) for line in storage.get_bytes(HISTORY).decode().splitlines() if line.strip()]


def append_history(storage: "RunStorage", record: HistoryRecord) -> None:
    storage.append_line(HISTORY, record_json(record))


class CheckpointScore(_Record):
    """A task scored with the weights of one checkpoint: `step` (steps), and its validation and
    test metrics (points, 0-100; no test when the task has no test split)."""

    step: int
    validation: dict[str, float] = Field(default_factory=dict)
    test: dict[str, float] | None = None


def read_best_scores(storage: "RunStorage") -> dict[str, CheckpointScore]:
    if not storage.exists(BEST_SCORES):
        return {}
    raw = json.loads(storage.get_bytes(BEST_SCORES))
    return {t: CheckpointScore.model_validate(v) for t, v in raw.items()}


def write_best_scores(storage: "RunStorage", scores: dict[str, CheckpointScore]) -> None:
    storage.put_bytes(BEST_SCORES, json.dumps({t: s.model_dump(by_alias=True, exclude_none=True)
                                               for t, s in scores.items()}, indent=1).encode())


class TaskFinal(_Record):
    """One task in the final evaluation: how it was trained last (`mode`), the final model's
    validation and test metrics, and its best checkpoint's scores (None: none kept)."""

    type: str = ""
    metric: str = ""
    mode: Phase | None = None
    final_validation: dict[str, float] = Field(default_factory=dict)
    best_checkpoint: CheckpointScore | None = None
    final_test: dict[str, float] | None = None


class FinalReport(_Record):
    """`reports/final.json`: the final evaluation. `step`: the final step; `stopped`: `stop` (every
    task converged) or `maxSteps`; `control_generation`: the last control generation applied."""

    run: str = ""
    step: int
    stopped: Literal["stop", "maxSteps"] = "maxSteps"
    control_generation: int = 0
    tasks: dict[str, TaskFinal] = Field(default_factory=dict)


def read_final(storage: "RunStorage") -> FinalReport | None:
    """The final evaluation (None while the run has none)."""
    if not storage.exists(FINAL):
        return None
    return FinalReport.model_validate_json(storage.get_bytes(FINAL))


def write_final(storage: "RunStorage", final: FinalReport) -> None:
    storage.put_bytes(FINAL, json.dumps(final.model_dump(by_alias=True, exclude_none=True), indent=1).encode())


def teacher_steps(storage: "RunStorage", tasks: list[str]) -> dict[str, int]:
    """Each task's best checkpoint step in a finished run's final evaluation (BAM's teachers);
    tasks without one are left out, and {} while the run has no final evaluation."""
    final = read_final(storage)
    if final is None:
        return {}
    return {t: final.tasks[t].best_checkpoint.step for t in tasks
            if t in final.tasks and final.tasks[t].best_checkpoint is not None}


def convergence_order(history: list[HistoryRecord], tasks: list[str]) -> list[str]:
    """The order in which a finished run's tasks converged (sequential `easiest-first`), from its
    history: the order of their `converged` events (a Frozen task and a continual run's tasks
    included); tasks that never converged follow in declaration order. A history written before
    `converged` events existed is read from its KD switches (a task switches to KD right after it
    converges). The local runtime and the operator both order through this function."""
    events = [r for r in history if isinstance(r, EventRecord)]
    kind = "converged" if any(r.event == "converged" for r in events) else "kd"
    seen: list[str] = []
    for r in events:
        if r.event == kind and r.task in tasks and r.task not in seen:
            seen.append(r.task)
    return seen + [t for t in tasks if t not in seen]


class RunOwner(_Record):
    """`run.json`: the run instance whose artifacts a run's storage holds. On a cluster `uid` is the
    AsyncMTLRun's `metadata.uid`, so a run deleted and applied again under the same name (a new UID) is
    told from the same run's operator restarting."""

    uid: str


def read_run_owner(storage: "RunStorage") -> RunOwner | None:
    """The owner record of a run's storage (None when there is none: a new run, or one from before it existed)."""
    if not storage.exists(RUN_OWNER):
        return None
    return RunOwner.model_validate_json(storage.get_bytes(RUN_OWNER))


def write_run_owner(storage: "RunStorage", owner: RunOwner) -> None:
    storage.put_bytes(RUN_OWNER, owner.model_dump_json(by_alias=True).encode())


def delete_run_artifacts(storage: "RunStorage") -> None:
    """Delete everything a run stores (`RUN_PREFIXES`) and its owner record (`RUN_OWNER`): a local run started
    anew, a cluster run replacing a deleted one of the same name, `storage.cleanupOnDelete`.

    Raises:
        asyncmtl.storage.StorageError: a delete failed.
    """
    for prefix in (*RUN_PREFIXES, RUN_OWNER):
        storage.delete_prefix(prefix)
