"""One run on a cluster: create its children, then on every timer tick observe, reconcile, act.

Observations come from Prometheus (the trainer's series), the Kubernetes API (the training Job
and its pods, inference Jobs) and storage (soft-label shards, verified before the manifest is
written). Decisions come from `asyncmtl.core.reconcile`. Actions: patch the control ConfigMap,
create an Indexed inference Job, post an Event, set the phase. The status patch is returned to
kopf, which applies it after the handler; actions are idempotent (deterministic names, the
control document's generations), so a tick that fails half-way is simply repeated.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from asyncmtl.control import ConvergedSignal
from asyncmtl.core.actions import Complete, EmitEvent, Fail, LaunchInference, WriteControl
from asyncmtl.core.observations import InferenceObservation, Observations
from asyncmtl.core.reconcile import reconcile
from asyncmtl.core.status import RunStatus
from asyncmtl.artifacts import convergence_order, read_history, teacher_steps
from asyncmtl.softlabels import write_manifest
from pydantic import ValidationError

from asyncmtl.retention import retain_after_run
from asyncmtl.spec import AsyncMTLRun, ClusterSpec, SpecError, SpecIssue, issues_from_validation_error, parse_run
from asyncmtl.storage import RunStorage, StorageError, open_run_storage
from asyncmtl_operator import children
from asyncmtl_operator.kube import InvalidManifest, Kube
from asyncmtl_operator.operator_metrics import OperatorMetrics
from asyncmtl_operator.pod_template import merge_under
from asyncmtl_operator.prometheus import PrometheusClient, PrometheusError

STATUS_KEY = "asyncmtl"  # the full RunStatus, under status.asyncmtl
WAITING_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                   "CreateContainerError", "CrashLoopBackOff"}


@dataclass
class OperatorConfig:
    """Operator settings, from the environment.

    PROMETHEUS_URL, PROMETHEUS_BEARER_TOKEN_FILE, PROMETHEUS_CA_FILE (an authenticating proxy, TLS);
    ASYNCMTL_TIMER_INTERVAL (seconds between ticks per run, default 5);
    ASYNCMTL_STALE_AFTER (seconds after which the newest trainer sample is stale, default 120);
    ASYNCMTL_OPERATOR_METRICS_PORT (0 disables, default 8080);
    ASYNCMTL_DEFAULT_STORAGE_URI, ASYNCMTL_DEFAULT_STORAGE_ENDPOINT, ASYNCMTL_DEFAULT_STORAGE_SECRET:
    the S3 storage that replaces a run's `file://` storage (a pod's files are not shared with
    the inference pods), so a spec written for `asyncmtl run` applies unchanged;
    ASYNCMTL_TRAINER_DEFAULTS: JSON in the shape of `spec.cluster` (camelCase), used for every
    field a run does not set (image, resources, nodeSelector, tolerations, priorityClassName, labels).
    """

    prometheus_url: str = "http://prometheus-operated.monitoring:9090"
    prometheus_bearer_token_file: str | None = None
    prometheus_ca_file: str | None = None
    timer_interval: float = 5.0
    stale_after: float = 120.0
    metrics_port: int = 8080
    default_storage_uri: str | None = None
    default_storage_endpoint: str | None = None
    default_storage_secret: str | None = None
    trainer_defaults: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "OperatorConfig":
        return cls(prometheus_url=os.environ.get("PROMETHEUS_URL", cls.prometheus_url),
                   prometheus_bearer_token_file=os.environ.get("PROMETHEUS_BEARER_TOKEN_FILE") or None,
                   prometheus_ca_file=os.environ.get("PROMETHEUS_CA_FILE") or None,
                   timer_interval=float(os.environ.get("ASYNCMTL_TIMER_INTERVAL", cls.timer_interval)),
                   stale_after=float(os.environ.get("ASYNCMTL_STALE_AFTER", cls.stale_after)),
                   metrics_port=int(os.environ.get("ASYNCMTL_OPERATOR_METRICS_PORT", cls.metrics_port)),
                   default_storage_uri=os.environ.get("ASYNCMTL_DEFAULT_STORAGE_URI") or None,
                   default_storage_endpoint=os.environ.get("ASYNCMTL_DEFAULT_STORAGE_ENDPOINT") or None,
                   default_storage_secret=os.environ.get("ASYNCMTL_DEFAULT_STORAGE_SECRET") or None,
                   trainer_defaults=json.loads(os.environ.get("ASYNCMTL_TRAINER_DEFAULTS") or "{}"))


@dataclass
class RunMemory:
    """Per-run, in-memory only: when it was last polled (bounds the Prometheus window)."""

    last_poll: float | None = None
    warned_generation: int | None = None  # the spec edit already reported as not applied
    started_spec: dict[str, Any] | None = None  # the spec the pods read (from the control ConfigMap), once edited
    reference_order: list[str] | None = None  # easiest-first: the reference run's convergence order, read once


TICK_SLACK = 0.05  # seconds: a timer firing this early still counts as on time


@dataclass
class Controller:
    """Shared by every run the operator handles."""

    config: OperatorConfig
    kube: Kube
    metrics: OperatorMetrics
    post_event: Callable[[dict, str, str, str], None]
    prometheus: PrometheusClient | None = None
    memory: dict[tuple[str, str], RunMemory] = field(default_factory=dict)
    storages: dict[tuple, RunStorage] = field(default_factory=dict)  # (namespace, run, storage run, settings...)

    def __post_init__(self) -> None:
        if self.prometheus is None:
            self.prometheus = PrometheusClient(self.config.prometheus_url,
                                               bearer_token_file=self.config.prometheus_bearer_token_file,
                                               ca_file=self.config.prometheus_ca_file)

    # ---- helpers ---------------------------------------------------------------------------
    def parse(self, body: dict[str, Any]) -> AsyncMTLRun:
        """The resource as models, with the operator's default storage in place of `file://`.

        Raises:
            SpecError: cross-field rules the CRD cannot express, or `file://` storage with no
                default storage configured.
        """
        doc = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}
        doc["metadata"] = {k: v for k, v in (body.get("metadata") or {}).items()
                           if k in ("name", "namespace", "labels")}
        where = f"{doc['metadata'].get('namespace')}/{doc['metadata'].get('name')}"
        run = parse_run(doc, file=where)
        if self.config.trainer_defaults:
            run.spec.cluster = _with_defaults(run.spec.cluster, self.config.trainer_defaults)
        st = run.spec.storage
        if st.uri.startswith("file://"):
            if not self.config.default_storage_uri:
                raise SpecError([SpecIssue(path="spec.storage.uri", file=where, message=(
                    "file:// storage is local to one pod and cannot be shared with inference pods; use s3:// "
                    "(or configure the operator's default storage)"))])
            st.uri = self.config.default_storage_uri
            st.endpoint_url = st.endpoint_url or self.config.default_storage_endpoint
            st.credentials_secret = st.credentials_secret or self.config.default_storage_secret
        return run

    def reference_order(self, run: AsyncMTLRun, namespace: str) -> list[str] | None:
        """Sequential easiest-first: the order the tasks of `spec.orderFromRun` (a finished run in the same
        namespace and storage) converged in, from its history (None for other orders).

        Raises:
            SpecError: that run has no history in storage (path spec.orderFromRun).
        """
        if run.spec.order != "easiest-first":
            return None
        ref = self.storage(run, namespace, name=run.spec.order_from_run)
        history = read_history(ref)
        if not history:
            raise SpecError([SpecIssue(path="spec.orderFromRun", file=f"{namespace}/{run.name}",
                                       message=f"no finished run {run.spec.order_from_run!r} in {ref.uri()}")])
        return convergence_order(history, [t.name for t in run.spec.tasks])

    def storage(self, run: AsyncMTLRun, namespace: str, name: str | None = None) -> RunStorage:
        """The storage of run `name` (default: this run) under this run's storage settings, with the
        credentials of `spec.storage.credentialsSecret` when given. Built once per run and settings (the
        Secret read and the S3 client made once, not at every tick); `forget` drops a deleted run's."""
        st = run.spec.storage
        name = name or run.name
        key = (namespace, run.name, name, st.uri, st.endpoint_url, st.credentials_secret)
        if key not in self.storages:
            self.storages[key] = self._open_storage(run, namespace, name)
        return self.storages[key]

    def forget(self, namespace: str, name: str) -> None:
        """Drop what the operator keeps of a deleted run: its memory, storages and operator series."""
        self.memory.pop((namespace, name), None)
        self.storages = {k: v for k, v in self.storages.items() if k[:2] != (namespace, name)}
        self.metrics.forget_run(namespace, name)

    def _open_storage(self, run: AsyncMTLRun, namespace: str, name: str) -> RunStorage:
        st = run.spec.storage
        if st.uri.startswith("s3://") and st.credentials_secret:
            from asyncmtl.storage_s3 import S3RunStorage, parse_s3_uri
            import boto3
            from botocore.config import Config

            from asyncmtl.storage_s3 import RETRIES

            creds = self.kube.read_secret(st.credentials_secret, namespace)
            client = boto3.client("s3", endpoint_url=st.endpoint_url, aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID"),
                                  aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY"), config=Config(retries=RETRIES))
            bucket, prefix = parse_s3_uri(st.uri)
            return S3RunStorage(bucket, "/".join(p for p in (prefix, namespace, name) if p),
                                endpoint_url=st.endpoint_url, client=client)
        return open_run_storage(st.uri, namespace=namespace, run=name, endpoint_url=st.endpoint_url)

    # ---- create ------------------------------------------------------------------------------
    def create(self, body: dict[str, Any], namespace: str, adopt: Callable[[dict], None],
               logger: logging.Logger) -> dict[str, Any]:
        """Validate, check storage, create the children. Returns the status patch.

        Raises:
            StorageError: storage not reachable (the caller retries later; no pod was created).
        """
        name = body["metadata"]["name"]
        try:
            run = self.parse(body)
            reference_order = self.reference_order(run, namespace)  # refused before any child when missing
            # the pods as the API server would store them (pod template overlay merged): refused before any child
            training_job = children.training_job(run, namespace)
            self.kube.dry_run_job(training_job, namespace)
        except (SpecError, InvalidManifest) as exc:
            msg = ("; ".join(f"{i.path}: {i.message}" for i in exc.issues) if isinstance(exc, SpecError)
                   else f"spec.cluster.podTemplate: the training Job is invalid: {exc}")
            logger.error("[run=%s] invalid spec: %s", name, msg)
            self.post_event(body, "Warning", "InvalidSpec", msg)
            return {"phase": "Failed", "message": f"invalid spec: {msg}", "conditions": [
                {"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": msg,
                 "lastTransitionTime": _iso(time.time())}]}
        storage = self.storage(run, namespace)
        check = getattr(storage, "check", None)
        if check is not None:
            check()  # before any GPU is requested
        self.memory.setdefault((namespace, name), RunMemory()).reference_order = reference_order
        status, actions = reconcile(run.spec, RunStatus(), Observations(time=time.time(), metrics_error="starting",
                                                                        reference_order=reference_order), run=name)
        status.observed_generation = (body.get("metadata") or {}).get("generation")  # what the pods are made of
        doc = next(a.document for a in actions if isinstance(a, WriteControl))
        # the effective spec (default storage filled in) is what the pods read
        spec_yaml = yaml.safe_dump({"apiVersion": body["apiVersion"], "kind": body["kind"],
                                    "metadata": {"name": name, "namespace": namespace},
                                    "spec": run.spec.model_dump(mode="json", by_alias=True, exclude_none=True)},
                                   sort_keys=False)
        rendezvous = [children.rendezvous_service(run)] if children.multi_node(run) else []
        for child in (children.control_configmap(run, doc, spec_yaml), children.metrics_service(run), *rendezvous,
                      training_job):
            adopt(child)
            created = self.kube.create(child, namespace)
            logger.info("[run=%s] %s %s %s", name, child["kind"], child["metadata"]["name"],
                        "created" if created else "already exists")
        self._apply_events(body, actions)
        return self.status_patch(body, status)

    # ---- tick --------------------------------------------------------------------------------
    def tick(self, body: dict[str, Any], namespace: str, adopt: Callable[[dict], None],
             logger: logging.Logger) -> dict[str, Any] | None:
        """One poll of one run. Returns the status patch, or None when there is nothing to do."""
        name = body["metadata"]["name"]
        raw = (body.get("status") or {}).get(STATUS_KEY)
        if raw is None:
            return None  # not created yet (or invalid: create set phase Failed without a status)
        status = RunStatus.model_validate(raw)
        if status.phase in ("Succeeded", "Failed"):
            return None
        mem = self.memory.setdefault((namespace, name), RunMemory())
        now = time.time()
        if mem.last_poll is not None and now - mem.last_poll < self.config.timer_interval - TICK_SLACK:
            return None  # kopf's timer fires every TIMER_TICK seconds; a run is polled every timerInterval
        run = self._effective_run(body, namespace, status, mem, logger)
        window = (now - mem.last_poll + 2 * self.config.timer_interval) if mem.last_poll else 600.0
        obs = Observations(time=now)
        if status.task_order is None and run.spec.order == "easiest-first":  # read once per run, not every tick
            if mem.reference_order is None:
                mem.reference_order = self.reference_order(run, namespace)
            obs.reference_order = mem.reference_order
        point_times: dict[str, dict[int, float]] = {}
        try:
            snap = self.prometheus.snapshot(name, namespace, window)
            if snap is None:
                obs.metrics_error = "no trainer series in Prometheus yet"
            elif now - snap.newest_sample > self.config.stale_after:
                obs.metrics_error = (f"stale: the newest trainer sample is {now - snap.newest_sample:.0f}s old "
                                     f"(limit {self.config.stale_after:.0f}s); no decision on stale data")
            else:
                obs.metrics = snap.trainer
                point_times = snap.point_times
        except PrometheusError as exc:
            obs.metrics_error = f"Prometheus unreachable: {exc}"
        self._observe_trainer(run, namespace, obs)
        storage = self.storage(run, namespace)
        if run.spec.resolved_strategy.teacher:  # the teacher's checkpoints and soft labels live in its own folder
            storage = self.storage(run, namespace, name=run.spec.teacher_run)
            if not status.tasks or any(ts.phase == "Distilling" and not ts.inference_attempts
                                       for ts in status.tasks.values()):
                # only until every teacher inference is launched: not one S3 read per timer tick
                obs.teacher_steps = teacher_steps(storage, [t.name for t in run.spec.tasks])
        self._observe_inference(run, namespace, status, storage, obs, logger)
        new, actions = reconcile(run.spec, status, obs, run=name, ack_timeout_seconds=run.spec.metrics.ack_timeout_seconds)
        mem.last_poll = now
        self._measure(status, new, point_times, now, logger, name)
        self._apply(body, run, namespace, new, actions, adopt, logger)
        if new.phase in ("Succeeded", "Failed", "Queued"):
            # no series of a finished run (stale gauges keep alerts firing), none while queued (nothing is stale)
            self.metrics.forget_run(namespace, name)
        else:
            for task, ts in new.tasks.items():
                self.metrics.set_task_phase(namespace, name, task, ts.phase)
            self.metrics.metrics_available.labels(namespace, name).set(1.0 if obs.metrics is not None else 0.0)
            waiting = (new.control.generation if new.control else 0) > new.acknowledged_generation
            self.metrics.signal_pending.labels(namespace, name).set(
                now - new.signal_sent_at if waiting and new.signal_sent_at else 0.0)
        self.metrics.reconciles.labels("ok").inc()
        return self.status_patch(body, new)

    def _observe_trainer(self, run: AsyncMTLRun, namespace: str, obs: Observations) -> None:
        job = self.kube.get_job(children.train_name(run.name), namespace)
        if job is None:
            obs.trainer_state, obs.trainer_message = "Failed", "the training Job is gone"
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
        pods = self.kube.list_pods(namespace, {children.RUN_LABEL: run.name, children.ROLE_LABEL: "train"})
        for pod in pods:
            reason, message = pod_problem(pod)
            if reason:
                obs.trainer_blocked_reason, obs.trainer_blocked_message = reason, message
                return
        if not pods:  # the Job controller could not create the pod: quota, admission, limits
            failed = [e for e in self.kube.events_for("Job", children.train_name(run.name), namespace)
                      if e.get("reason") == "FailedCreate"]
            if failed:
                msg = failed[-1].get("message") or ""
                obs.trainer_blocked_reason = "QuotaExceeded" if "exceeded quota" in msg else "FailedCreate"
                obs.trainer_blocked_message = msg

    def _observe_inference(self, run: AsyncMTLRun, namespace: str, status: RunStatus, storage: RunStorage,
                           obs: Observations, logger: logging.Logger) -> None:
        for task, ts in status.tasks.items():
            if ts.phase != "Distilling" or ts.best_step is None:
                continue
            job = self.kube.get_job(children.inference_name(run.name, task, ts.best_step, ts.inference_attempts),
                                    namespace)
            if job is None:
                continue
            st = job.get("status") or {}
            completions = (job.get("spec") or {}).get("completions") or run.spec.distillation.shards
            self.metrics.set_inference(namespace, run.name, task, completions, st)
            failed = next((c for c in st.get("conditions") or []
                           if c.get("type") == "Failed" and c.get("status") == "True"), None)
            if failed is not None:
                obs.inference[task] = InferenceObservation(checkpoint_step=ts.best_step, state="Failed",
                                                           message=f"{failed.get('reason')}: {failed.get('message')}")
            elif self._inference_stuck(job, run, time.time()):
                obs.inference[task] = InferenceObservation(
                    checkpoint_step=ts.best_step, state="Failed",
                    message=(f"Pending: no inference pod ran within distillation.pendingTimeoutSeconds "
                             f"({run.spec.distillation.pending_timeout_seconds:.0f} s): queued, suspended, "
                             f"unschedulable or over quota (a paused trainer may hold the GPUs it needs)"))
            elif (st.get("succeeded") or 0) >= completions:
                try:
                    uri = write_manifest(storage, task, ts.best_step, completions)
                    obs.inference[task] = InferenceObservation(checkpoint_step=ts.best_step, state="Succeeded", uri=uri)
                except StorageError as exc:
                    logger.warning("[run=%s] task %s: inference Job done but shards do not check out: %s", run.name, task, exc)
                    obs.inference[task] = InferenceObservation(checkpoint_step=ts.best_step, state="Failed", message=str(exc))
            else:
                obs.inference[task] = InferenceObservation(checkpoint_step=ts.best_step, state="Running")

    @staticmethod
    def _inference_stuck(job: dict[str, Any], run: AsyncMTLRun, now: float) -> bool:
        """No pod of the inference Job has run (none active, ready, succeeded or failed) for longer than
        `distillation.pendingTimeoutSeconds` since the Job was created."""
        st = job.get("status") or {}
        if any(st.get(k) for k in ("active", "ready", "succeeded", "failed")):
            return False
        created = (job.get("metadata") or {}).get("creationTimestamp")
        if not created:
            return False
        age = now - _parse_time(created)
        return age > run.spec.distillation.pending_timeout_seconds

    def _measure(self, old: RunStatus, new: RunStatus, point_times: dict[str, dict[int, float]], now: float,
                 logger: logging.Logger, name: str) -> None:
        if new.acknowledged_generation > old.acknowledged_generation and old.signal_sent_at is not None:
            self.metrics.decision_to_ack.observe(max(0.0, now - old.signal_sent_at))
        old_gen = old.control.generation if old.control else 0
        for sig in (new.control.signals if new.control else []):
            if sig.generation <= old_gen or not isinstance(sig, ConvergedSignal):
                continue
            step = new.tasks[sig.task].converged_at_step
            seen = point_times.get(sig.task, {}).get(step) if step is not None else None
            if seen is not None:
                self.metrics.sample_to_decision.observe(max(0.0, now - seen))
                logger.info("[run=%s] task %s converged: decided %.1fs after its deciding point (step %s) became "
                            "visible in Prometheus (timer interval %.1fs)", name, sig.task, now - seen, step,
                            self.config.timer_interval)

    # ---- actions -----------------------------------------------------------------------------
    def _apply(self, body: dict[str, Any], run: AsyncMTLRun, namespace: str, status: RunStatus, actions: list,
               adopt: Callable[[dict], None], logger: logging.Logger) -> None:
        for a in actions:
            if isinstance(a, WriteControl):
                self.kube.patch_configmap_data(children.control_name(run.name), namespace,
                                               {"control.json": a.document.to_json()})
                logger.info("[run=%s] control generation %d written", run.name, a.document.generation)
            elif isinstance(a, LaunchInference):
                job = children.inference_job(run, namespace, a.task, a.checkpoint_step, a.shards, a.attempt, a.source_run)
                adopt(job)
                created = self.kube.create(job, namespace)
                logger.info("[run=%s] inference Job %s %s", run.name, job["metadata"]["name"],
                            "created" if created else "already exists")
            elif isinstance(a, EmitEvent):
                self.post_event(body, a.type, a.reason, a.message)
                logger.info("[run=%s] %s: %s", run.name, a.reason, a.message)
            elif isinstance(a, (Complete, Fail)):
                logger.info("[run=%s] %s: %s", run.name, status.phase, status.message)
                if isinstance(a, Complete):  # spec.storage.keepCheckpoints (asyncmtl.retention)
                    try:
                        kept = retain_after_run(self.storage(run, namespace), [t.name for t in run.spec.tasks],
                                                run.spec.storage.keep_checkpoints)
                        logger.info("[run=%s] checkpoints kept: %s; deleted: %s", run.name, kept.kept, kept.deleted)
                    except StorageError as exc:  # the run has Succeeded; its checkpoints just stay
                        logger.warning("[run=%s] checkpoint retention failed: %s", run.name, exc)

    def _apply_events(self, body: dict[str, Any], actions: list) -> None:
        for a in actions:
            if isinstance(a, EmitEvent):
                self.post_event(body, a.type, a.reason, a.message)

    def _effective_run(self, body: dict[str, Any], namespace: str, status: RunStatus, mem: RunMemory,
                       logger: logging.Logger) -> AsyncMTLRun:
        """The run as its pods know it. A spec edited after the run started reaches no pod (the trainer
        and the inference Jobs read the spec once, from the control ConfigMap), so decisions keep using
        that spec, `observedGeneration` keeps the generation it came from, and a Warning Event says so."""
        generation = (body.get("metadata") or {}).get("generation")
        if status.observed_generation is None or generation == status.observed_generation:
            return self.parse(body)
        name = body["metadata"]["name"]
        if mem.warned_generation != generation:
            mem.warned_generation = generation
            msg = (f"spec edited (generation {generation}) after the run started from generation "
                   f"{status.observed_generation}: running pods do not see spec changes, so the run goes on with the "
                   f"spec it started with; delete the run and apply it again to use the new spec")
            logger.warning("[run=%s] %s", name, msg)
            self.post_event(body, "Warning", "SpecChangeIgnored", msg)
        if mem.started_spec is None:  # read once: the ConfigMap's spec never changes
            data = self.kube.read_configmap_data(children.control_name(name), namespace) or {}
            started = yaml.safe_load(data.get(children.SPEC_KEY) or "null")
            if not isinstance(started, dict):
                return self.parse(body)  # no copy of the started spec (deleted ConfigMap): the best we have
            mem.started_spec = started["spec"]
        return self.parse({**body, "spec": mem.started_spec})

    # ---- status ------------------------------------------------------------------------------
    @staticmethod
    def status_patch(body: dict[str, Any], status: RunStatus) -> dict[str, Any]:
        """The user-facing status fields plus the full run status under `asyncmtl`."""
        tasks = {n: {"phase": t.phase, "bestStep": t.best_step if t.best_step is not None else t.track.best_step,
                     "bestValue": t.best_value if t.best_value is not None else t.track.best_value,
                     "convergedAtStep": t.converged_at_step, "softLabelsUri": t.soft_labels_uri,
                     "lastStep": t.track.last_step, "lastValue": t.track.last_value}
                 for n, t in status.tasks.items()}
        # the generation the run's pods were made from (edits after the start are not applied)
        observed = status.observed_generation or (body.get("metadata") or {}).get("generation")
        return {
            "phase": status.phase,
            "message": status.message,
            "converged": f"{status.converged_count()}/{len(status.tasks)}",
            "step": status.step,
            "observedGeneration": observed,
            "tasks": tasks,
            # metav1.Condition: observedGeneration says which spec the condition speaks of
            "conditions": [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
                            "lastTransitionTime": _iso(c.last_transition_time), "observedGeneration": observed}
                           for c in status.conditions],
            STATUS_KEY: status.model_dump(mode="json", by_alias=True),
        }


MERGED_MAPS = ("labels", "env")  # the run's entries are added to the defaults', not put in their place
# podTemplate too: a run's overlay is merged over the chart's (pod_template.merge_under)


def _with_defaults(cluster: ClusterSpec, defaults: dict[str, Any]) -> ClusterSpec:
    """`cluster` with every field the run did not set taken from `defaults` (spec.cluster's shape);
    `labels` and `env` are merged key by key and `podTemplate` as pod templates merge (the run's value
    wins), so a run's own labels keep the chart's Kueue queue label (`kueue.x-k8s.io/queue-name`) and
    the Job stays under its quota.

    Raises:
        SpecError: the defaults themselves are invalid (an operator configuration error).
    """
    given = cluster.model_dump(by_alias=True, exclude_unset=True)
    merged = {**defaults, **given}
    for key in MERGED_MAPS:
        if isinstance(defaults.get(key), dict) and key in given:
            merged[key] = {**defaults[key], **given[key]}
    if isinstance(defaults.get("podTemplate"), dict) and given.get("podTemplate"):
        merged["podTemplate"] = merge_under(defaults["podTemplate"], given["podTemplate"])  # the run's win
    try:
        return ClusterSpec.model_validate(merged)
    except ValidationError as exc:
        raise SpecError(issues_from_validation_error(exc, ("ASYNCMTL_TRAINER_DEFAULTS",))) from None


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


def _parse_time(text: str) -> float:
    """Seconds since the epoch of a Kubernetes (RFC 3339) timestamp, e.g. `2026-11-22T04:38:27Z`."""
    import datetime

    t = datetime.datetime.fromisoformat(text)
    return (t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)).timestamp()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
