"""`s3://bucket/prefix` storage through boto3, for AWS or any S3-compatible store (MinIO, Ceph).

Credentials come from boto3's usual chain (on a cluster: `AWS_ACCESS_KEY_ID` and
`AWS_SECRET_ACCESS_KEY` from the Secret named in `spec.storage.credentialsSecret`), never
from the spec. Transient errors are retried by botocore (standard mode, exponential backoff,
up to 8 attempts). See boto3's S3 client reference.
"""
from __future__ import annotations

from pathlib import Path

from asyncmtl.storage import RunStorage, StorageError, StorageFault

RETRIES = {"max_attempts": 8, "mode": "standard"}


def _client(endpoint_url: str | None):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, config=Config(retries=RETRIES))


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b"). Raises StorageError if it is not an s3:// URI."""
    if not uri.startswith("s3://"):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"no bucket in {uri!r}")
    return bucket, prefix.strip("/")


class S3RunStorage(RunStorage):
    """A run's artifacts under `s3://<bucket>/<root>/`."""

    def __init__(self, bucket: str, root: str, *, endpoint_url: str | None = None, client=None) -> None:
        self.bucket = bucket
        self.root = root.strip("/")
        self.endpoint_url = endpoint_url
        self.s3 = client or _client(endpoint_url)

    @classmethod
    def from_uri(cls, uri: str, *, namespace: str, run: str, endpoint_url: str | None = None) -> "S3RunStorage":
        bucket, prefix = parse_s3_uri(uri)
        root = "/".join(p for p in (prefix, namespace, run) if p)
        return cls(bucket, root, endpoint_url=endpoint_url)

    @classmethod
    def for_object(cls, uri: str, endpoint_url: str | None = None) -> tuple["S3RunStorage", str]:
        import os

        bucket, key = parse_s3_uri(uri)
        folder, _, name = key.rpartition("/")
        return cls(bucket, folder, endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL")), name

    def _k(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.root}/{key}" if self.root and key else (self.root or key)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._k(key)}"

    def _err(self, exc: Exception, key: str) -> StorageError:
        return StorageError(f"{self.uri(key)}: {exc}")

    def put_bytes(self, key: str, data: bytes) -> None:
        """Raises StorageFault when the store refuses the write after botocore's own retries."""
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)
        except Exception as exc:  # botocore raises many types; a failed write is a storage fault
            raise StorageFault(self.uri(key), str(exc)) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            raise StorageError(f"{self.uri(key)}: not found") from None
        except Exception as exc:
            raise self._err(exc, key) from exc

    def put_file(self, key: str, src: str | Path) -> None:
        """Raises StorageFault when the store refuses the upload after botocore's own retries."""
        try:
            self.s3.upload_file(str(src), self.bucket, self._k(key))
        except Exception as exc:
            raise StorageFault(self.uri(key), str(exc)) from exc

    def get_file(self, key: str, dst: str | Path) -> Path:
        if not self.exists(key):
            raise StorageError(f"{self.uri(key)}: not found")
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.s3.download_file(self.bucket, self._k(key), str(dst))
        except Exception as exc:
            raise self._err(exc, key) from exc
        return Path(dst)

    def exists(self, key: str) -> bool:
        return self.etag(key) is not None

    def etag(self, key: str) -> str | None:
        """The object's ETag (HeadObject), None if there is no such object.

        Raises:
            StorageError: any other failure (unreachable endpoint, refused credentials).
        """
        from botocore.exceptions import ClientError

        try:
            return self.s3.head_object(Bucket=self.bucket, Key=self._k(key))["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._err(exc, key) from exc
        except Exception as exc:  # connection errors and the like
            raise self._err(exc, key) from exc

    def list(self, prefix: str) -> list[str]:
        base = self._k(prefix)
        out = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    k = obj["Key"]
                    if k == base or k.startswith(base.rstrip("/") + "/"):
                        out.append(k[len(self.root) + 1:] if self.root else k)
        except Exception as exc:
            raise self._err(exc, prefix) from exc
        return sorted(out)

    def delete_prefix(self, prefix: str) -> None:
        keys = [self._k(k) for k in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            try:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
            except Exception as exc:
                raise self._err(exc, prefix) from exc

    def check(self) -> None:
        """Fail fast if the bucket is unreachable or the credentials cannot list the run's own prefix
        (ListObjectsV2 on `<root>/`, one key: what credentials scoped to a prefix allow, where HeadBucket,
        a bucket-wide call, is refused).

        Raises:
            StorageError: naming the bucket, the prefix and the reason.
        """
        try:
            self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.root}/" if self.root else "", MaxKeys=1)
        except Exception as exc:
            raise StorageError(f"{self.uri()}: not reachable with these credentials: {exc}") from exc
