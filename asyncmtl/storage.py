"""Artifact storage behind one interface: `file://` now, `s3://` (boto3) on a cluster.

Layout of one run under the storage URI's prefix (the same for every backend):
`<prefix>/<namespace>/<run>/{checkpoints,softlabels,reports,model}`; local runs use the
namespace `local`. Keys passed to a `RunStorage` are relative to the run's folder.

Integrity: writers record a sha256 for every checkpoint file and soft-label shard, and write
a manifest last; readers verify it (`verify_sha256`).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from asyncmtl.failpoints import Failpoints

LOCAL_NAMESPACE = "local"


class StorageError(RuntimeError):
    """A storage operation failed (missing object, bad checksum, unreachable store)."""


class StorageFault(StorageError):
    """A write to storage failed in a way no retry of the writer fixes: the disk or quota is full,
    the folder is read-only or not writable, a name is too long, an object store refused the write
    after its own retries. The run stops (phase Failed, this one-line reason) and `--resume`
    continues once the fault is gone.

    Attributes:
        path: what was being written (a local path or an s3:// URI).
        reason: the operating system's or the store's words, e.g. "No space left on device (ENOSPC)".
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"storage fault: cannot write {path}: {reason}")
        self.path = path
        self.reason = reason


_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")


def as_storage_fault(exc: BaseException, path: str | Path) -> StorageFault | None:
    """The StorageFault an exception raised while writing `path` amounts to, or None if it is no
    storage fault (a bug, an interrupt). Knows `OSError` (with `errno`), safetensors' SafetensorError
    ("... (os error 28)") and torch's zip writer ("unexpected pos": a short write, i.e. a full disk)."""
    if isinstance(exc, StorageFault):
        return exc
    if isinstance(exc, OSError):
        code = exc.errno
        where = exc.filename or path
    else:
        text = str(exc)
        m = _OS_ERROR_IN_TEXT.search(text)
        if m:
            code = int(m.group(1))
        elif "unexpected pos" in text:  # torch.save to a path on a full disk
            code = errno.ENOSPC
        else:
            return None
        where = path
    if code is None:
        return StorageFault(str(where), str(exc))
    return StorageFault(str(where), f"{os.strerror(code)} ({errno.errorcode.get(code, code)})")


def ensure_writable(folder: str | Path, need_bytes: int = 0, failpoints: Failpoints | None = None) -> None:
    """Check that `folder` can be created and written, and has `need_bytes` free (creates it).

    A small probe file is written, fsynced and removed.

    Raises:
        StorageFault: naming the folder: not creatable or writable (EACCES, EROFS, ENAMETOOLONG, ...),
            or less than `need_bytes` free.
    """
    folder = Path(folder)
    probe = folder / ".asyncmtl-write-probe"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if failpoints is not None:
            failpoints.hit("storage.preflight", folder)
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        raise as_storage_fault(exc, folder) from None
    if free < need_bytes:
        raise StorageFault(str(folder), f"{free / 1e9:.2f} GB free, but one checkpoint needs about "
                                        f"{need_bytes / 1e9:.2f} GB (ENOSPC)")


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

    def writing(self, key: str) -> Path | None:
        """Announce that `key` is about to be written by the caller itself (a library writing to
        `local_path(key)`); a local folder creates the key's folder and passes its failpoint. Returns
        the local path, or None for a remote store (the caller then writes a scratch copy and uploads
        it with `put_file`).

        Raises:
            StorageFault: the folder cannot be created, or an injected fault.
        """
        return None

    def append_line(self, key: str, line: str) -> None:
        """Append one line of text to `key` (read-modify-write on object stores)."""
        old = self.get_bytes(key) if self.exists(key) else b""
        self.put_bytes(key, old + line.rstrip("\n").encode() + b"\n")


class FileRunStorage(RunStorage):
    """A run's artifacts in a local folder (`file://` URIs). Write errors raise StorageFault.

    Args:
        root: the run's folder.
        failpoints: injected write errors (asyncmtl.failpoints; default: none).
    """

    def __init__(self, root: str | Path, failpoints: Failpoints | None = None) -> None:
        self.root = Path(root).resolve()
        self.failpoints = failpoints or Failpoints()

    def writing(self, key: str) -> Path:
        """The local path of `key`, about to be written: its folder is created and the key's
        failpoint (`storage.write:<first key component>`) passed.

        Raises:
            StorageFault: the folder cannot be created, or an injected fault.
        """
        p = self._p(key)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            self.failpoints.hit(f"storage.write:{key.split('/', 1)[0]}", p)
        except OSError as exc:
            raise as_storage_fault(exc, p) from None
        return p

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
        p = self.writing(key)
        atomic_write(p, data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._p(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.uri(key)}: not found") from None

    def put_file(self, key: str, src: str | Path) -> None:
        p = self._p(key)
        if Path(src).resolve() == p:
            return
        p = self.writing(key)
        try:
            shutil.copyfile(src, p)
        except OSError as exc:
            raise as_storage_fault(exc, p) from None

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
        p = self.writing(key)
        try:
            with p.open("a", encoding="utf-8") as f:
                f.write(line.rstrip("\n") + "\n")
        except OSError as exc:
            raise as_storage_fault(exc, p) from None


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temporary file in the same folder, then rename; mode 0644).
    On failure the temporary file is removed and `path` keeps its old content.

    Raises:
        StorageFault: naming `path` (ENOSPC, EROFS, EACCES, ...).
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide reports from the rest of the team
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise as_storage_fault(exc, path) from None
