"""Warn mode, break-glass identities and kubeguard's own service account (through the HTTPS
server), and protection's node view across watch disconnects and a 410 Expired re-list."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeguard.sim import SimCluster, SimConfig, Timings

from .conftest import SELF_USER, Replica, fixtures_dir, start_replica

pytestmark = pytest.mark.asyncio


def review(name: str, **user: Any) -> dict[str, Any]:
    path = fixtures_dir() / "admission" / name
    if not path.exists():
        pytest.skip(f"fixture {path} not found")
    data: dict[str, Any] = json.loads(path.read_text())
    if user:
        data["request"]["userInfo"] = user
    return data


async def engaged_replica(cluster: SimCluster, workdir: Path, **settings: Any) -> Replica:
    replica = await start_replica(cluster, workdir, **settings)
    for n in ("victim-node", "x1", "x2", "ok"):
        await cluster.add_node(n)
    await cluster.add_pod("ev-v1", "demo", node="victim-node", running=True)
    cluster.stop_heartbeat("victim-node", "x1", "x2")
    p = replica.protector
    await cluster.wait_for(
        lambda: (
            p.snapshot.intercepting
            and p.pod_index is not None
            and p.pod_index.synced_for("victim-node")
        ),
        message="engaged",
    )
    return replica


async def test_warn_mode_allows_with_a_warning(cluster: SimCluster, workdir: Path) -> None:
    replica = await engaged_replica(cluster, workdir, mode="warn")
    try:
        for name in (
            "pod-delete-by-node-controller.json",
            "pod-status-patch-disruption-target-by-node-controller.json",
            "pod-eviction-policy-v1.json",
        ):
            resp = await replica.review(review(name))
            assert resp["allowed"] is True, name
            (warning,) = resp["warnings"]
            assert warning.startswith("(warn mode, allowed)") and "victim-node" in warning
        metrics = replica.metrics()
        assert 'eviction_allowed_total{operation="eviction",reason="warn-mode"} 1.0' in metrics
        assert "eviction_intercepted_total{" not in metrics
        assert replica.protector.status()["mode"] == "warn"
    finally:
        await replica.aclose()


async def test_break_glass_and_own_service_account_are_allowed_and_audited(
    cluster: SimCluster, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    replica = await engaged_replica(
        cluster, workdir, break_glass_groups=("oncall",), break_glass_users=("root-sre",)
    )
    try:
        caplog.set_level(logging.INFO, logger="kubeguard.protection.audit")
        name = "pod-delete-by-node-controller.json"
        assert (await replica.review(review(name)))["allowed"] is False
        for user in (
            {"username": "carol", "groups": ["oncall", "system:authenticated"]},
            {"username": "root-sre", "groups": ["system:authenticated"]},
            {"username": SELF_USER, "groups": ["system:serviceaccounts"]},
        ):
            resp = await replica.review(review(name, **user))
            assert resp["allowed"] is True, user
        # not a break-glass group
        resp = await replica.review(
            review(name, username="dave", groups=["dev-team", "system:authenticated"])
        )
        assert resp["allowed"] is False
        audits = [r for r in caplog.records if getattr(r, "audit", False)]
        assert [r.user for r in audits] == ["carol", "root-sre", SELF_USER]  # type: ignore[attr-defined]
        assert {r.reason for r in audits} == {"break-glass", "kubeguard"}  # type: ignore[attr-defined]
    finally:
        await replica.aclose()


# --- node view across disconnects and 410 Expired ----------------------------------------------


class Proxy:
    """A 127.0.0.1 TCP forwarder in front of the simulated API server; `pause()` resets every
    connection and refuses new ones until `resume()` (a network partition)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    async def pause(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def resume(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)


def proxied_kubeconfig(cluster: SimCluster, path: Path, port: int) -> Path:
    cluster.write_kubeconfig(path, user=SELF_USER)
    doc = yaml.safe_load(path.read_text())
    doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_node_view_survives_disconnect_and_410_relist(workdir: Path) -> None:
    timings = Timings.fast(
        node_monitor_grace_period=0.3, node_monitor_period=0.05, lease_renew_interval=0.1
    )
    # A small watch history stands for a compacted etcd: a watch resuming from an old
    # resourceVersion gets the real 410 ERROR event and must re-list.
    async with SimCluster(SimConfig(timings=timings, watch_history_size=5)) as cluster:
        proxy = Proxy(cluster.port)
        await proxy.start()
        await cluster.add_nodes("w", 5)
        # The replica reaches the API server through the proxy.
        kubeconfig = proxied_kubeconfig(cluster, workdir / "proxied-kubeconfig", proxy.port)
        replica = await start_replica(cluster, workdir, kubeconfig=kubeconfig)
        p = replica.protector
        try:
            # 1. A dropped connection: the watch reconnects, nothing is missed.
            await proxy.pause()
            await proxy.resume()
            cluster.stop_heartbeat("w1")
            await cluster.wait_for(lambda: "w1" in p.snapshot.protected_nodes, message="w1")

            # 2. Partitioned while three more nodes fail (many node events: history gone).
            await proxy.pause()
            cluster.stop_heartbeat("w2", "w3")
            await cluster.wait_for(
                lambda: all(cluster.node_ready(n) == "Unknown" for n in ("w2", "w3")),
                message="nodes Unknown in the cluster",
            )
            for i in range(6, 12):
                await cluster.add_node(f"w{i}")
            assert not p.snapshot.intercepting  # blind, and still serving its last view
            await proxy.resume()
            await cluster.wait_for(lambda: p.snapshot.intercepting, message="engaged after re-list")
            assert {"w1", "w2", "w3"} <= p.snapshot.protected_nodes
            assert len(p.monitor.nodes) == 11
            metrics = replica.metrics()
            assert 'reflector_relists_total{resource="nodes"}' in metrics
            assert 'reflector_watch_restarts_total{reason="expired",resource="nodes"}' in metrics
        finally:
            await replica.aclose()
            await proxy.pause()
