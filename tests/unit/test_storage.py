"""One storage contract, two backends: a local folder and S3 (moto's server mode over real HTTP)."""
from __future__ import annotations

import json

import pytest

from asyncmtl.softlabels import manifest_key, shard_key, write_manifest
from asyncmtl.storage import FileRunStorage, StorageError, sha256_bytes
from asyncmtl.storage_factory import open_run_storage, open_uri
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


def test_a_failed_write_is_a_storage_fault_naming_the_path_and_leaves_the_old_file_and_no_temporary(tmp_path):
    from asyncmtl.failpoints import Failpoints
    from asyncmtl.storage import StorageFault

    s = FileRunStorage(tmp_path, Failpoints.parse("storage.write:reports=ENOSPC@2"))
    s.put_bytes("reports/final.json", b"old")
    with pytest.raises(StorageFault, match=r"final\.json: No space left on device \(ENOSPC\)") as info:
        s.put_bytes("reports/final.json", b"new")
    assert info.value.path.endswith("reports/final.json")
    assert (tmp_path / "reports" / "final.json").read_bytes() == b"old"
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["final.json"]
    s.put_bytes("checkpoints/x", b"other keys still write")


def test_a_real_os_error_on_write_is_a_storage_fault(tmp_path):
    """Not injected: the folder for the key is a regular file (EEXIST on mkdir), as root too."""
    from asyncmtl.storage import StorageFault

    (tmp_path / "reports").write_text("a file where a folder should be")
    s = FileRunStorage(tmp_path)
    for write in (lambda: s.put_bytes("reports/a", b"x"), lambda: s.append_line("reports/h.jsonl", "{}")):
        with pytest.raises(StorageFault, match=r"cannot write .*/reports: File exists \(EEXIST\)"):
            write()


@pytest.mark.parametrize("exc, reason", [
    (OSError(28, "No space left on device", "/x/y"), "No space left on device (ENOSPC)"),
    (OSError(30, "Read-only file system"), "Read-only file system (EROFS)"),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "(ENOSPC)"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), "(ENOSPC)"),
])
def test_writer_errors_are_classified_as_storage_faults(exc, reason):
    from asyncmtl.storage import as_storage_fault

    fault = as_storage_fault(exc, "/run/checkpoints/step-1")
    assert fault is not None and reason in str(fault)
    assert fault.path == (exc.filename if isinstance(exc, OSError) and exc.filename else "/run/checkpoints/step-1")


def test_other_errors_are_not_storage_faults():
    from asyncmtl.storage import as_storage_fault

    assert as_storage_fault(RuntimeError("CUDA out of memory"), "/x") is None
    assert as_storage_fault(KeyError("optimizer"), "/x") is None


def test_failpoints_parse_and_fire_from_the_nth_hit():
    from asyncmtl.failpoints import FailpointSyntaxError, Failpoints

    fp = Failpoints.parse("a=ENOSPC@3, b=EROFS")
    fp.hit("a", "p")
    fp.hit("a", "p")
    fp.hit("other", "p")
    for _ in range(2):  # from the third hit on, every hit
        with pytest.raises(OSError) as info:
            fp.hit("a", "p")
        assert info.value.errno == 28 and info.value.filename == "p"
    with pytest.raises(OSError):
        fp.hit("b", "q")
    assert Failpoints.from_env({}).points == {}
    for bad in ("a", "a=ENOPE", "a=ENOSPC@x", "=ENOSPC"):
        with pytest.raises(FailpointSyntaxError):
            Failpoints.parse(bad)


def test_ensure_writable_names_the_folder_and_the_space_it_lacks(tmp_path):
    from asyncmtl.storage import StorageFault, ensure_writable

    ensure_writable(tmp_path / "new" / "run", 1)
    assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())
    with pytest.raises(StorageFault, match=r"GB free, but one checkpoint needs about .* \(ENOSPC\)"):
        ensure_writable(tmp_path, 1 << 60)
