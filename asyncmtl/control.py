"""The control document: how a runtime tells the trainer what to do.

Locally it is a JSON file (written atomically); on a cluster it is the `control.json` key of
the run's ConfigMap, mounted as a directory into the trainer pod. The document is cumulative:
it lists every signal so far, each with the generation it was issued in, and the trainer
applies, in order, the signals whose generation is above the one it last applied. It
acknowledges by exporting that generation (`asyncmtl_control_generation_applied`).

Signals (paper Sec. 3):
- `converged(task, bestStep, rewindTo)`: the task has converged; rewind model, optimizer,
  scheduler and RNG to the checkpoint at `rewindTo` and drop the task's supervised loss.
- `softLabelsReady(task, uri)`: soft labels from the task's best checkpoint are complete at
  `uri` (a manifest); train the task with the KD loss (Eq. 2) from now on.
- `skipDistillation(task, reason)`: soft labels could not be made; the task stays frozen.
- `startTask(task)`: sequential setting: start training the task on its true labels.
- `stop`: every task has converged; run the final evaluation and exit.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

CONTROL_FILE_NAME = "control.json"


class _Signal(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
    generation: int = Field(..., ge=1)


class ConvergedSignal(_Signal):
    kind: Literal["converged"] = "converged"
    task: str
    best_step: int = Field(..., ge=0)
    rewind_to: int | None = Field(..., ge=0, description="Checkpoint step to rewind the whole model to (None: no rewind).")


class StartTaskSignal(_Signal):
    """Sequential setting: start training `task` on its true labels."""

    kind: Literal["startTask"] = "startTask"
    task: str


class SoftLabelsReadySignal(_Signal):
    kind: Literal["softLabelsReady"] = "softLabelsReady"
    task: str
    uri: str


class SkipDistillationSignal(_Signal):
    kind: Literal["skipDistillation"] = "skipDistillation"
    task: str
    reason: str = ""


class StopSignal(_Signal):
    kind: Literal["stop"] = "stop"


Signal = Annotated[
    Union[ConvergedSignal, SoftLabelsReadySignal, SkipDistillationSignal, StopSignal, StartTaskSignal],
    Field(discriminator="kind"),
]


class ControlDocument(BaseModel):
    """All signals issued to one run's trainer; `generation` is the highest signal generation."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    run: str
    generation: int = Field(0, ge=0)
    signals: list[Signal] = Field(default_factory=list)

    def since(self, applied: int) -> list[Signal]:
        """Signals with generation > `applied`, in issue order."""
        return [s for s in self.signals if s.generation > applied]

    def with_signals(self, *signals: _Signal) -> "ControlDocument":
        """A new document with `signals` appended at generation `self.generation + 1`.

        The signals' own `generation` fields are overwritten with that generation.
        """
        gen = self.generation + 1
        added = [s.model_copy(update={"generation": gen}) for s in signals]
        return ControlDocument(run=self.run, generation=gen, signals=[*self.signals, *added])

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1)


def read_control_file(path: str | Path) -> ControlDocument | None:
    """Parse the control file; None if it does not exist yet.

    Raises:
        pydantic.ValidationError: the file exists but is not a valid control document.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return ControlDocument.model_validate_json(text)


def write_control_file(path: str | Path, doc: ControlDocument) -> None:
    """Write atomically (temp file + rename in the same folder), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".control-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(doc.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
