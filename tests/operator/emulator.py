"""kmock's KubernetesEmulator, with what the operator relies on from a real API server.

Added (small, each tested in test_emulator.py):
- `labelSelector` and `fieldSelector` on lists (equality-based: `k=v`, `k==v`, `k!=v`, `k`, `!k`;
  field paths such as `involvedObject.name`), which kmock ignores;
- server-set metadata: uid, resourceVersion (bumped on every write), creationTimestamp, generation
  (bumped when `spec` changes, and only then), metadata.namespace, generateName;
- the status subresource: for a resource that has one, a write to `/status` changes only `status`,
  and a write to the resource itself leaves `status` as it was (the API server's rules for CRDs with
  `subresources.status` and for Jobs and Pods);
- for AsyncMTLRuns, what the API server does with our CRD's structural schema on create and on spec
  updates: defaulting, pruning of unknown fields, OpenAPI validation, the CEL rules and list-map keys,
  answered 422 Invalid with the field paths (tests/k8s_schema.py);
- for Pods and Jobs, the Kubernetes OpenAPI schema (kubernetes-validate; unknown fields are errors
  with `?fieldValidation=Strict`, otherwise kept where the server would drop them with a warning) and
  resource quantities parsed as Kubernetes quantities, answered 422 Invalid with the path;
- server-side dry runs (`?dryRun=All` on create): admitted and validated, answered, never stored;
- the ServiceAccount admission plugin: a Pod naming a ServiceAccount its namespace lacks is refused
  (403 Forbidden, the API server's message); every namespace has `default`, as the ServiceAccount
  controller makes it;
- opt-in (`EmulatedCluster(jobs=True)`), the Job controller's first move: a Job that is not suspended
  gets its pods (`parallelism`, default 1) created through that admission; a refusal becomes a
  `FailedCreate` Warning Event on the Job, as the Job controller records it.
Not emulated: the rest of the controllers (tests complete Jobs and move pods themselves), garbage
collection, scheduling, quotas. The emulator runs in its own thread and event loop so tests and
KopfRunner's thread stay synchronous.
"""
from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
import uuid
from pathlib import Path

import kmock
from kmock._internal import enums
from kmock._internal.k8s import KubernetesError
from kmock._internal.references import ResourceInfo, resource

from asyncmtl.crd import GROUP, KIND, PLURAL, SINGULAR, VERSION, crd
from tests.k8s_schema import apply_structural_defaults, prune, schema_violations


KUBE_VERSION = "1.30"  # the Kubernetes schema Pods and Jobs are validated against (as tests/unit/test_chart.py)
PODS = resource("v1/pods")
EVENTS = resource("v1/events")
SERVICE_ACCOUNTS = resource("v1/serviceaccounts")


class Emulator(kmock.KubernetesEmulator):
    """KubernetesEmulator plus the API server's behaviour listed in the module docstring."""

    _versions = itertools.count(1)

    _schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def __init__(self, *args, jobs: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.job_controller = jobs

    async def _serve_list(self, request):
        payload = await super()._serve_list(request)
        labels = _selector(request.params.get("labelSelector"))
        fields = _selector(request.params.get("fieldSelector"))
        payload["items"] = [o for o in payload["items"]
                            if _selected(labels, (o.get("metadata") or {}).get("labels") or {})
                            and _selected(fields, _FieldView(o))]
        return payload

    def _has_status(self, res) -> bool:
        info = self.resources.get(resource(res.group, res.version, res.plural))
        return info is not None and "status" in (info.subresources or ())

    def _subresource_rules(self, request, data: dict) -> None:
        """The status subresource: on `/status` only `status` changes; on the resource itself `status`
        cannot be written (ignored on create and update alike)."""
        if not self._has_status(request.resource):
            return
        if request.subresource == "status":
            keep = {k: data[k] for k in ("status",) if k in data}
            data.clear()
            data.update(keep)
        elif request.subresource is None:
            data.pop("status", None)

    def _admit_workload(self, request, data: dict) -> None:
        """A Pod or Job create: the Kubernetes schema, quantities and (Pods) the ServiceAccount admission.

        Raises:
            KubernetesError: 422 Invalid with the field path, or 403 Forbidden for a missing ServiceAccount.
        """
        import kubernetes_validate
        from kubernetes.utils import parse_quantity

        kind = "Pod" if request.resource.plural == "pods" else "Job"
        name = (data.get("metadata") or {}).get("name") or (data.get("metadata") or {}).get("generateName", "")
        doc = {"apiVersion": "v1" if kind == "Pod" else "batch/v1", "kind": kind, **data}
        try:  # unknown fields are errors only with fieldValidation=Strict (the default, Warn, drops them)
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=request.params.get("fieldValidation") == "Strict")
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in exc.path).replace(".[", "[")
            raise KubernetesError(status=422, reason="Invalid",
                                  message=f'{kind} "{name}" is invalid: {path}: Invalid value: {exc.message}')
        pod_spec = data.get("spec") or {}
        base = "spec"
        if kind == "Job":
            pod_spec, base = ((pod_spec.get("template") or {}).get("spec") or {}), "spec.template.spec"
        for group in ("initContainers", "containers"):
            for i, c in enumerate(pod_spec.get(group) or []):
                for section in ("requests", "limits"):
                    quantities = (c.get("resources") or {}).get(section) or {}
                    for rname, q in quantities.items():
                        try:
                            quantities[rname] = _canonical(parse_quantity(q))  # stored as a string, as the server does
                        except ValueError:
                            raise KubernetesError(status=422, reason="Invalid", message=(
                                f'{kind} "{name}" is invalid: {base}.{group}[{i}].resources.{section}[{rname}]: '
                                f"Invalid value: {q!r}: quantities must match the regular expression "
                                "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")) from None
        if kind == "Pod":
            account = pod_spec.get("serviceAccountName") or "default"
            namespace = request.namespace or (data.get("metadata") or {}).get("namespace")
            if account != "default" and not self._exists(SERVICE_ACCOUNTS, namespace, account):
                raise KubernetesError(status=403, reason="Forbidden", message=(
                    f'pods "{name}" is forbidden: error looking up service account {namespace}/{account}: '
                    f'serviceaccount "{account}" not found'))

    def _exists(self, res, namespace: str | None, name: str) -> bool:
        for (r, ns, n), obj in self.objects.items():
            if r.plural == res.plural and r.group == res.group and ns == namespace and n == name and not obj.deleted:
                return True
        return False

    def _admit_run(self, request, data: dict) -> None:
        """An AsyncMTLRun create, or an update of its spec: default, prune and validate it in place as the
        API server would (the status subresource is not validated against the spec's rules).

        Raises:
            KubernetesError: 422 Invalid, naming every field path that fails.
        """
        if request.action == enums.action.UPDATE:
            key = (request.resource, request.namespace, request.name)
            if "spec" not in data or key not in self.objects:
                return
            old = dict(self.objects[key].raw)
            whole = {**old, "spec": _merge(old.get("spec") or {}, data["spec"])}
        else:
            whole = data
        stored = apply_structural_defaults(self._schema, prune(self._schema, whole))
        problems = schema_violations(self._schema, stored)
        if problems:
            name = (data.get("metadata") or {}).get("name") or request.name
            raise KubernetesError(status=422, reason="Invalid",
                                  message=f'{KIND}.{GROUP} "{name}" is invalid: ' + "; ".join(problems))
        if request.action == enums.action.CREATE:
            data.clear()
            data.update(stored)

    async def _handle(self, request):
        data = request.data
        if request.resource is not None and isinstance(data, dict) and request.action in (
                enums.action.CREATE, enums.action.UPDATE):
            self._subresource_rules(request, data)
        if (request.resource is not None and request.resource.plural in ("pods", "jobs")
                and request.resource.group in ("", "batch") and request.action == enums.action.CREATE
                and isinstance(data, dict)):
            self._admit_workload(request, data)
        if request.params.get("dryRun") == "All" and request.action == enums.action.CREATE and isinstance(data, dict):
            if request.resource is not None and request.resource.plural == PLURAL:
                self._admit_run(request, data)
            import aiohttp.web

            return aiohttp.web.json_response(data, status=201)  # admitted, not stored
        if (request.resource is not None and request.resource.plural == PLURAL and isinstance(data, dict)
                and request.subresource is None and request.action in (enums.action.CREATE, enums.action.UPDATE)):
            self._admit_run(request, data)
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == enums.action.CREATE:
                if request.namespace and not meta.get("namespace"):
                    meta["namespace"] = request.namespace
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                self._created(meta)
            elif request.action == enums.action.UPDATE and request.name is not None:
                meta["resourceVersion"] = str(next(self._versions))
                key = (request.resource, request.namespace, request.name)
                if "spec" in data and key in self.objects:
                    old = self.objects[key].raw
                    if _merge(old.get("spec") or {}, data["spec"]) != (old.get("spec") or {}):
                        meta["generation"] = int(old.get("metadata", {}).get("generation", 1)) + 1
        response = await super()._handle(request)
        if (self.job_controller and request.resource is not None and request.resource.plural == "jobs"
                and request.subresource is None and request.action in (enums.action.CREATE, enums.action.UPDATE)):
            await self._sync_job(request)
        return response

    async def _sync_job(self, request) -> None:
        """The Job controller's first move: create the pods of a Job that is not suspended and has none
        yet, through the Pod admission; a refusal is a FailedCreate Warning Event on the Job."""
        name = request.name or (request.data.get("metadata") or {}).get("name")
        namespace = request.namespace or (request.data.get("metadata") or {}).get("namespace")
        key = (request.resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return
        job = self.objects[key].raw
        spec = job.get("spec") or {}
        if spec.get("suspend") or any(r.plural == "pods" and ns == namespace and not o.deleted
                                      and ((o.raw.get("metadata") or {}).get("labels") or {}).get("job-name") == name
                                      for (r, ns, _), o in self.objects.items()):
            return
        template = spec.get("template") or {}
        for _ in range(int(spec.get("parallelism") or 1)):
            pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
            labels = {**((template.get("metadata") or {}).get("labels") or {}), "job-name": name,
                      "batch.kubernetes.io/job-name": name, "controller-uid": job["metadata"]["uid"]}
            pod = {"metadata": {**(template.get("metadata") or {}), "name": pod_name, "namespace": namespace,
                                "labels": labels,
                                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                     "uid": job["metadata"]["uid"], "controller": True}]},
                   "spec": template.get("spec") or {}}
            try:
                self._admit_workload(_Internal(PODS, namespace), pod)
            except KubernetesError as exc:
                await self._store(EVENTS, namespace, {
                    "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": namespace},
                    "type": "Warning", "reason": "FailedCreate", "message": f"Error creating: {exc.message}",
                    "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": name, "namespace": namespace,
                                       "uid": job["metadata"]["uid"]}})
                return
            await self._store(PODS, namespace, {"apiVersion": "v1", "kind": "Pod", **pod,
                                                "status": {"phase": "Pending"}})

    def _created(self, meta: dict) -> None:
        """The metadata the API server sets on a new object: uid, creationTimestamp, generation 1 and a
        resourceVersion (a client's own uid, timestamp or generation is kept, as the emulator always did)."""
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._versions))

    async def _store(self, res, namespace: str, obj: dict) -> None:
        """Store an object a controller created (server-set metadata included) and tell the watchers."""
        meta = obj["metadata"]
        self._created(meta)
        key = (resource(res.group, res.version, res.plural), namespace, meta["name"])
        async with self._lock:
            self.objects[key] = obj
            await self._buses[key[0]].put({"type": "ADDED", "object": self.objects[key].raw})


class _Internal:
    """The parts of a request `_admit_workload` reads, for a create made by an emulated controller."""

    action = enums.action.CREATE
    subresource = None

    params: dict[str, str] = {}

    def __init__(self, res, namespace: str) -> None:
        self.resource, self.namespace = res, namespace


def _selector(text: str | None) -> list[tuple[str, str, str | None]]:
    """A Kubernetes equality-based selector as (key, op, value) terms; op is `=`, `!=`, `exists` or `!exists`.

    Raises:
        KubernetesError: 400 for set-based terms (`in`, `notin`), which no caller here uses.
    """
    terms: list[tuple[str, str, str | None]] = []
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        if " in " in term or " notin " in term:
            raise KubernetesError(status=400, reason="BadRequest", message=f"set-based selector not emulated: {term}")
        if "!=" in term:
            k, v = term.split("!=", 1)
            terms.append((k.strip(), "!=", v.strip()))
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            terms.append((k.strip(), "=", v.strip()))
        elif term.startswith("!"):
            terms.append((term[1:].strip(), "!exists", None))
        else:
            terms.append((term, "exists", None))
    return terms


def _selected(terms: list[tuple[str, str, str | None]], values) -> bool:
    for key, op, want in terms:
        have = values.get(key)
        if ((op == "=" and have != want) or (op == "!=" and have == want) or (op == "exists" and have is None)
                or (op == "!exists" and have is not None)):
            return False
    return True


class _FieldView:
    """An object's dotted field paths (`involvedObject.name`) as a mapping for `_selected`."""

    def __init__(self, obj: dict) -> None:
        self.obj = obj

    def get(self, path: str):
        node = self.obj
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return None if node is None else str(node)


def _canonical(value) -> str:
    """A quantity's string form as the API server serializes it: 1 -> "1", 0.5 -> "500m", 16Gi kept in bytes."""
    from decimal import Decimal

    if value == value.to_integral_value():
        return str(int(value))
    milli = value * 1000
    return f"{int(milli)}m" if milli == milli.to_integral_value() else str(Decimal(value).normalize())


def _merge(old: dict, patch: dict) -> dict:
    """A JSON merge patch (RFC 7386) of `patch` onto `old`."""
    out = dict(old)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class EmulatedCluster:
    """A running emulator (context manager). `url` is its base URL; `kubeconfig(path)` writes a kubeconfig.
    `jobs=True` runs the emulated Job controller (pods created for Jobs)."""

    def __init__(self, *, jobs: bool = False) -> None:
        self._jobs = jobs
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)
        self.url = ""
        self.emulator: Emulator | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with Emulator(jobs=self._jobs) as emu, kmock.Server(emu) as srv:
            emu.resources.load_bundled()
            emu.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = ResourceInfo(
                kind=KIND, singular=SINGULAR, namespaced=True, subresources={"status"},
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"})
            self.emulator = emu
            self.url = str(srv.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "EmulatedCluster":
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or not self.url:
            raise RuntimeError(f"emulator did not start: {self._error}")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: emu\n"
            f"clusters:\n- name: emu\n  cluster:\n    server: {self.url}\n"
            "users:\n- name: emu\n  user:\n    token: test\n"
            "contexts:\n- name: emu\n  context:\n    cluster: emu\n    user: emu\n    namespace: default\n")
        return path
