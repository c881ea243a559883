"""Run status: what the runtime (local or the operator) records about a run between polls.

This is the `status` of the AsyncMTLRun custom resource (camelCase on the wire) and the
`status.json` of a local run. Task phases: `asyncmtl.lifecycle.TaskPhase` (paper Sec. 3), the one
vocabulary the trainer, the metrics and the dashboard share.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from asyncmtl.control import ControlDocument
from asyncmtl.core.convergence import Track
from asyncmtl.lifecycle import TaskPhase

RunPhase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed"]
# Complete and Failed are terminal (Kubeflow Trainer v2, batch/v1 Job): `kubectl wait --for=condition=Complete`
ConditionType = Literal["Ready", "MetricsAvailable", "SignalAcknowledged", "Degraded", "Complete", "Failed"]

HISTORY_LIMIT = 200
TRACK_POINTS = 16  # validation points kept per task: the possible rewind targets and the last (bound_tracks)


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(_Camel):
    """A Kubernetes-style condition. `last_transition_time` is seconds since the epoch."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: float = 0.0


class HistoryEntry(_Camel):
    """One transition, also emitted as an Event. `time` in seconds since the epoch; `step` in steps."""

    time: float
    reason: str
    message: str
    task: str | None = None
    step: int | None = None


class TaskStatus(_Camel):
    """Where one task stands."""

    # `ts.phase = "KD"` in the core stores the TaskPhase member, so the status serializes as it reads
    # (pydantic merges this with _Camel's config)
    model_config = ConfigDict(validate_assignment=True)

    phase: TaskPhase = TaskPhase.TRAINING
    track: Track = Field(default_factory=Track)
    converged_at_step: int | None = Field(None, description="Last validation step when convergence was declared.")
    best_step: int | None = Field(None, description="Step of the checkpoint the soft labels come from.")
    best_value: float | None = None
    rewind_to: int | None = None
    soft_labels_uri: str | None = None
    inference_attempts: int = 0
    kd_from_generation: int | None = Field(None, description="Control generation of its softLabelsReady signal.")

    @field_validator("phase", mode="before")
    @classmethod
    def _former_phase(cls, v: object) -> object:
        # a status written before v1alpha1's renames (Distilling, now AwaitingSoftLabels) still reads
        try:
            return TaskPhase.of(v) if isinstance(v, str) else v
        except ValueError:
            return v  # refused below, in the enum's words


class RunStatus(_Camel):
    """Status of one run."""

    phase: RunPhase = "Pending"
    tasks: dict[str, TaskStatus] = Field(default_factory=dict)
    control: ControlDocument | None = None
    acknowledged_generation: int = 0
    rewind_generation: int | None = Field(None, description="Generation of the last rewind; observations wait for its ack.")
    signal_sent_at: float | None = None
    stopping: bool = False
    step: int = 0
    conditions: list[Condition] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)
    message: str = ""
    observed_generation: int | None = None
    task_order: list[str] | None = Field(None, description="Sequential setting: the order tasks are started in.")

    def condition(self, type_: ConditionType) -> Condition | None:
        for c in self.conditions:
            if c.type == type_:
                return c
        return None

    def converged_count(self) -> int:
        """Tasks past Training (the CRD's `Converged` printer column numerator)."""
        return sum(1 for t in self.tasks.values() if t.phase not in ("Pending", "Training"))
