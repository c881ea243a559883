"""The shipped images' environments, built by their own Dockerfiles' steps (tests/images/image_env.py),
start: the operator image's entry point comes up against an API server, and the trainer image trains
with a torchjd weighting method. Before: the operator's pins could not be installed together
(ResolutionImpossible), it lacked tenacity, and the trainer's lacked torchjd."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from tests.conftest import REPO, builtin_task, run_doc
from tests.images.image_env import ImageEnv

pytestmark = pytest.mark.slow  # builds environments from PyPI (cached under .tools/image-envs)


@pytest.fixture(scope="session")
def operator_env() -> ImageEnv:
    return ImageEnv("operator", REPO / "operator" / "Dockerfile", REPO).build()


@pytest.fixture(scope="session")
def trainer_env() -> ImageEnv:
    return ImageEnv("trainer", REPO / "trainer_image" / "Dockerfile", REPO).build()


def entrypoint(dockerfile, env: ImageEnv) -> list[str]:
    """ENTRYPOINT + CMD of a Dockerfile (exec form), the first word resolved in the image's environment."""
    import json

    from tests.images.image_env import parse_dockerfile

    words = []
    for ins in parse_dockerfile(dockerfile):
        if ins.keyword in ("ENTRYPOINT", "CMD"):
            words += json.loads(ins.text)
    return [str(env.bin(words[0])), *words[1:]]


def test_the_operator_image_starts_its_entry_point(operator_env, tmp_path):
    from tests.operator.emulator import EmulatedCluster

    r = subprocess.run([str(operator_env.bin("python")), "-c", "import asyncmtl_operator.handlers, tenacity, boto3"],
                       env=operator_env.environ(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with EmulatedCluster() as cluster:
        env = operator_env.environ() | {"KUBECONFIG": str(cluster.kubeconfig(tmp_path / "kubeconfig")),
                                        "PROMETHEUS_URL": "http://127.0.0.1:9", "ASYNCMTL_OPERATOR_METRICS_PORT": "0"}
        cmd = entrypoint(REPO / "operator" / "Dockerfile", operator_env)
        cmd = [c for c in cmd if c != "--all-namespaces"] + ["--standalone", "--namespace=default"]
        log = tmp_path / "operator.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "AsyncMTL operator: Prometheus at" not in log.read_text():
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
            assert "AsyncMTL operator: Prometheus at" in log.read_text(), log.read_text()[-3000:]
            time.sleep(2)
            assert proc.poll() is None, log.read_text()[-3000:]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_the_trainer_image_trains_with_famo(trainer_env, tmp_path, tiny_model):
    """`weighting.method: famo` (torchjd) through the local runtime, every process from the image's environment."""
    tasks = [builtin_task("sentiment"), builtin_task("topic", "multiclass", numLabels=4)]
    for t in tasks:
        t["data"].update(maxTrainExamples=64, maxValidationExamples=32, maxTestExamples=32)
    doc = run_doc(tasks, model=str(tiny_model), name="famo", method="fixedSteps", weighting={"method": "famo"},
                  training={"batchSize": 8, "maxSteps": 6, "validationInterval": 3},
                  storage={"uri": "file://./store"}, metrics={"pollIntervalSeconds": 0.3})
    (tmp_path / "famo.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    r = subprocess.run([str(trainer_env.bin("asyncmtl")), "run", "famo.yaml", "--no-live"], cwd=tmp_path,
                       env=trainer_env.environ(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Run famo: Succeeded" in r.stdout
    final = json.loads((tmp_path / "store" / "local" / "famo" / "reports" / "final.json").read_text())
    assert final["step"] == 6 and set(final["tasks"]) == {"sentiment", "topic"}
    r = subprocess.run([str(trainer_env.bin("python")), "-c", "import torchjd, quadprog, boto3, asyncmtl_trainer.train"],
                       env=trainer_env.environ(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
