"""Task data at s3:// URIs (moto's server mode over real HTTP): read, cached by ETag, errors name uri:line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from asyncmtl.data import DataError, load_split
from asyncmtl.spec import parse_run
from tests.conftest import moto_server, run_doc


@pytest.fixture()
def s3(monkeypatch, tmp_path):
    """A moto S3 server with bucket `data`; credentials and the data cache set in the environment."""
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "ASYNCMTL_DATA_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="data")
        yield endpoint, client


def _put_jsonl(client, key: str, rows: list[dict]) -> None:
    client.put_object(Bucket="data", Key=key, Body="".join(json.dumps(r) + "\n" for r in rows).encode())


def _task(train: str = "s3://data/sent/train.jsonl"):
    doc = run_doc([{"name": "sent", "type": "binary",
                    "data": {"train": train, "validation": "s3://data/sent/val.jsonl"}}])
    return parse_run(doc).spec.tasks[0]


def test_reads_rows_and_refetches_only_when_the_object_changes(s3, tmp_path):
    endpoint, client = s3
    _put_jsonl(client, "sent/train.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    split = load_split(_task(), "train", endpoint_url=endpoint)
    assert split.source == "s3://data/sent/train.jsonl"
    assert [(e.text, e.label) for e in split.examples] == [("good", 1), ("bad", 0)]

    cached = tmp_path / "cache" / "data" / "sent" / "train.jsonl"
    cached.write_text(json.dumps({"text": "from cache", "label": 1}) + "\n")  # same ETag upstream: cache is used
    assert [e.text for e in load_split(_task(), "train", endpoint_url=endpoint).examples] == ["from cache"]

    _put_jsonl(client, "sent/train.jsonl", [{"text": "new", "label": 0}])  # new ETag: fetched again
    assert [e.text for e in load_split(_task(), "train", endpoint_url=endpoint).examples] == ["new"]


def test_bad_row_names_the_s3_uri_and_line(s3):
    endpoint, client = s3
    _put_jsonl(client, "sent/train.jsonl", [{"text": "ok", "label": 1}, {"text": "x", "label": 7}])
    with pytest.raises(DataError) as err:
        load_split(_task(), "train", endpoint_url=endpoint)
    assert err.value.problems == ["s3://data/sent/train.jsonl:2: label 7: out of range [0, 1] (numLabels=2)"]


def test_missing_object_is_a_data_error(s3):
    endpoint, _ = s3
    with pytest.raises(DataError, match=r"^s3://data/sent/none.jsonl: not found$"):
        load_split(_task("s3://data/sent/none.jsonl"), "train", endpoint_url=endpoint)


def test_validate_reads_s3_data_through_the_spec_storage_endpoint(s3, tmp_path):
    endpoint, client = s3
    _put_jsonl(client, "sent/train.jsonl", [{"text": "good", "label": 1}])
    _put_jsonl(client, "sent/val.jsonl", [{"text": "fine", "label": 1}, {"text": "meh", "label": 2}])
    doc = run_doc([{"name": "sent", "type": "binary",
                    "data": {"train": "s3://data/sent/train.jsonl", "validation": "s3://data/sent/val.jsonl"}}],
                  storage={"uri": "s3://data/runs", "endpointUrl": endpoint})
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(doc))
    r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "validate", str(spec), "--data"],
                       capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 2, r.stderr
    assert "s3://data/sent/val.jsonl:2: label 2: out of range [0, 1]" in r.stderr
