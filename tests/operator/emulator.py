"""kmock's KubernetesEmulator, with what the operator relies on from a real API server.

Added (small, tested in test_emulator.py): uid, resourceVersion (bumped on every write),
creationTimestamp, generation (bumped when `spec` changes), metadata.namespace, generateName; and
for AsyncMTLRuns what the API server does with our CRD's structural schema on create and on spec
updates: defaulting, pruning of unknown fields, OpenAPI validation, the CEL rules and list-map keys,
answered 422 Invalid with the field paths (tests/k8s_schema.py).
Not emulated: controllers (tests complete Jobs themselves), garbage collection, admission plugins. The emulator
runs in its own thread and event loop so tests and KopfRunner's thread stay synchronous.
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
from kmock._internal.references import ResourceInfo

from asyncmtl.crd import GROUP, KIND, PLURAL, SINGULAR, VERSION, crd
from tests.k8s_schema import apply_structural_defaults, prune, schema_violations


class Emulator(kmock.KubernetesEmulator):
    """KubernetesEmulator plus server-set metadata fields."""

    _versions = itertools.count(1)

    _schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def _admit_run(self, request, data: dict) -> None:
        """An AsyncMTLRun create, or an update of its spec: default, prune and validate it in place as the
        API server would (the status subresource is not validated against the spec's rules).

        Raises:
            KubernetesError: 422 Invalid, naming every field path that fails.
        """
        from kmock._internal.k8s import KubernetesError

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
        if (request.resource is not None and request.resource.plural == PLURAL and isinstance(data, dict)
                and request.subresource is None and request.action in (enums.action.CREATE, enums.action.UPDATE)):
            self._admit_run(request, data)
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == enums.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta.setdefault("generation", 1)
                if request.namespace and not meta.get("namespace"):
                    meta["namespace"] = request.namespace
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta["resourceVersion"] = str(next(self._versions))
            elif request.action == enums.action.UPDATE and request.name is not None:
                meta["resourceVersion"] = str(next(self._versions))
                if "spec" in data:
                    key = (request.resource, request.namespace, request.name)
                    if key in self.objects:
                        meta["generation"] = int(self.objects[key].get("metadata", {}).get("generation", 1)) + 1
        return await super()._handle(request)


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
    """A running emulator (context manager). `url` is its base URL; `kubeconfig(path)` writes a kubeconfig."""

    def __init__(self) -> None:
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
        async with Emulator() as emu, kmock.Server(emu) as srv:
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
