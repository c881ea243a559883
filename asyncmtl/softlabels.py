"""Soft-label layout on storage and the manifest that marks a set complete (no torch needed).

Layout: `softlabels/<task>/step-<8 digits>/shard-<i>-of-<n>.safetensors`, each holding
`ids: (rows,) int64` (example ids in the task's training split) and `outputs: (rows, num_labels)
float16` (teacher logits; the normalised value for regression), with a sidecar
`<shard>.json` = {rows, numLabels, sha256}. `manifest.json` is written last, by whoever
verified every shard (the local runtime, or the operator after the inference Job succeeded);
it lists each shard's key, rows and sha256. Readers refuse an incomplete or mismatched set.
"""
from __future__ import annotations

import json

from asyncmtl.artifacts import softlabel_key
from asyncmtl.storage import RunStorage, StorageError, sha256_bytes

MANIFEST = "manifest.json"


def prefix_for(task: str, step: int) -> str:
    return softlabel_key(task, step)


def shard_key(task: str, step: int, index: int, count: int) -> str:
    return f"{prefix_for(task, step)}/shard-{index:05d}-of-{count:05d}.safetensors"


def manifest_key(task: str, step: int) -> str:
    return f"{prefix_for(task, step)}/{MANIFEST}"


def shard_range(n: int, index: int, count: int) -> tuple[int, int]:
    """[start, end) of shard `index` of `count` over n examples (contiguous; sizes differ by <= 1)."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} not in [0, {count})")
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def write_manifest(storage: RunStorage, task: str, step: int, count: int, num_examples: int | None = None) -> str:
    """Verify all `count` shards (present, sha256 matching, rows adding up to `num_examples`, or,
    when None, to the split size every shard's sidecar records) and write the manifest.
    Returns the manifest's URI.

    Raises:
        StorageError: a shard is missing, mismatches its checksum, or rows are missing.
    """
    shards = []
    total = 0
    num_labels = None
    for i in range(count):
        key = shard_key(task, step, i, count)
        if not storage.exists(key) or not storage.exists(key + ".json"):
            raise StorageError(f"soft labels {task}@{step}: shard {i} of {count} is missing")
        meta = json.loads(storage.get_bytes(key + ".json"))
        if sha256_bytes(storage.get_bytes(key)) != meta["sha256"]:
            raise StorageError(f"soft labels {task}@{step}: shard {i} does not match its sha256")
        shards.append({"key": key.rsplit("/", 1)[1], "rows": int(meta["rows"]), "sha256": meta["sha256"]})
        total += int(meta["rows"])
        num_labels = int(meta["numLabels"])
        if num_examples is None:
            num_examples = meta.get("total")
        elif meta.get("total") not in (None, num_examples):
            raise StorageError(f"soft labels {task}@{step}: shard {i} was made for {meta['total']} examples, not {num_examples}")
    if num_examples is None:
        raise StorageError(f"soft labels {task}@{step}: the shards do not record the split size")
    if total != num_examples:
        raise StorageError(f"soft labels {task}@{step}: {total} rows for {num_examples} training examples")
    manifest = {"task": task, "step": step, "numExamples": num_examples, "numLabels": num_labels, "shards": shards}
    key = manifest_key(task, step)
    storage.put_bytes(key, json.dumps(manifest, indent=1).encode())
    return storage.uri(key)
