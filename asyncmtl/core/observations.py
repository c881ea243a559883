"""Observations: what a runtime saw at one poll, the only input of `reconcile` besides spec and status.

The local runtime fills them from the trainer's /metrics endpoint and its child processes;
the operator from Prometheus and the Kubernetes API. Times are seconds since the epoch.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from asyncmtl.core.convergence import TaskObservation

# Queued: the training Job is suspended (`spec.suspend`, e.g. by Kueue until its queue admits it)
TrainerState = Literal["Starting", "Queued", "Running", "Finished", "Failed"]
InferenceState = Literal["Running", "Succeeded", "Failed"]


class TrainerObservation(BaseModel):
    """The trainer's own series (`asyncmtl_*` metrics), or None fields if not scraped yet."""

    global_step: int = 0
    applied_generation: int = Field(0, description="Last control generation the trainer applied (the ack).")
    applied_at_step: int | None = None
    tasks: dict[str, TaskObservation] = Field(default_factory=dict)
    validation_complete_step: int | None = Field(
        None, description="Last validation step (steps) that every validated task has reported; None: the trainer "
                          "does not export it (then every task's values are used as seen).")
    train_sizes: dict[str, int] = Field(default_factory=dict, description="Training examples per task.")


class InferenceObservation(BaseModel):
    """State of a task's soft-label inference launched for `checkpoint_step`."""

    checkpoint_step: int
    state: InferenceState
    uri: str | None = Field(None, description="The manifest URI, when Succeeded and verified.")
    message: str = ""


class Observations(BaseModel):
    """Everything reconcile may look at for one poll."""

    time: float
    trainer_state: TrainerState = "Running"
    trainer_message: str = ""
    trainer_blocked_reason: str = Field("", description="Why the trainer is not running (ImagePullBackOff, Unschedulable, ...).")
    trainer_blocked_message: str = ""
    metrics: TrainerObservation | None = Field(None, description="None: the metrics could not be read.")
    metrics_error: str = ""
    inference: dict[str, InferenceObservation] = Field(default_factory=dict)
    teacher_steps: dict[str, int] = Field(
        default_factory=dict, description="BAM: each task's best checkpoint step in the teacher run (read by the runtime).")
    reference_order: list[str] | None = Field(
        None, description="Sequential easiest-first: the order the tasks of spec.orderFromRun converged in "
                          "(asyncmtl.artifacts.convergence_order, resolved once per run by the runtime).")
