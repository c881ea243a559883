"""One run's `RuntimePort` on a cluster (asyncmtl.driver): the Kubernetes API and Prometheus.

- the trainer: its series from Prometheus (bounded window, stale data refused), the training Job's
  state and, when it cannot run, why (its pods' waiting reasons, Unschedulable, FailedCreate Events);
- inference attempts: the Indexed inference Job of (task, step, attempt), counted as failed when no
  pod of it ran within `distillation.pendingTimeoutSeconds`;
- control: a patch of the control ConfigMap (at creation, the document the ConfigMap is made with);
- inference: the Indexed Job, owned by the run; Events: posted on the run.
The run policy itself (what to observe when, manifests, retries, retention, report) is the driver's.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from asyncmtl.control import ControlDocument
from asyncmtl.core.actions import LaunchInference
from asyncmtl.core.observations import Observations
from asyncmtl.driver import EventType, InferenceAttempt
from asyncmtl.spec import AsyncMTLRun
from asyncmtl_operator import children
from asyncmtl_operator.prometheus import PrometheusError

if TYPE_CHECKING:
    from asyncmtl_operator.controller import Controller

WAITING_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                   "CreateContainerError", "CrashLoopBackOff"}


@dataclass
class KubeRunPort:
    """The driver's port for one run during one handler call (kopf's create or timer).

    Attributes:
        creating: the run's children do not exist yet: `write_control` keeps the document for the
            control ConfigMap instead of patching it.
        window: seconds of Prometheus history to read (since the last poll, plus slack).
        point_times: per task, when each validation point became visible in Prometheus (seconds since
            the epoch), filled by `observe_trainer` for the latency histogram.
    """

    controller: "Controller"
    body: dict[str, Any]
    run: AsyncMTLRun
    namespace: str
    adopt: Callable[[dict], None]
    logger: logging.Logger
    creating: bool = False
    memory: Any = None  # the run's controller.RunMemory (when its pods were last listed, and what that found)
    jobs: Mapping[tuple[str, str], Any] | None = None  # the watched Jobs (handlers.run_jobs); None: ask the API
    window: float = 600.0
    control_document: ControlDocument | None = None
    point_times: dict[str, dict[int, float]] = field(default_factory=dict)

    # ---- observation ---------------------------------------------------------------------------
    def observe_trainer(self, obs: Observations) -> None:
        """The trainer's series from Prometheus and the training Job's state."""
        config = self.controller.config
        try:
            snap = self.controller.prometheus.snapshot(self.run.name, self.namespace, self.window)
            if snap is None:
                obs.metrics_error = "no trainer series in Prometheus yet"
            elif obs.time - snap.newest_sample > config.stale_after:
                obs.metrics_error = (f"stale: the newest trainer sample is {obs.time - snap.newest_sample:.0f}s old "
                                     f"(limit {config.stale_after:.0f}s); no decision on stale data")
            else:
                obs.metrics = snap.trainer
                self.point_times = snap.point_times
        except PrometheusError as exc:
            obs.metrics_error = f"Prometheus unreachable: {exc}"
        self._observe_training_job(obs)

    def _job(self, name: str) -> dict[str, Any] | None:
        """A Job of this run: from the watch's index when it has it, else from the API (just created, or gone)."""
        if self.jobs is not None:
            for body in self.jobs.get((self.namespace, name)) or ():
                return body
        return self.controller.kube.get_job(name, self.namespace)

    def _observe_training_job(self, obs: Observations) -> None:
        kube, run, namespace = self.controller.kube, self.run, self.namespace
        job = self._job(children.train_name(run.name))
        if job is None:
            # deleted (by hand, or a cluster cleanup): made again, and its trainer resumes from the latest
            # checkpoint and the last control generation it applied (it always starts with --resume)
            job = children.training_job(run, namespace)
            self.adopt(job)
            kube.create(job, namespace)
            self.post_event("Warning", "TrainingJobRecreated", f"the training Job {job['metadata']['name']} was missing: "
                                                               f"created again; the trainer resumes from its latest checkpoint")
            obs.trainer_state = "Starting"
            return
        st = job.get("status") or {}
        if (job.get("spec") or {}).get("suspend") and not st.get("succeeded"):
            obs.trainer_state = "Queued"  # Kueue (or anyone) suspended it: no pod, no metrics, nothing wrong
            return
        for c in st.get("conditions") or []:
            if c.get("status") == "True" and c.get("type") in ("Complete", "SuccessCriteriaMet"):
                obs.trainer_state = "Finished"
                return
            if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget"):
                obs.trainer_state = "Failed"
                obs.trainer_message = f"training Job failed: {c.get('reason')}: {c.get('message')}"
                return
        if (st.get("succeeded") or 0) >= 1:
            obs.trainer_state = "Finished"
            return
        if (st.get("ready") or 0) >= 1:
            return  # its pod runs and is ready: nothing to look for
        mem = self.memory
        if mem is not None and mem.pods_checked_at is not None and \
                obs.time - mem.pods_checked_at < self.controller.config.pod_check_interval:
            obs.trainer_blocked_reason, obs.trainer_blocked_message = mem.blocked  # as last seen
            return
        if mem is not None:
            mem.pods_checked_at, mem.blocked = obs.time, ("", "")
        pods = kube.list_pods(namespace, {children.RUN_LABEL: run.name, children.ROLE_LABEL: "train"})
        for pod in pods:
            reason, message = pod_problem(pod)
            if reason:
                obs.trainer_blocked_reason, obs.trainer_blocked_message = reason, message
                if mem is not None:
                    mem.blocked = (reason, message)
                return
        if not pods:  # the Job controller could not create the pod: quota, admission, limits
            failed = [e for e in kube.events_for("Job", children.train_name(run.name), namespace)
                      if e.get("reason") == "FailedCreate"]
            if failed:
                msg = failed[-1].get("message") or ""
                obs.trainer_blocked_reason = "QuotaExceeded" if "exceeded quota" in msg else "FailedCreate"
                obs.trainer_blocked_message = msg
                if mem is not None:
                    mem.blocked = (obs.trainer_blocked_reason, msg)

    def inference_attempt(self, task: str, step: int, attempt: int) -> InferenceAttempt | None:
        """The inference Job of that attempt (None: there is none)."""
        run = self.run
        job = self._job(children.inference_name(run.name, task, step, attempt))
        if job is None:
            return None
        st = job.get("status") or {}
        completions = (job.get("spec") or {}).get("completions") or run.spec.distillation.shards
        self.controller.metrics.set_inference(self.namespace, run.name, task, completions, st)
        failed = next((c for c in st.get("conditions") or []
                       if c.get("type") == "Failed" and c.get("status") == "True"), None)
        if failed is not None:
            return InferenceAttempt(state="Failed", shards=completions,
                                    message=f"{failed.get('reason')}: {failed.get('message')}")
        name = children.inference_name(run.name, task, step, attempt)
        pods = self.controller.kube.list_pods(self.namespace, {JOB_NAME_LABEL: name}) if not _started(st) else []
        if inference_stuck(job, pods, run, time.time()):
            # stopped, so its Pending pods neither hold a place in the queue nor start late beside the retry
            self.controller.kube.delete_job(name, self.namespace)
            return InferenceAttempt(state="Failed", shards=completions, message=(
                f"Pending: no inference pod ran within distillation.pendingTimeoutSeconds "
                f"({run.spec.distillation.pending_timeout_seconds:.0f} s): queued, suspended, "
                f"unschedulable or over quota (a paused trainer may hold the GPUs it needs)"))
        if (st.get("succeeded") or 0) >= completions:
            return InferenceAttempt(state="Succeeded", shards=completions)
        return InferenceAttempt(state="Running", shards=completions)

    # ---- actions -------------------------------------------------------------------------------
    def write_control(self, document: ControlDocument) -> None:
        """Patch the control ConfigMap (while creating: keep the document it is created with)."""
        if self.creating:
            self.control_document = document
            return
        kube = self.controller.kube
        if not kube.patch_configmap_data(children.control_name(self.run.name), self.namespace,
                                         {"control.json": document.to_json()}):
            # deleted: made again (level-triggered); the trainer's volume sees it at the kubelet's next sync
            cm = self.controller.control_configmap(self.body, self.run, self.namespace, document)
            self.adopt(cm)
            kube.create(cm, self.namespace)
            self.post_event("Warning", "ControlRecreated", f"the control ConfigMap {cm['metadata']['name']} was "
                                                           f"missing: created again with generation {document.generation}")
        self.logger.info("[run=%s] control generation %d written", self.run.name, document.generation)

    def launch_inference(self, action: LaunchInference) -> None:
        """Create the Indexed inference Job (owned by the run; already there: nothing to do)."""
        a = action
        job = children.inference_job(self.run, self.namespace, a.task, a.checkpoint_step, a.shards, a.attempt, a.source_run)
        self.adopt(job)
        created = self.controller.kube.create(job, self.namespace)
        self.logger.info("[run=%s] inference Job %s %s", self.run.name, job["metadata"]["name"],
                         "created" if created else "already exists")

    def post_event(self, type_: EventType, reason: str, message: str) -> None:
        """A Kubernetes Event on the run."""
        self.controller.post_event(self.body, type_, reason, message)


JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on every pod of a Job


def _started(job_status: dict[str, Any]) -> bool:
    """A pod of the Job has run: ready, succeeded or failed (`active` also counts Pending pods)."""
    return any(job_status.get(k) for k in ("ready", "succeeded", "failed"))


def inference_stuck(job: dict[str, Any], pods: list[dict[str, Any]], run: AsyncMTLRun, now: float) -> bool:
    """No pod of the inference Job has run for longer than `distillation.pendingTimeoutSeconds` since the
    Job was created: none ready, succeeded or failed, and every pod it has (`pods`, by the Job controller's
    job-name label) still Pending: unschedulable, waiting for an image, not admitted. The Job controller
    counts Pending pods as `active`, so `active` alone says nothing."""
    st = job.get("status") or {}
    if _started(st):
        return False
    if any((p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed") for p in pods):
        return False
    created = (job.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return False
    age = now - parse_time(created)
    return age > run.spec.distillation.pending_timeout_seconds


def pod_problem(pod: dict[str, Any]) -> tuple[str, str]:
    """(reason, message) when a pod cannot run: image pull errors, unschedulable (e.g. no GPU fits)."""
    st = pod.get("status") or {}
    for cs in (st.get("containerStatuses") or []) + (st.get("initContainerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_REASONS:
            return waiting["reason"], waiting.get("message") or ""
    for c in st.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return "Unschedulable", c.get("message") or "no node fits the pod"
    return "", ""


def parse_time(text: str) -> float:
    """Seconds since the epoch of a Kubernetes (RFC 3339) timestamp, e.g. `2026-11-22T04:38:27Z`."""
    import datetime

    t = datetime.datetime.fromisoformat(text)
    return (t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)).timestamp()
