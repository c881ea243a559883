"""asyncmtl.data.remote: an `s3://bucket/key` object is downloaded into `<cache>/<bucket>/<key>` and fetched
again only when its ETag changes; the cache is `$ASYNCMTL_DATA_CACHE`, else ~/.cache/asyncmtl/data; a
missing object is a FileNotFoundError naming the URI, an unreachable store a StorageError (moto's S3 server
over real HTTP)."""
from __future__ import annotations

from pathlib import Path

import pytest

from asyncmtl.data.remote import CACHE_ENV, default_cache_dir, fetch_s3
from asyncmtl.storage import StorageError
from tests.conftest import moto_server


def test_the_cache_is_the_environment_s_folder_else_under_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "asyncmtl" / "data"


@pytest.fixture(scope="module")
def server():
    """moto's S3 server (started once for the module) with the bucket `data`; yields (endpoint, client)."""
    import boto3

    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        mp.setenv(k, v)
    mp.delenv("AWS_ENDPOINT_URL", raising=False)
    try:
        with moto_server() as endpoint:
            client = boto3.client("s3", endpoint_url=endpoint)
            client.create_bucket(Bucket="data")
            yield endpoint, client
    finally:
        mp.undo()


def _put(client, key: str, body: bytes) -> str:
    return client.put_object(Bucket="data", Key=key, Body=body)["ETag"]


def test_an_object_is_downloaded_to_the_cache_under_its_bucket_and_key(server, tmp_path):
    endpoint, client = server
    _put(client, "emotion/v1/train.jsonl", b'{"text": "a", "label": 1}\n')
    got = fetch_s3("s3://data/emotion/v1/train.jsonl", endpoint_url=endpoint, cache_dir=tmp_path)
    assert got == tmp_path / "data" / "emotion" / "v1" / "train.jsonl"
    assert got.read_bytes() == b'{"text": "a", "label": 1}\n'
    assert [p.name for p in got.parent.iterdir() if ".part-" in p.name] == []  # no partial download left


def test_an_object_at_the_bucket_s_top_level(server, tmp_path):
    endpoint, client = server
    _put(client, "top.csv", b"text,label\nx,0\n")
    got = fetch_s3("s3://data/top.csv", endpoint_url=endpoint, cache_dir=tmp_path)
    assert got == tmp_path / "data" / "top.csv" and got.read_bytes() == b"text,label\nx,0\n"


def test_the_cached_copy_is_used_while_the_etag_is_unchanged_and_replaced_when_it_changes(server, tmp_path):
    endpoint, client = server
    uri = "s3://data/cached/train.jsonl"
    _put(client, "cached/train.jsonl", b"first\n")
    got = fetch_s3(uri, endpoint_url=endpoint, cache_dir=tmp_path)
    got.write_bytes(b"local marker\n")  # not downloaded again while the object is the same
    assert fetch_s3(uri, endpoint_url=endpoint, cache_dir=tmp_path) == got
    assert got.read_bytes() == b"local marker\n"

    _put(client, "cached/train.jsonl", b"second version\n")  # a new ETag: fetched again
    assert fetch_s3(uri, endpoint_url=endpoint, cache_dir=tmp_path) == got
    assert got.read_bytes() == b"second version\n"


def test_the_default_cache_is_the_environment_s(server, tmp_path, monkeypatch):
    endpoint, client = server
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    _put(client, "env/x.jsonl", b"{}\n")
    assert fetch_s3("s3://data/env/x.jsonl", endpoint_url=endpoint) == tmp_path / "env-cache" / "data" / "env" / "x.jsonl"


def test_the_endpoint_comes_from_the_environment_when_not_given(server, tmp_path, monkeypatch):
    endpoint, client = server
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    _put(client, "envurl/x.jsonl", b"{}\n")
    assert fetch_s3("s3://data/envurl/x.jsonl", cache_dir=tmp_path).read_bytes() == b"{}\n"


@pytest.mark.parametrize("uri, message", [
    ("s3://data/none/train.jsonl", "s3://data/none/train.jsonl: not found"),
    ("s3://no-such-bucket/train.jsonl", "s3://no-such-bucket/train.jsonl: not found"),
    ("s3://data", "s3://data: names a bucket, not an object"),
    ("s3://data/", "s3://data/: names a bucket, not an object"),
])
def test_no_such_object_is_a_file_not_found_error_naming_the_uri(server, tmp_path, uri, message):
    endpoint, _ = server
    with pytest.raises(FileNotFoundError) as ei:
        fetch_s3(uri, endpoint_url=endpoint, cache_dir=tmp_path)
    assert str(ei.value) == message
    assert not any(tmp_path.rglob("*"))  # nothing cached


def test_a_failed_download_keeps_the_cached_copy_and_leaves_no_partial_file(server, tmp_path, monkeypatch):
    from asyncmtl.storage_s3 import S3RunStorage

    endpoint, client = server
    uri = "s3://data/fails/train.jsonl"
    _put(client, "fails/train.jsonl", b"good\n")
    got = fetch_s3(uri, endpoint_url=endpoint, cache_dir=tmp_path)
    _put(client, "fails/train.jsonl", b"newer\n")

    def broken(self, key: str, dst) -> Path:
        Path(dst).write_bytes(b"half")  # a download that dies half-way
        raise StorageError(f"{self.uri(key)}: connection reset")

    monkeypatch.setattr(S3RunStorage, "get_file", broken)
    with pytest.raises(StorageError, match="connection reset"):
        fetch_s3(uri, endpoint_url=endpoint, cache_dir=tmp_path)
    assert got.read_bytes() == b"good\n"
    assert sorted(p.name for p in got.parent.iterdir()) == ["train.jsonl", "train.jsonl.etag"]


def test_an_unreachable_store_is_a_storage_error(tmp_path, monkeypatch):
    from asyncmtl import storage_s3

    monkeypatch.setattr(storage_s3, "RETRIES", {"max_attempts": 1, "mode": "standard"})  # fail fast
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(StorageError) as ei:
        fetch_s3("s3://data/x.jsonl", endpoint_url="http://127.0.0.1:9", cache_dir=tmp_path)
    assert str(ei.value).startswith("s3://data/x.jsonl: ")
    assert not any(tmp_path.rglob("*"))
