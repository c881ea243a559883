"""tests/e2e, pointed at the real control plane through KUBECONFIG: every test there that needs no container
runtime passes. `test_api_contract.py` needs only an API server; `test_cluster.py` (the lifecycle with real
images) needs a container runtime, a registry image and cluster DNS, so it stays for kind, k3d or a GPU cluster
(it skips itself without ASYNCMTL_E2E_IMAGE and the other variables it names)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_api_contract_suite_passes_on_the_real_control_plane(control_plane: ControlPlane, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCMTL_E2E_")}
    env["KUBECONFIG"] = str(control_plane.kubeconfig)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "e2e",
                        "tests/e2e/test_api_contract.py", "tests/e2e/test_cluster.py", "-rs"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout[-4000:] + r.stderr[-2000:]
    assert r.returncode == 0, out
    assert "4 passed" in out and "skipped" in out and "ASYNCMTL_E2E_IMAGE" in out, out
