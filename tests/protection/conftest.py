"""Shared helpers of the protection tests: fixtures directory, node/pod builders."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from kubeguard import certs
from kubeguard.admission.registry import group_webhooks
from kubeguard.config import Settings, Threshold
from kubeguard.kube.client import KubeClient
from kubeguard.metrics import AdmissionMetrics
from kubeguard.protection.plugin import build_protection, webhook_configuration
from kubeguard.protection.protector import Protector, Timing
from kubeguard.runtime import Runtime, run_tasks
from kubeguard.server.run import RunningServer, start_server
from kubeguard.sim import SimCluster
from kubeguard.sim.testing import sim_cluster

REPO = Path(__file__).resolve().parents[2]


def fixtures_dir() -> Path:
    env = os.environ.get("KUBEGUARD_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures" / "k8s-1.36"


def load_admission(name: str) -> dict[str, Any]:
    path = fixtures_dir() / "admission" / name
    if not path.exists():
        pytest.skip(f"fixture {path} not found (set KUBEGUARD_FIXTURES)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# --- a kubeguard replica serving /validate over HTTPS against the simulated cluster ----------


NAMESPACE = "kubeguard"
SELF_USER = f"system:serviceaccount:{NAMESPACE}:kubeguard"
FAST = Timing(
    detector_tick=0.05,
    redrive_lease=1.0,
    redrive_retry_initial=0.05,
    redrive_retry_max=0.2,
    redrive_progress=0.1,
)


def make_settings(cert_dir: Path, **overrides: Any) -> Settings:
    base = Settings(
        port=0,
        bind_address="127.0.0.1",
        cert_dir=cert_dir,
        namespace=NAMESPACE,
        service_account="kubeguard",
        notready_threshold=Threshold(count=3),
        notready_window=300.0,
        state_name="kubeguard-state",
    )
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass
class Replica:
    """One kubeguard server (HTTPS on 127.0.0.1) with its protection running."""

    settings: Settings
    runtime: Runtime
    protector: Protector
    server: RunningServer
    kube: KubeClient
    ca_pem: bytes
    stop: asyncio.Event
    tasks: asyncio.Task[None]
    cluster: SimCluster

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, token: str | None = None) -> httpx2.AsyncClient:
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx2.AsyncClient(base_url=self.url, verify=ctx, headers=headers, timeout=10)

    async def review(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST an AdmissionReview to /validate (as the API server does, with ?timeout=5s)."""
        async with self.client() as c:
            resp = await c.post("/validate?timeout=5s", json=body)
        assert resp.status_code == 200, resp.text
        out: dict[str, Any] = resp.json()["response"]
        return out

    def metrics(self) -> str:
        return generate_latest(self.runtime.registry).decode()

    def webhook_configuration(self) -> dict[str, Any]:
        return webhook_configuration(self.settings, self.url, self.ca_pem)

    async def aclose(self) -> None:
        # The simulated API server keeps TLS keep-alive connections to the webhook; close them
        # first so the graceful stop does not wait for them.
        await self.cluster.dispatcher.aclose()
        await self.server.stop()
        self.stop.set()
        await self.tasks
        await self.protector.aclose()
        await self.kube.aclose()


async def start_replica(
    cluster: SimCluster, workdir: Path, *, identity: str = "", **overrides: Any
) -> Replica:
    await cluster.create_namespace(NAMESPACE)
    ca = certs.generate_ca("kubeguard-test-ca")
    serving = certs.generate_serving(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    cert_dir = Path(tempfile.mkdtemp(dir=workdir))
    certs.write_cert_dir(cert_dir, ca, serving)
    settings = make_settings(cert_dir, **overrides)
    kubeconfig = settings.kubeconfig or cluster.write_kubeconfig(
        cert_dir / "kubeconfig", user=SELF_USER
    )
    kube = KubeClient.from_path(kubeconfig)
    runtime = Runtime(settings, registry=CollectorRegistry(), kube=kube)
    protector, specs = build_protection(runtime, timing=FAST, identity=identity or None)
    webhooks = group_webhooks(specs, AdmissionMetrics(runtime.registry))
    server = await start_server(runtime, webhooks, settings)
    stop = asyncio.Event()
    tasks = asyncio.create_task(run_tasks(runtime.tasks, stop))
    replica = Replica(settings, runtime, protector, server, kube, ca.cert_pem, stop, tasks, cluster)
    if not await protector.wait_ready(10.0):
        await replica.aclose()
        raise AssertionError("protection did not become ready")
    return replica


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    # Nodes go Unknown 0.3 s after their last heartbeat; pods tolerate that for 300 s by
    # default (DefaultTolerationSeconds), so no taint eviction happens unless a test asks.
    async with sim_cluster(
        node_monitor_grace_period=0.3,
        node_monitor_period=0.05,
        lease_renew_interval=0.1,
        eviction_rate_interval=0.05,
    ) as c:
        yield c


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
