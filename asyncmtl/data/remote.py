"""Task data in S3-compatible storage: `s3://bucket/key.jsonl` URIs, fetched once into a local cache.

A cluster's pods rarely share a file system with the person who wrote the spec, so data may live
in the same S3-compatible store as the run's artifacts. The object is downloaded with boto3 into
`<cache>/<bucket>/<key>` and re-downloaded only when its ETag changes (HeadObject), so a restarted
trainer pod or an inference shard does not fetch it again. Rows are then read by the ordinary
file readers; errors name the `s3://` URI and the line, e.g. `s3://data/emotion/train.jsonl:17: ...`.

Endpoint and credentials are the storage's: `spec.storage.endpointUrl` (else `$AWS_ENDPOINT_URL`)
and boto3's credential chain (on a cluster the Secret in `spec.storage.credentialsSecret`).
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ASYNCMTL_DATA_CACHE"


def default_cache_dir() -> Path:
    """`$ASYNCMTL_DATA_CACHE`, else `~/.cache/asyncmtl/data`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "asyncmtl" / "data"


def fetch_s3(uri: str, *, endpoint_url: str | None = None, cache_dir: Path | None = None) -> Path:
    """Download `uri` (`s3://bucket/key`) into the cache unless the cached copy has the same ETag.

    Returns:
        The local path of the object (`<cache_dir>/<bucket>/<key>`).

    Raises:
        FileNotFoundError: no such object (the message is `<uri>: not found`).
        asyncmtl.storage.StorageError: the bucket is unreachable or the credentials are refused.
    """
    from asyncmtl.storage_s3 import S3RunStorage

    store, name = S3RunStorage.for_object(uri, endpoint_url)
    if not name:
        raise FileNotFoundError(f"{uri}: names a bucket, not an object")
    etag = store.etag(name)
    if etag is None:
        raise FileNotFoundError(f"{uri}: not found")
    dst = (cache_dir or default_cache_dir()) / store.bucket / store.root / name
    tag_file = dst.with_name(dst.name + ".etag")
    if dst.is_file() and tag_file.is_file() and tag_file.read_text() == etag:
        return dst
    part = dst.with_name(f"{dst.name}.part-{os.getpid()}")
    try:
        store.get_file(name, part)
    except Exception:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dst)  # atomic: concurrent inference shards never read a half-written file
    tag_file.write_text(etag)
    return dst
