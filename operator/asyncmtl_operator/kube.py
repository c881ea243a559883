"""The Kubernetes API, as the operator uses it (kubernetes Python client, synchronous).

Configuration: in-cluster service account, else `$KUBECONFIG` / `~/.kube/config`.
Creating a child that already exists (HTTP 409) counts as success: child names are
deterministic, so a retried or restarted operator never duplicates one.
The API calls below are the operator's only ones besides kopf's own (`handlers.KOPF_PERMISSIONS`);
the Helm chart's RBAC grants exactly their union, which tests/unit/test_rbac.py derives from
this file's source.
"""
from __future__ import annotations

import base64
import logging
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


class InvalidManifest(ValueError):
    """The API server (or the client's own model check) refused a manifest: the message names the field."""


class Refused(RuntimeError):
    """The API server refused a write: forbidden by RBAC or admission (403: a missing permission, a quota,
    OwnerReferencesPermissionEnforcement), or invalid (422). `status` is the HTTP status, `reason` the
    API's reason (Forbidden, Invalid), the message the API server's own words."""

    def __init__(self, status: int, reason: str, message: str, what: str) -> None:
        self.status, self.reason = status, reason
        super().__init__(f"{what}: {message}")


def _refused(exc: ApiException, what: str) -> Refused:
    import json

    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    return Refused(exc.status, body.get("reason") or str(exc.reason), body.get("message") or str(exc.body), what)


class Kube:
    """Thin wrapper over the core/v1 and batch/v1 APIs, returning plain dicts."""

    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        if api_client is None:
            import os

            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                # $KUBECONFIG read now: the client library reads it only once, when imported
                kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            api_client = kubernetes.client.ApiClient()
        self.api = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    def create(self, obj: dict[str, Any], namespace: str) -> bool:
        """Create a ConfigMap, Service or Job. Returns False if it already existed.

        Raises:
            Refused: forbidden (403) or invalid (422), in the API server's words.
        """
        kind = obj["kind"]
        fn = {"ConfigMap": self.core.create_namespaced_config_map, "Service": self.core.create_namespaced_service,
              "Job": self.batch.create_namespaced_job}[kind]
        try:
            fn(namespace, obj)
            return True
        except ApiException as exc:
            if exc.status == 409:
                self._check_owner(obj, namespace)
                return False
            if exc.status in (403, 422):
                raise _refused(exc, f"creating {kind} {namespace}/{obj['metadata']['name']}") from None
            raise

    def _check_owner(self, obj: dict[str, Any], namespace: str) -> None:
        """An object of `obj`'s name exists: it counts as created only when it has `obj`'s owner (the same
        run instance, by UID). Otherwise it is a deleted run's child the garbage collector has not removed
        yet, or somebody else's.

        Raises:
            Refused: (409, AlreadyExists) naming the existing object's owner; the caller retries later.
        """
        owners = {o.get("uid") for o in (obj.get("metadata") or {}).get("ownerReferences") or []}
        if not owners:
            return
        kind, name = obj["kind"], obj["metadata"]["name"]
        read = {"ConfigMap": self.core.read_namespaced_config_map, "Service": self.core.read_namespaced_service,
                "Job": self.batch.read_namespaced_job}[kind]
        try:
            existing = self._plain(read(name, namespace))
        except ApiException as exc:
            if exc.status == 404:  # gone in between (garbage-collected): the next try creates it
                raise Refused(409, "AlreadyExists", "it existed and was then deleted; creating it again",
                              f"creating {kind} {namespace}/{name}") from None
            raise
        theirs = (existing.get("metadata") or {}).get("ownerReferences") or []
        if not owners & {o.get("uid") for o in theirs}:
            held_by = ", ".join(f"{o.get('kind')} {o.get('name')} (uid {o.get('uid')})" for o in theirs) or "no owner"
            deleting = " and is being deleted" if (existing.get("metadata") or {}).get("deletionTimestamp") else ""
            raise Refused(409, "AlreadyExists", f"it exists{deleting}, owned by {held_by}, not by this run",
                          f"creating {kind} {namespace}/{name}")

    def dry_run_job(self, obj: dict[str, Any], namespace: str) -> None:
        """A server-side dry run of creating the Job `obj` (`dryRun=All`: admitted and validated against
        the Kubernetes schema, never stored; `fieldValidation=Strict`: an unknown field is an error, not
        silently dropped), so a bad pod template is refused before any child exists.

        Raises:
            InvalidManifest: refused as invalid (422/400), or by the client's model of a Job.
        """
        import pydantic

        try:
            self.batch.create_namespaced_job(namespace, obj, dry_run="All", field_validation="Strict")
        except pydantic.ValidationError as exc:
            raise InvalidManifest("; ".join(
                f"{'.'.join(str(x) for x in e['loc'][1:])}: {e['msg']}" for e in exc.errors())) from None
        except ApiException as exc:
            if exc.status in (400, 422):
                import json

                try:
                    message = json.loads(exc.body or "{}").get("message") or exc.reason
                except ValueError:
                    message = exc.body or exc.reason
                raise InvalidManifest(message) from None
            raise

    def patch_configmap_data(self, name: str, namespace: str, data: dict[str, str]) -> bool:
        """Merge `data` into a ConfigMap. Returns False when there is no such ConfigMap."""
        try:
            self.core.patch_namespaced_config_map(name, namespace, {"data": data})
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def read_configmap_data(self, name: str, namespace: str) -> dict[str, str] | None:
        """A ConfigMap's `data` (None if there is no such ConfigMap)."""
        try:
            return self._plain(self.core.read_namespaced_config_map(name, namespace)).get("data") or {}
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_job(self, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.batch.read_namespaced_job(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_job(self, name: str, namespace: str) -> None:
        """Delete a Job and, in the background, its pods (absent already: nothing to do)."""
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Pods with all `labels` (filtered here too, so a server ignoring selectors cannot mislead)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        items = self._plain(self.core.list_namespaced_pod(namespace, label_selector=selector)).get("items", [])
        return [p for p in items if all((p.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())]

    def events_for(self, kind: str, name: str, namespace: str) -> list[dict[str, Any]]:
        """Events about one object, oldest first (filtered here: a server may ignore field selectors)."""
        sel = f"involvedObject.kind={kind},involvedObject.name={name}"
        items = self._plain(self.core.list_namespaced_event(namespace, field_selector=sel)).get("items", [])
        items = [e for e in items if (e.get("involvedObject") or {}).get("name") == name
                 and (e.get("involvedObject") or {}).get("kind") == kind]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def read_secret(self, name: str, namespace: str) -> dict[str, str]:
        """The decoded data of a Secret.

        Raises:
            asyncmtl.storage.StorageError: there is no such Secret (the run's storage credentials are missing).
            Refused: reading it is forbidden.
        """
        from asyncmtl.storage import StorageError

        try:
            raw = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise StorageError(f"spec.storage.credentialsSecret: no Secret {name!r} in namespace {namespace}") from None
            if exc.status == 403:
                raise _refused(exc, f"reading Secret {namespace}/{name}") from None
            raise
        data = self._plain(raw).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}
