"""Shared fixtures of the simulated-cluster tests."""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from kubeguard.sim import SimCluster
from kubeguard.sim.testing import sim_cluster as _sim_cluster

FIXTURES = Path(
    os.environ.get(
        "KUBEGUARD_FIXTURES",
        Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "k8s-1.36",
    )
)


def fixture(rel: str) -> Any:
    """A fixture file parsed (a list of events for .jsonl files)."""
    path = FIXTURES / rel
    if not path.exists():
        pytest.skip(f"fixtures not available at {FIXTURES}")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def http_client(cluster: SimCluster, user: str = "admin") -> httpx2.AsyncClient:
    ctx = ssl.create_default_context(cadata=cluster.ca_pem.decode())
    return httpx2.AsyncClient(
        base_url=cluster.url,
        verify=ctx,
        headers={"Authorization": f"Bearer {cluster.token(user)}"},
        timeout=10,
    )


@pytest.fixture
async def sim_cluster() -> AsyncIterator[SimCluster]:
    async with _sim_cluster() as cluster:
        yield cluster
