"""Fixtures for tests against a real control plane (tests/cluster/controlplane.py).

The binaries come from `hack/controlplane/build.sh` (nothing is built here): without them the tests
skip, except in CI ($CI set), where they fail.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest

from tests.cluster.controlplane import BIN_DIR, ControlPlane, FakeNode, missing_binaries
from tests.cluster.node_agent import NodeAgent


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory) -> Iterator[ControlPlane]:
    missing = missing_binaries()
    if missing:
        reason = f"control-plane binaries missing in {BIN_DIR} ({', '.join(missing)}): run hack/controlplane/build.sh"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason)
        pytest.skip(reason)
    cp = ControlPlane(workdir=tmp_path_factory.mktemp("controlplane"))
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted afterwards."""
    name = control_plane.create_namespace(f"t-{uuid.uuid4().hex[:8]}")
    yield name
    control_plane.delete_namespace(name)


@pytest.fixture
def gpu_node(control_plane: ControlPlane) -> Iterator[FakeNode]:
    """One fake Node with a single nvidia.com/gpu, removed afterwards."""
    node = control_plane.add_fake_node(f"gpu-{uuid.uuid4().hex[:6]}", gpus=1)
    yield node
    control_plane.remove_fake_node(node.name)


@pytest.fixture
def node_agent(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Callable[..., NodeAgent]]:
    """A factory of started `NodeAgent`s (tests/cluster/node_agent.py): `node_agent(images, node=None, **kw)`
    runs the pods of Node `node` (by default a fresh fake Node, removed afterwards) with `images` (container
    image -> a folder whose bin/ goes first on PATH). Every agent is stopped at the end of the test."""
    agents: list[NodeAgent] = []

    def make(images: Mapping[str, Any], node: str | None = None, **kwargs: Any) -> NodeAgent:
        name = node or f"agent-{uuid.uuid4().hex[:6]}"
        agent = NodeAgent(control_plane, name, images, tmp_path / f"node-agent-{len(agents)}-{name}", **kwargs)
        agents.append(agent)
        return agent.start()

    yield make
    for agent in reversed(agents):
        agent.stop()
