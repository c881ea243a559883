"""`asyncmtl run` rejects a malformed spec before anything starts, naming the field or file:line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import builtin_task, run_doc


def write_spec(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def run_cli(tmp_path: Path, spec: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asyncmtl.cli", "run", str(spec), "--workdir", str(tmp_path / "wd"),
                           "--no-live"], capture_output=True, text=True, cwd=tmp_path, timeout=120)


def assert_nothing_started(tmp_path: Path) -> None:
    """Nothing was created: no run folder, no storage (run_doc's default storage is ./runs)."""
    assert not (tmp_path / "wd").exists() and not (tmp_path / "runs").exists()


def jsonl_task(tmp_path: Path, rows: list[dict]) -> dict:
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"name": "t", "type": "binary", "data": {"train": str(p), "validation": str(p)}}


def test_unknown_field(tmp_path):
    doc = run_doc([builtin_task("sentiment", bogus=1)])
    r = run_cli(tmp_path, write_spec(tmp_path, doc))
    assert r.returncode == 2
    assert "run.yaml:" in r.stderr and "spec.tasks[0].bogus: unknown field" in r.stderr
    assert_nothing_started(tmp_path)


def test_patience_zero(tmp_path):
    r = run_cli(tmp_path, write_spec(tmp_path, run_doc([builtin_task("sentiment", patience=0)])))
    assert r.returncode == 2 and "spec.tasks[0].patience: must be >= 1" in r.stderr
    assert_nothing_started(tmp_path)


def test_missing_data_file(tmp_path):
    t = {"name": "t", "type": "binary", "data": {"train": "missing/train.jsonl", "validation": "missing/val.jsonl"}}
    r = run_cli(tmp_path, write_spec(tmp_path, run_doc([t])))
    assert r.returncode == 2 and "missing/train.jsonl: file not found" in r.stderr
    assert_nothing_started(tmp_path)


def test_label_out_of_range(tmp_path):
    t = jsonl_task(tmp_path, [{"text": "fine", "label": 1}, {"text": "odd", "label": 5}])
    r = run_cli(tmp_path, write_spec(tmp_path, run_doc([t])))
    assert r.returncode == 2 and "train.jsonl:2: label 5: out of range [0, 1]" in r.stderr
    assert_nothing_started(tmp_path)


def test_missing_model(tmp_path):
    doc = run_doc([builtin_task("sentiment")], model=str(tmp_path / "no-model"))
    r = run_cli(tmp_path, write_spec(tmp_path, doc))
    assert r.returncode == 2 and "spec.model.pretrained" in r.stderr and "no-model" in r.stderr
    assert_nothing_started(tmp_path)


def test_validate_command(tmp_path):
    good = write_spec(tmp_path, run_doc([builtin_task("sentiment")]))
    r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "validate", str(good), "--data"], capture_output=True, text=True)
    assert r.returncode == 0 and "ok (t, 1 tasks)" in r.stdout


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asyncmtl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_validate_checks_every_file_and_fails_if_any_is_bad(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(run_doc([builtin_task("sentiment")])))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(run_doc([builtin_task("sentiment", patience=0)])))
    r = _cli("validate", str(bad), str(good), str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert r.returncode == 2
    assert "good.yaml: ok" in r.stdout  # checked although an earlier file was bad
    assert "bad.yaml" in r.stderr and "patience" in r.stderr and "missing.yaml" in r.stderr
    assert "Traceback" not in r.stderr


def test_version_and_global_flags_after_the_subcommand(tmp_path):
    from importlib.metadata import version

    r = _cli("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"asyncmtl {version('asyncmtl')}"
    spec = tmp_path / "good.yaml"
    spec.write_text(yaml.safe_dump(run_doc([builtin_task("sentiment")])))
    for args in (("-v", "validate", str(spec)), ("validate", str(spec), "-v"), ("validate", "--verbose", str(spec))):
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr)
