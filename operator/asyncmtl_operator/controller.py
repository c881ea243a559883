"""One run on a cluster: create its children, then on every timer tick poll the run policy.

The policy (observations, soft-label checks, decisions, actions, report and retention) is the
driver's (`asyncmtl.driver.RunDriver`, shared with the local runtime); what it sees and does on a
cluster goes through `run_port.KubeRunPort` (Prometheus, the Kubernetes API). This module parses
runs with the operator's defaults, opens their storage, creates their children, keeps per-run
memory and turns the run status into the resource's status. The status patch is returned to
kopf, which applies it after the handler; actions are idempotent (deterministic names, the
control document's generations), so a tick that fails half-way is simply repeated.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import yaml

from pydantic import ValidationError

from asyncmtl.artifacts import RunOwner, checkpoint_steps, delete_run_artifacts, read_run_owner, write_run_owner
from asyncmtl.control import ConvergedSignal
from asyncmtl.core.status import RunStatus
from asyncmtl.driver import RunDriver
from asyncmtl.logs import run_logger
from asyncmtl.spec import AsyncMTLRun, ClusterSpec, SpecError, SpecIssue, issues_from_validation_error, parse_run
from asyncmtl.storage import RunStorage
from asyncmtl.storage_factory import open_run_storage
from asyncmtl_operator import children
from asyncmtl_operator.kube import InvalidManifest, Kube
from asyncmtl_operator.operator_metrics import OperatorMetrics
from asyncmtl_operator.pod_template import merge_under
from asyncmtl_operator.prometheus import PrometheusClient
from asyncmtl_operator.run_port import KubeRunPort

STATUS_KEY = "operatorState"  # the operator's full RunStatus record (signals, acks, history, task order)


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
    field a run does not set (image, resources, nodeSelector, tolerations, priorityClassName, labels);
    ASYNCMTL_ALLOWED_SERVICE_ACCOUNTS: comma-separated ServiceAccounts a run may name in
    spec.cluster.serviceAccountName, besides the defaults' own;
    ASYNCMTL_POD_CHECK_INTERVAL: seconds between listings of a trainer's pods while none of them is ready (to
    say why: image pulls, scheduling, quota; default 30), so an idle run costs the API almost nothing.
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
    allowed_service_accounts: list[str] = field(default_factory=list)
    pod_check_interval: float = 30.0

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
                   trainer_defaults=json.loads(os.environ.get("ASYNCMTL_TRAINER_DEFAULTS") or "{}"),
                   allowed_service_accounts=[n.strip() for n in os.environ.get(
                       "ASYNCMTL_ALLOWED_SERVICE_ACCOUNTS", "").split(",") if n.strip()],
                   pod_check_interval=float(os.environ.get("ASYNCMTL_POD_CHECK_INTERVAL", cls.pod_check_interval)))


@dataclass
class RunMemory:
    """Per-run, in-memory only: when it was last polled (bounds the Prometheus window), its driver."""

    last_poll: float | None = None
    warned_generation: int | None = None  # the spec edit already reported as not applied
    started_spec: dict[str, Any] | None = None  # the spec the pods read (from the control ConfigMap), once edited
    driver: RunDriver | None = None  # the run policy (asyncmtl.driver), with what it has read of other runs
    pods_checked_at: float | None = None  # when the trainer's pods were last listed (why is it not running?)
    blocked: tuple[str, str] = ("", "")  # what that listing found: (reason, message)


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
        self._check_service_account(run, where)
        if self.config.trainer_defaults:
            defaults = self.config.trainer_defaults
            if run.spec.training.device == "cpu":  # a CPU run asks for no GPU unless it says so itself
                defaults = _without_gpus(defaults)
            run.spec.cluster = _with_defaults(run.spec.cluster, defaults)
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

    def _check_service_account(self, run: AsyncMTLRun, where: str) -> None:
        """`spec.cluster.serviceAccountName` may name only the chart's workload ServiceAccount or one the operator
        allows (ASYNCMTL_ALLOWED_SERVICE_ACCOUNTS): the operator creates the pods with its own rights, so
        otherwise whoever may create a run could run pods as any ServiceAccount of the namespace.

        Raises:
            SpecError: at spec.cluster.serviceAccountName.
        """
        name = run.spec.cluster.service_account_name
        allowed = set(self.config.allowed_service_accounts)
        if self.config.trainer_defaults.get("serviceAccountName"):
            allowed.add(self.config.trainer_defaults["serviceAccountName"])
        if name and name not in allowed:
            raise SpecError([SpecIssue(path="spec.cluster.serviceAccountName", file=where, message=(
                f"{name!r} is not a ServiceAccount this operator runs pods as (allowed: "
                f"{', '.join(sorted(allowed)) or 'none'}; an admin adds more with the chart's trainer.allowedServiceAccounts)"))])

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

    def storage_failed(self, namespace: str, name: str) -> None:
        """A storage call of run `namespace/name` failed: drop its storages (and its driver, which holds them),
        so the next attempt reads the credentials Secret again and makes a new client (a Secret fixed after a
        failure is used without restarting the operator)."""
        self.storages = {k: v for k, v in self.storages.items() if k[:2] != (namespace, name)}
        mem = self.memory.get((namespace, name))
        if mem is not None:
            mem.driver = None

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

    def _driver(self, run: AsyncMTLRun, namespace: str) -> RunDriver:
        """The run policy of one run, its storage and other runs' under its settings (`Controller.storage`)."""
        return RunDriver(spec=run.spec, name=run.name, storage=self.storage(run, namespace),
                         storage_of=lambda other: self.storage(run, namespace, name=other),
                         where=f"{namespace}/{run.name}", log=run_logger("asyncmtl.operator", run.name))

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
            driver = self._driver(run, namespace)
            driver.prepare(RunStatus())  # easiest-first's reference, BAM's teacher: refused before any child
            # the pods as the API server would store them (pod template overlay merged): refused before any child
            training_job = children.training_job(run, namespace)
            self.kube.dry_run_job(training_job, namespace)
        except (SpecError, InvalidManifest) as exc:
            msg = ("; ".join(f"{i.path}: {i.message}" for i in exc.issues) if isinstance(exc, SpecError)
                   else f"spec.cluster.podTemplate: the training Job is invalid: {exc}")
            logger.error("[run=%s] invalid spec: %s", name, msg)
            self.post_event(body, "Warning", "InvalidSpec", msg)
            now = _iso(time.time())
            observed = (body.get("metadata") or {}).get("generation")
            # terminal, as the core's own failures: `kubectl wait --for=condition=Failed` returns
            return {"phase": "Failed", "message": f"invalid spec: {msg}", "observedGeneration": observed, "conditions": [
                {"type": t, "status": v, "reason": "InvalidSpec", "message": msg, "lastTransitionTime": now,
                 "observedGeneration": observed} for t, v in (("Ready", "False"), ("Failed", "True"))]}
        check = getattr(driver.storage, "check", None)
        if check is not None:
            check()  # before any GPU is requested
        self._claim_storage(body, driver.storage, logger)
        self.memory.setdefault((namespace, name), RunMemory()).driver = driver
        port = KubeRunPort(self, body, run, namespace, adopt, logger, creating=True)
        status = driver.start(port, time.time())
        status.observed_generation = (body.get("metadata") or {}).get("generation")  # what the pods are made of
        assert port.control_document is not None  # generation 0, always written by a new run's first decision
        rendezvous = [children.rendezvous_service(run)] if children.multi_node(run) else []
        for child in (self.control_configmap(body, run, namespace, port.control_document), children.metrics_service(run),
                      *rendezvous, training_job):
            adopt(child)
            created = self.kube.create(child, namespace)
            logger.info("[run=%s] %s %s %s", name, child["kind"], child["metadata"]["name"],
                        "created" if created else "already exists")
        return self.status_patch(body, status)

    @staticmethod
    def control_configmap(body: dict[str, Any], run: AsyncMTLRun, namespace: str, document) -> dict[str, Any]:
        """The control ConfigMap of `run`: the control document and the effective spec (the operator's
        default storage filled in), which is what the pods read."""
        spec_yaml = yaml.safe_dump({"apiVersion": body["apiVersion"], "kind": body["kind"],
                                    "metadata": {"name": run.name, "namespace": namespace},
                                    "spec": run.spec.model_dump(mode="json", by_alias=True, exclude_none=True)},
                                   sort_keys=False)
        return children.control_configmap(run, document, spec_yaml)

    def _claim_storage(self, body: dict[str, Any], storage: RunStorage, logger: logging.Logger) -> None:
        """Make the run's storage this run instance's (`run.json` holds its UID). A run deleted and applied
        again under the same name is a new run: its predecessor's artifacts (checkpoints, soft labels,
        reports, model) are removed, so its trainer, which always starts with --resume, starts anew instead
        of continuing the deleted run. The same UID (kopf retrying create) keeps everything.

        Raises:
            StorageError: the storage could not be read or written.
        """
        uid = (body.get("metadata") or {}).get("uid")
        if not uid:
            return
        owner = read_run_owner(storage)
        if owner is not None and owner.uid == uid:
            return
        stale = owner is not None or bool(checkpoint_steps(storage, complete=False))
        delete_run_artifacts(storage)
        write_run_owner(storage, RunOwner(uid=uid))
        if stale:
            msg = (f"{storage.uri()} held the artifacts of an earlier run named {body['metadata']['name']}"
                   f"{f' (uid {owner.uid})' if owner else ''}: removed, this run starts anew")
            logger.info("[run=%s] %s", body["metadata"]["name"], msg)
            self.post_event(body, "Normal", "PreviousRunReplaced", msg)

    # ---- tick --------------------------------------------------------------------------------
    def tick(self, body: dict[str, Any], namespace: str, adopt: Callable[[dict], None],
             logger: logging.Logger, jobs: Mapping[tuple[str, str], Any] | None = None) -> dict[str, Any] | None:
        """One poll of one run. Returns the status patch, or None when there is nothing to do.

        `jobs`: the runs' Jobs by (namespace, name) as a watch keeps them (kopf's index of `handlers.run_jobs`,
        each value an iterable of Job bodies); None reads them from the API."""
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
        if mem.driver is None:  # after an operator restart: references are read again, once
            mem.driver = self._driver(run, namespace)
        port = KubeRunPort(self, body, run, namespace, adopt, logger, memory=mem, jobs=jobs,
                           window=(now - mem.last_poll + 2 * self.config.timer_interval) if mem.last_poll else 600.0)
        result = mem.driver.step(port, status, now)
        new, obs = result.status, result.observations
        mem.last_poll = now
        self._measure(status, new, port.point_times, now, logger, name)
        if result.outcome is not None:
            logger.info("[run=%s] %s: %s", run.name, new.phase, new.message)
            mem.driver.finish(port, new)  # the report; checkpoints kept as storage.keepCheckpoints says
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
        patch = self.status_patch(body, new)
        if _merged(patch) == _merged({k: (body.get("status") or {}).get(k) for k in patch}):
            return None  # nothing changed: no PATCH (an idle run costs no write per poll)
        return patch

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
            # None left out: the API server drops nulls, so the stored status is what was sent (kopf warned of
            # "inconsistencies" at every patch, and an unchanged status compares equal)
            STATUS_KEY: status.model_dump(mode="json", by_alias=True, exclude_none=True),
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


def _merged(value: Any) -> Any:
    """`value` as the API server stores it after a JSON merge patch (RFC 7386): None removes a key, so
    keys whose value is None are left out, at every level."""
    if isinstance(value, dict):
        return {k: _merged(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_merged(v) for v in value]
    return value


def _without_gpus(defaults: dict[str, Any]) -> dict[str, Any]:
    """The trainer defaults less any `nvidia.com/gpu` in their resources (for a run with training.device: cpu)."""
    res = defaults.get("resources")
    if not isinstance(res, dict):
        return defaults
    return {**defaults, "resources": {k: {r: q for r, q in (v or {}).items() if r != "nvidia.com/gpu"}
                                      for k, v in res.items()}}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
