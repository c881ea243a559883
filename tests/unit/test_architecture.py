"""The architecture as a contract: import-linter checks pyproject's [tool.importlinter] contracts
(the pure core imports no adapter, torch, kopf or boto3, nor does the spec package, whose modules
are layered; no import circle under asyncmtl; the trainer imports nothing of the runtimes or the
decisions; the operator nothing of the local runtime)."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO


def _lint(config: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--config", str(config), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_every_architecture_contract_is_kept():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    r = _lint(REPO / "pyproject.toml")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in r.stdout and len(contracts) >= 5


def test_a_broken_contract_fails_the_check(tmp_path):
    """Not vacuous: the same tool refuses what the code really does (the runtime imports the driver)."""
    cfg = tmp_path / "contracts.toml"
    cfg.write_text('[tool.importlinter]\nroot_packages = ["asyncmtl"]\n\n[[tool.importlinter.contracts]]\n'
                   'name = "no driver in the local runtime"\ntype = "forbidden"\nsource_modules = ["asyncmtl.local"]\n'
                   'forbidden_modules = ["asyncmtl.driver"]\n')
    r = _lint(cfg)
    assert r.returncode == 1 and "asyncmtl.local.runtime -> asyncmtl.driver" in r.stdout, r.stdout[-3000:]
