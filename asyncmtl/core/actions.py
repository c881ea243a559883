"""Actions: what `reconcile` asks a runtime to do. Runtimes execute them in list order."""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel

from asyncmtl.control import ControlDocument


class WriteControl(BaseModel):
    """Publish the control document (atomic file write locally; ConfigMap patch on a cluster)."""

    kind: Literal["WriteControl"] = "WriteControl"
    document: ControlDocument


class LaunchInference(BaseModel):
    """Compute soft labels for `task` from the checkpoint at `checkpoint_step`, in `shards` shards.

    Attempt numbers start at 1; runtimes name children deterministically from (task, step, attempt).
    """

    kind: Literal["LaunchInference"] = "LaunchInference"
    task: str
    checkpoint_step: int
    shards: int
    attempt: int = 1
    source_run: str | None = None  # the run whose checkpoint it is (BAM: the teacher run); None: this run


class EmitEvent(BaseModel):
    """Record a transition (a log line locally, a Kubernetes Event on a cluster)."""

    kind: Literal["EmitEvent"] = "EmitEvent"
    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


class Complete(BaseModel):
    """The run succeeded: collect the report."""

    kind: Literal["Complete"] = "Complete"


class Fail(BaseModel):
    """The run failed: stop children and record `reason`."""

    kind: Literal["Fail"] = "Fail"
    reason: str


Action = Union[WriteControl, LaunchInference, EmitEvent, Complete, Fail]
