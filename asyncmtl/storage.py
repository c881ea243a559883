"""Artifact storage behind one interface: `file://` now, `s3://` (boto3) on a cluster.

Layout of one run under the storage URI's prefix (the same for every backend):
`<prefix>/<namespace>/<run>/{checkpoints,softlabels,reports,model}`; local runs use the
namespace `local`. Keys passed to a `RunStorage` are relative to the run's folder.

Integrity: writers record a sha256 for every checkpoint file and soft-label shard, and write
a manifest last; readers verify it (`verify_sha256`).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

LOCAL_NAMESPACE = "local"


class StorageError(RuntimeError):
    """A storage operation failed (missing object, bad checksum, unreachable store)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a local file (read in `chunk`-byte blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunStorage(ABC):
    """Storage of one run's artifacts. Keys are POSIX paths relative to the run's folder."""

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """Full URI of `key` (e.g. `file:///abs/runs/local/demo/reports/report.md`)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` at `key`, replacing it atomically where the backend allows."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read `key`. Raises StorageError if it does not exist."""

    @abstractmethod
    def put_file(self, key: str, src: str | Path) -> None:
        """Copy a local file to `key`."""

    @abstractmethod
    def get_file(self, key: str, dst: str | Path) -> Path:
        """Copy `key` to a local file and return its path. Raises StorageError if missing."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix` (recursive), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under `prefix`."""

    def local_path(self, key: str) -> Path | None:
        """A local path for `key` when the backend is a local folder, else None."""
        return None

    def append_line(self, key: str, line: str) -> None:
        """Append one line of text to `key` (read-modify-write on object stores)."""
        old = self.get_bytes(key) if self.exists(key) else b""
        self.put_bytes(key, old + line.rstrip("\n").encode() + b"\n")


class FileRunStorage(RunStorage):
    """A run's artifacts in a local folder (`file://` URIs)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _p(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents and p != self.root:
            raise StorageError(f"key {key!r} escapes the run folder {self.root}")
        return p

    def uri(self, key: str = "") -> str:
        return "file://" + str(self._p(key))

    def local_path(self, key: str) -> Path:
        return self._p(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        p = self._p(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide reports from the rest of the team
        os.replace(tmp, p)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._p(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.uri(key)}: not found") from None

    def put_file(self, key: str, src: str | Path) -> None:
        p = self._p(key)
        if Path(src).resolve() == p:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, p)

    def get_file(self, key: str, dst: str | Path) -> Path:
        p = self._p(key)
        if not p.is_file():
            raise StorageError(f"{self.uri(key)}: not found")
        if Path(dst).resolve() != p:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst)
        return Path(dst)

    def exists(self, key: str) -> bool:
        return self._p(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._p(prefix)
        if not base.exists():
            return []
        if base.is_file():
            return [prefix]
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))

    def delete_prefix(self, prefix: str) -> None:
        p = self._p(prefix)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    def append_line(self, key: str, line: str) -> None:
        p = self._p(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")


def open_run_storage(uri: str, *, namespace: str, run: str, base_dir: str | Path | None = None,
                     endpoint_url: str | None = None) -> RunStorage:
    """The storage of run `namespace/run` under a storage URI (`file://PATH` or `s3://bucket/prefix`).

    Relative file paths resolve against `base_dir` (default: the working directory).

    Raises:
        StorageError: unsupported scheme.
    """
    if uri.startswith("file://"):
        root = Path(uri.removeprefix("file://")).expanduser()
        if not root.is_absolute():
            root = Path(base_dir or os.getcwd()) / root
        return FileRunStorage(root / namespace / run)
    if uri.startswith("s3://"):
        from asyncmtl.storage_s3 import S3RunStorage

        return S3RunStorage.from_uri(uri, namespace=namespace, run=run, endpoint_url=endpoint_url)
    raise StorageError(f"unsupported storage URI {uri!r}: use file:// or s3://")


def open_uri(uri: str) -> tuple[RunStorage, str]:
    """Storage and key for a full artifact URI written by `RunStorage.uri` (e.g. a soft-label manifest)."""
    if uri.startswith("file://"):
        p = Path(uri.removeprefix("file://"))
        return FileRunStorage(p.parent), p.name
    if uri.startswith("s3://"):
        from asyncmtl.storage_s3 import S3RunStorage

        return S3RunStorage.for_object(uri)
    raise StorageError(f"unsupported URI {uri!r}")
