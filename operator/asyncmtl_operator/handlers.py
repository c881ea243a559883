"""kopf handlers for AsyncMTLRun (run: `kopf run -m asyncmtl_operator.handlers --all-namespaces`).

- startup: settings (finalizer and progress annotations under asyncmtl.dev, no namespace
  scanning), the Kubernetes client, the operator's metrics endpoint.
- create: validate (cross-field rules -> phase Failed with the field path, no pod), check storage,
  create the control ConfigMap, metrics Service and training Job, owned by the run.
- timer (every $ASYNCMTL_TIMER_INTERVAL seconds, read at startup): one reconcile poll (see controller.py).
- delete: children go with their owner (garbage collection); stored artifacts are kept unless
  `spec.storage.cleanupOnDelete` is true.
Docs: kopf.readthedocs.io (handlers, timers, settings, kopf.adopt, kopf.event).
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Any

import kopf

from asyncmtl.artifacts import delete_run_artifacts
from asyncmtl.crd import GROUP, PLURAL, VERSION
from asyncmtl.storage import StorageError
from asyncmtl_operator.children import RUN_LABEL
from asyncmtl_operator.controller import Controller, OperatorConfig
from asyncmtl_operator.kube import Kube, Refused
from asyncmtl_operator.operator_metrics import OperatorMetrics

# kopf fixes a timer's interval when this module is imported, before any setting is read: the timer
# fires every TIMER_TICK seconds and the controller polls each run every $ASYNCMTL_TIMER_INTERVAL seconds
# (OperatorConfig, read at startup)
TIMER_TICK = 1.0

# What kopf itself does with the API for these handlers (kopf docs, "Deployment: RBAC"):
# watch and list the runs, patch them (finalizers, progress annotations), patch their status
# (the status subresource), and post Events. (api group, resource) -> verbs.
KOPF_PERMISSIONS: dict[tuple[str, str], set[str]] = {
    (GROUP, PLURAL): {"get", "list", "watch", "patch"},
    (GROUP, f"{PLURAL}/status"): {"get", "patch"},
    ("", "events"): {"create"},
    ("batch", "jobs"): {"list", "watch"},  # the runs' Jobs, watched into an index (`run_jobs`)
}
# Children are adopted (kopf.adopt) with `blockOwnerDeletion: true`; where the API server enforces owner
# references (the OwnerReferencesPermissionEnforcement admission plugin, as on OpenShift), setting it needs
# `update` on the owner's finalizers subresource, else every child is refused with 403.
OWNER_REFERENCE_PERMISSIONS: dict[tuple[str, str], set[str]] = {
    (GROUP, f"{PLURAL}/finalizers"): {"update"},
}
# With --peering (an opt-in standby), kopf also reads and updates its peering objects.
KOPF_PEERING_PERMISSIONS: dict[tuple[str, str], set[str]] = {
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
}


def _post_event(body: dict, type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1024])


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else $KUBECONFIG (read at login time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.scanning.disabled = True  # -n NAMESPACE works without listing namespaces
    settings.posting.level = logging.INFO
    config = OperatorConfig.from_env()
    metrics = OperatorMetrics()
    if config.metrics_port:
        port = metrics.serve(config.metrics_port)
        logger.info("operator metrics on port %d", port)
    memo.controller = Controller(config=config, kube=Kube(), metrics=metrics, post_event=_post_event)
    logger.info("AsyncMTL operator: Prometheus at %s, each run polled every %.1fs", config.prometheus_url,
                config.timer_interval)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    controller = memo.get("controller")
    if controller is not None:
        controller.metrics.close()


def _not_yet(body: kopf.Body, patch: kopf.Patch, reason: str, message: str) -> None:
    """What a run that cannot start yet shows: phase Pending, Ready=False with the reason, a Warning Event
    (kopf applies the handler's patch even when the handler asks to be retried)."""
    patch.status["phase"] = "Pending"
    patch.status["message"] = message
    patch.status["conditions"] = [{"type": "Ready", "status": "False", "reason": reason, "message": message[:1024],
                                   "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    _post_event(dict(body), "Warning", reason, message)


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_create(body: kopf.Body, namespace: str, memo: kopf.Memo, patch: kopf.Patch, logger: logging.Logger,
              **_: Any) -> None:
    controller: Controller = memo.controller
    try:
        status = controller.create(dict(body), namespace, lambda child: kopf.adopt(child, owner=body), logger)
    except StorageError as exc:
        controller.storage_failed(namespace, body["metadata"]["name"])
        _not_yet(body, patch, "StorageUnavailable", f"storage not usable, no pod started: {exc}")
        controller.metrics.errors.labels("storage").inc()
        raise kopf.TemporaryError(f"storage not usable, no pod started: {exc}", delay=30) from exc
    except Refused as exc:  # RBAC, admission, quota: retried until an admin fixes it
        _not_yet(body, patch, exc.reason or "Forbidden", f"the API server refused a child of this run: {exc}")
        controller.metrics.errors.labels("refused").inc()
        raise kopf.TemporaryError(f"refused: {exc}", delay=30) from exc
    patch.status.update(status)


@kopf.index("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
def run_jobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The runs' Jobs (training and inference), kept current by a watch: an idle run's poll reads its Jobs from
    here instead of the API (controller-runtime's informer cache, in kopf's terms)."""
    return {(namespace, name): copy.deepcopy(dict(body))}


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_TICK, initial_delay=TIMER_TICK)
def on_timer(body: kopf.Body, namespace: str, memo: kopf.Memo, patch: kopf.Patch, logger: logging.Logger,
             run_jobs: kopf.Index, **_: Any) -> None:
    controller: Controller = memo.controller
    try:
        status = controller.tick(dict(body), namespace, lambda child: kopf.adopt(child, owner=body), logger,
                                 jobs=run_jobs)
    except StorageError as exc:
        controller.storage_failed(namespace, body["metadata"]["name"])
        controller.metrics.errors.labels("storage").inc()
        raise kopf.TemporaryError(f"storage: {exc}", delay=controller.config.timer_interval) from exc
    except Refused as exc:  # e.g. an inference Job over quota or forbidden: said once per retry, retried
        controller.metrics.errors.labels("refused").inc()
        _post_event(dict(body), "Warning", exc.reason or "Forbidden", f"the API server refused a child of this run: {exc}")
        raise kopf.TemporaryError(f"refused: {exc}", delay=max(10.0, controller.config.timer_interval)) from exc
    except Exception:
        controller.metrics.errors.labels("unexpected").inc()
        raise
    if status is not None:
        patch.status.update(status)


@kopf.on.delete(GROUP, VERSION, PLURAL, when=lambda spec, **_: bool((spec.get("storage") or {}).get("cleanupOnDelete")))
def on_delete(body: kopf.Body, namespace: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    controller: Controller = memo.controller
    run = controller.parse(dict(body))
    storage = controller.storage(run, namespace)
    delete_run_artifacts(storage)
    logger.info("[run=%s] stored artifacts deleted (storage.cleanupOnDelete)", run.name)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget_deleted(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A deleted run's operator series go (optional: no finalizer is added for this)."""
    controller: Controller = memo.controller
    controller.forget(namespace, name)
