"""Writing and reading soft-label shards (tensors); layout and manifest: `asyncmtl.softlabels`."""
from __future__ import annotations

import json

import torch

from asyncmtl.softlabels import MANIFEST, shard_key
from asyncmtl.storage import RunStorage, StorageError, sha256_bytes
from asyncmtl.storage_factory import open_uri


def write_shard(storage: RunStorage, task: str, step: int, index: int, count: int,
                ids: torch.Tensor, outputs: torch.Tensor, total: int | None = None) -> str:
    """Write one shard (`ids: (rows,)`, `outputs: (rows, num_labels)` stored as fp16) and its
    sidecar JSON (rows, numLabels, sha256, and `total`, the split size). Returns the shard key."""
    from safetensors.torch import save

    data = save({"ids": ids.to(torch.int64).contiguous(), "outputs": outputs.to(torch.float16).contiguous()})
    key = shard_key(task, step, index, count)
    storage.put_bytes(key, data)
    meta = {"rows": int(ids.shape[0]), "numLabels": int(outputs.shape[1]), "sha256": sha256_bytes(data), "total": total}
    storage.put_bytes(key + ".json", json.dumps(meta).encode())
    return key


def read_soft_labels(manifest_uri: str, *, expected_examples: int | None = None) -> torch.Tensor:
    """Load the soft labels a manifest lists: (num_examples, num_labels) float32, row i = example id i.

    Raises:
        StorageError: manifest or shard missing, checksum mismatch, or a row count that is not
            the expected number of training examples.
    """
    from safetensors.torch import load

    storage, mkey = open_uri(manifest_uri)
    if not mkey.endswith(MANIFEST):
        raise StorageError(f"{manifest_uri}: not a soft-label manifest")
    folder = mkey[: -len(MANIFEST)]
    m = json.loads(storage.get_bytes(mkey))
    n = int(m["numExamples"])
    if expected_examples is not None and n != expected_examples:
        raise StorageError(f"{manifest_uri}: {n} examples, but the training split has {expected_examples}")
    out = torch.empty(n, int(m["numLabels"]), dtype=torch.float32)
    seen = torch.zeros(n, dtype=torch.bool)
    for s in m["shards"]:
        data = storage.get_bytes(folder + s["key"])
        if sha256_bytes(data) != s["sha256"]:
            raise StorageError(f"{manifest_uri}: shard {s['key']} does not match the manifest's sha256")
        t = load(data)
        out[t["ids"]] = t["outputs"].float()
        seen[t["ids"]] = True
    if not bool(seen.all()):
        raise StorageError(f"{manifest_uri}: {int((~seen).sum())} examples have no soft label")
    return out
