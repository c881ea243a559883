"""One storage contract, two backends: a local folder and S3 (moto's server mode over real HTTP)."""
from __future__ import annotations

import json

import pytest

from asyncmtl.softlabels import manifest_key, shard_key, write_manifest
from asyncmtl.storage import FileRunStorage, StorageError, open_run_storage, open_uri, sha256_bytes
from tests.conftest import moto_server


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path, monkeypatch):
    if request.param == "file":
        return open_run_storage(f"file://{tmp_path}/store", namespace="ns", run="r")
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    import boto3

    bucket = f"b-{tmp_path.name.lower().replace('_', '-')}"[:60]
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    st = open_run_storage(f"s3://{bucket}/pre", namespace="ns", run="r", endpoint_url=endpoint)
    st.check()
    return st


def test_layout_and_roundtrip(storage, tmp_path):
    assert storage.uri("reports/x.json").endswith("/ns/r/reports/x.json")
    storage.put_bytes("reports/x.json", b"{}")
    assert storage.get_bytes("reports/x.json") == b"{}" and storage.exists("reports/x.json")
    src = tmp_path / "f.bin"
    src.write_bytes(b"abc" * 1000)
    storage.put_file("checkpoints/step-1/model.safetensors", src)
    got = storage.get_file("checkpoints/step-1/model.safetensors", tmp_path / "out" / "m.bin")
    assert got.read_bytes() == src.read_bytes()
    assert storage.list("checkpoints") == ["checkpoints/step-1/model.safetensors"]
    storage.append_line("reports/history.jsonl", '{"a": 1}')
    storage.append_line("reports/history.jsonl", '{"a": 2}')
    assert storage.get_bytes("reports/history.jsonl").decode().splitlines() == ['{"a": 1}', '{"a": 2}']
    storage.delete_prefix("checkpoints")
    assert storage.list("checkpoints") == [] and not storage.exists("checkpoints/step-1/model.safetensors")
    with pytest.raises(StorageError, match="not found"):
        storage.get_bytes("nope")


def _put_shard(storage, i: int, n: int, rows: int, *, corrupt: bool = False) -> None:
    data = bytes([i]) * (rows * 4)
    key = shard_key("t", 10, i, n)
    storage.put_bytes(key, data + (b"x" if corrupt else b""))
    storage.put_bytes(key + ".json", json.dumps({"rows": rows, "numLabels": 2, "sha256": sha256_bytes(data)}).encode())


def test_manifest_is_written_only_for_a_complete_verified_set(storage):
    _put_shard(storage, 0, 2, 3)
    with pytest.raises(StorageError, match="shard 1 of 2 is missing"):
        write_manifest(storage, "t", 10, 2, 5)
    _put_shard(storage, 1, 2, 2, corrupt=True)
    with pytest.raises(StorageError, match="does not match its sha256"):
        write_manifest(storage, "t", 10, 2, 5)
    _put_shard(storage, 1, 2, 1)
    with pytest.raises(StorageError, match="3 rows for 5 training examples|4 rows for 5"):
        write_manifest(storage, "t", 10, 2, 5)
    assert not storage.exists(manifest_key("t", 10))
    _put_shard(storage, 1, 2, 2)
    uri = write_manifest(storage, "t", 10, 2, 5)
    st, key = open_uri(uri)
    m = json.loads(st.get_bytes(key))
    assert m["numExamples"] == 5 and [s["rows"] for s in m["shards"]] == [3, 2]


def test_file_keys_cannot_escape_the_run_folder(tmp_path):
    st = FileRunStorage(tmp_path / "run")
    with pytest.raises(StorageError, match="escapes"):
        st.put_bytes("../other/x", b"")


def test_files_written_atomically_are_readable_by_others(tmp_path):
    """mkstemp's private 0600 would make reports unreadable to the team sharing a run folder."""
    import stat

    from asyncmtl.storage import FileRunStorage

    s = FileRunStorage(tmp_path)
    s.put_bytes("reports/report.md", b"# r\n")
    assert stat.S_IMODE((tmp_path / "reports" / "report.md").stat().st_mode) == 0o644
