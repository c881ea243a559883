"""Opening storage by URI: `file://` (`FileRunStorage`) or `s3://` (`asyncmtl.storage_s3`).

Apart from the storage interface (`asyncmtl.storage`) so that the S3 backend, which implements that
interface, and the interface do not import each other.
"""
from __future__ import annotations

import os
from pathlib import Path

from asyncmtl.failpoints import Failpoints
from asyncmtl.storage import FileRunStorage, RunStorage, StorageError
from asyncmtl.storage_s3 import S3RunStorage


def file_storage_root(uri: str, base_dir: str | Path | None = None) -> Path | None:
    """The folder a `file://PATH` storage URI names (absolute; `~` expanded; a relative PATH resolves
    against `base_dir`, default: the working directory), or None for any other scheme. Runs live in
    `<folder>/<namespace>/<run>`; every reader and writer of local runs resolves the URI here.
    """
    if not uri.startswith("file://"):
        return None
    root = Path(uri.removeprefix("file://")).expanduser()
    if not root.is_absolute():
        root = Path(base_dir or os.getcwd()) / root
    return root.resolve()


def open_run_storage(uri: str, *, namespace: str, run: str, base_dir: str | Path | None = None,
                     endpoint_url: str | None = None) -> RunStorage:
    """The storage of run `namespace/run` under a storage URI (`file://PATH` or `s3://bucket/prefix`).

    Relative file paths resolve against `base_dir` (default: the working directory; `file_storage_root`).

    Raises:
        StorageError: unsupported scheme.
    """
    root = file_storage_root(uri, base_dir)
    if root is not None:
        return FileRunStorage(root / namespace / run, Failpoints.from_env())
    if uri.startswith("s3://"):
        return S3RunStorage.from_uri(uri, namespace=namespace, run=run, endpoint_url=endpoint_url)
    raise StorageError(f"unsupported storage URI {uri!r}: use file:// or s3://")


def open_uri(uri: str) -> tuple[RunStorage, str]:
    """Storage and key for a full artifact URI written by `RunStorage.uri` (e.g. a soft-label manifest)."""
    if uri.startswith("file://"):
        p = Path(uri.removeprefix("file://"))
        return FileRunStorage(p.parent), p.name
    if uri.startswith("s3://"):
        return S3RunStorage.for_object(uri)
    raise StorageError(f"unsupported URI {uri!r}")
