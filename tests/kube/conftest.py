"""Shared helpers of the kube tests: the real wire fixtures, a simulated cluster, a client,
and a TCP proxy that can drop or refuse connections (a real network-level disconnect)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from kubeguard.kube.client import KubeClient
from kubeguard.sim import SimCluster, SimConfig, Timings

REPO = Path(__file__).resolve().parents[2]


def fixtures_dir() -> Path:
    env = os.environ.get("KUBEGUARD_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures" / "k8s-1.36"


def fixture_bytes(rel: str) -> bytes:
    path = fixtures_dir() / rel
    if not path.exists():
        pytest.skip(f"fixture {path} not found (set KUBEGUARD_FIXTURES)")
    return path.read_bytes()


def fixture_json(rel: str) -> Any:
    return json.loads(fixture_bytes(rel))


def metric(registry: CollectorRegistry, metric_name: str, **labels: str) -> float:
    value = registry.get_sample_value(metric_name, labels)
    return 0.0 if value is None else value


async def eventually(
    predicate: Callable[[], Any], within: float = 10.0, message: str = "condition"
) -> Any:
    """Poll until `predicate()` is truthy; fail the test after `within` seconds. Only a bound
    against hangs: no test asserts how fast something happened."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {message}")
        await asyncio.sleep(0.02)


class TcpProxy:
    """A 127.0.0.1 TCP forwarder in front of the simulated API server. TLS passes through
    untouched; `drop_all()` resets every open connection, `pause()` also stops listening
    (clients get connection refused) until `resume()`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._conns.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._conns.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
                    self._conns.discard(w)
            self._tasks.discard(task)

    def drop_all(self) -> None:
        for w in list(self._conns):
            w.transport.abort()

    async def pause(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.drop_all()

    async def resume(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.pause()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def client_for(
    cluster: SimCluster, tmp_path: Path, *, user: str = "admin", port: int | None = None
) -> KubeClient:
    """A KubeClient from the cluster's kubeconfig, optionally through a proxy port."""
    path = tmp_path / f"kubeconfig-{user}-{port or cluster.port}"
    cluster.write_kubeconfig(path, user=user)
    if port is not None:
        doc = yaml.safe_load(path.read_text())
        doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
        path.write_text(yaml.safe_dump(doc))
    return KubeClient.from_path(path)


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    """A simulated cluster without controllers (nothing writes unless the test does)."""
    async with SimCluster(SimConfig(timings=Timings.fast(), controllers=False)) as c:
        yield c


@pytest.fixture
async def kube(cluster: SimCluster, tmp_path: Path) -> AsyncIterator[KubeClient]:
    client = client_for(cluster, tmp_path)
    yield client
    await client.aclose()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()
