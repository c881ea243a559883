"""Malformed-spec sweep: N seeded mutants of every example AsyncMTLRun through `load_run_file`.

    python benchmarks/spec_mutants.py --per-spec 1500

Mutants: a value replaced by an odd one (booleans, huge or negative numbers, .inf/.nan, strings,
lists, maps, null), a key deleted or renamed, and text-level damage (a cut, inserted bytes including
non-UTF-8 ones, a recursive alias, deep nesting, a 5,000-digit integer). Every outcome must be an
accepted spec or a `SpecError` whose issues all name a path; anything else is a crash, printed with
its traceback. Exit status 1 when any mutant crashed.
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from asyncmtl.spec import SpecError, load_run_file  # noqa: E402

ODD = [None, True, False, 0, -1, 2 ** 64, 10 ** 400, 1e308, -1e308, float("inf"), float("nan"), "", "x" * 300,
       "Bad_Name", [], [1, 2], {}, {"a": 1}, "1e3", 0.5, -0.0]


def _paths(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def mutate_doc(doc: dict, rng: random.Random) -> str:
    doc = copy.deepcopy(doc)
    paths = list(_paths(doc))
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        node = doc
        try:
            for k in path[:-1]:
                node = node[k]
            kind = rng.random()
            if kind < 0.15 and isinstance(node, dict):
                node.pop(path[-1], None)
            elif kind < 0.25 and isinstance(node, dict):
                node[f"{path[-1]}x"] = node.pop(path[-1], None)
            else:
                node[path[-1]] = copy.deepcopy(rng.choice(ODD))
        except (KeyError, IndexError, TypeError):
            continue
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def mutate_text(text: str, rng: random.Random) -> bytes:
    data = text.encode()
    kind = rng.randrange(5)
    at = rng.randrange(len(data) + 1)
    if kind == 0:
        return data[:at]
    if kind == 1:
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[at:]
    if kind == 2:
        return data + b"\nloop: &l [*l]\n"
    if kind == 3:
        return data + b"\ndeep: " + b"[" * 3000 + b"]" * 3000 + b"\n"
    return data.replace(b"seed:", b"seed: " + b"7" * 5000 + b" #", 1) if b"seed:" in data else data + b"\nx: " + b"9" * 5000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-spec", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    specs = [p for p in sorted((REPO / "manifests" / "examples").rglob("*.yaml"))
             if (yaml.safe_load(p.read_text()) or {}).get("kind") == "AsyncMTLRun"]
    rng = random.Random(args.seed)
    counts = {"accepted": 0, "SpecError": 0, "crash": 0}
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "mutant.yaml"
        for spec in specs:
            text = spec.read_text()
            doc = yaml.safe_load(text)
            for i in range(args.per_spec):
                target.write_bytes(mutate_text(text, rng) if i % 4 == 3 else mutate_doc(doc, rng).encode())
                try:
                    load_run_file(target)
                    counts["accepted"] += 1
                except SpecError as exc:
                    counts["SpecError"] += 1
                    if not all(issue.path for issue in exc.issues):
                        counts["crash"] += 1
                        print(f"{spec.name} mutant {i}: an issue without a path: {exc}")
                except Exception:  # noqa: BLE001 - what this sweep exists to find
                    counts["crash"] += 1
                    print(f"{spec.name} mutant {i}: crash\n{traceback.format_exc()}")
    total = sum(counts[k] for k in ("accepted", "SpecError"))
    print(f"{len(specs)} example specs x {args.per_spec} mutants = {total} mutants: "
          f"{counts['accepted']} accepted, {counts['SpecError']} refused with a SpecError, {counts['crash']} crashes")
    return 1 if counts["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
