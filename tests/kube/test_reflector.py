"""The reflector against the simulated API server over HTTPS: list (paginated) + watch,
selectors, BOOKMARKs, the 410 ERROR event and re-list, and real network disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kubeguard.kube.client import KubeClient
from kubeguard.kube.objects import NodeView
from kubeguard.kube.reflector import Backoff, Reflector
from kubeguard.sim import SimCluster, SimConfig, Timings
from kubeguard.sim.controllers import NODES

from .conftest import TcpProxy, client_for, eventually, metric

FAST = (1.0, 2.0)  # watch timeoutSeconds range for tests


class Recorder:
    def __init__(self, refl: Reflector[NodeView]) -> None:
        self.events: list[tuple[str, str]] = []
        refl.add_handler(
            on_add=lambda n: self.events.append(("add", n.metadata.name)),
            on_update=lambda o, n: self.events.append(("update", n.metadata.name)),
            on_delete=lambda n: self.events.append(("delete", n.metadata.name)),
        )


def node_reflector(kube: KubeClient, registry: CollectorRegistry, **kw: Any) -> Reflector[NodeView]:
    kw.setdefault("watch_timeout", FAST)
    kw.setdefault("backoff", Backoff(initial=0.05, maximum=0.3))
    return Reflector(kube, "/api/v1/nodes", NodeView, resource="nodes", registry=registry, **kw)


async def test_list_then_watch_sees_adds_updates_deletes(
    cluster: SimCluster, kube: KubeClient, registry: CollectorRegistry
) -> None:
    await cluster.add_nodes("w", 5)
    refl = node_reflector(kube, registry, page_size=2)  # 3 pages
    rec = Recorder(refl)
    refl.start()
    try:
        assert await refl.wait_synced(10)
        assert refl.has_synced and sorted(refl.keys()) == ["w1", "w2", "w3", "w4", "w5"]
        assert sorted(rec.events) == [("add", f"w{i}") for i in range(1, 6)]
        list_rv = int(refl.resource_version)

        await cluster.add_node("w6")
        await cluster.cordon("w2")
        await cluster.delete_node("w3")
        await eventually(lambda: ("delete", "w3") in rec.events, message="delete of w3")
        await eventually(
            lambda: refl.get("w2") is not None and refl.get("w2").spec.unschedulable,  # type: ignore[union-attr]
            message="cordon of w2",
        )
        assert ("add", "w6") in rec.events and ("update", "w2") in rec.events
        assert "w3" not in refl and refl.get("w6") is not None
        assert int(refl.resource_version) > list_rv
        assert len(refl) == 5
    finally:
        await refl.aclose()
    assert metric(registry, "reflector_relists_total", resource="nodes") == 0


async def test_label_selector_filters_and_objects_leave_the_selection(
    cluster: SimCluster, kube: KubeClient, registry: CollectorRegistry
) -> None:
    await cluster.add_node("cp", control_plane=True)
    await cluster.add_node("worker", labels={"pool": "a"})
    refl = node_reflector(
        kube, registry, label_selector="!node-role.kubernetes.io/control-plane,pool in (a,b)"
    )
    rec = Recorder(refl)
    refl.start()
    try:
        assert await refl.wait_synced(10)
        assert refl.keys() == ["worker"]
        await cluster.add_node("late", labels={"pool": "b"})
        await eventually(lambda: "late" in refl, message="late node added")
        # Relabelling a node out of the selection arrives as a DELETED event.
        await cluster.api.patch(
            NODES,
            "",
            "late",
            "application/merge-patch+json",
            {"metadata": {"labels": {"pool": "c"}}},
            cluster.admin,
        )
        await eventually(lambda: ("delete", "late") in rec.events, message="late leaves")
        assert refl.keys() == ["worker"]
        assert ("add", "cp") not in rec.events
    finally:
        await refl.aclose()


async def test_bookmarks_advance_the_resource_version_without_events(
    cluster: SimCluster, kube: KubeClient, registry: CollectorRegistry
) -> None:
    """No node matches, so no event can move the resourceVersion: only BOOKMARKs do (the sim
    sends one per second, as kube-apiserver does about once a minute)."""
    await cluster.add_node("w1")
    refl = node_reflector(
        kube, registry, label_selector="kubeguard.io/none=x", watch_timeout=(30.0, 30.0)
    )
    rec = Recorder(refl)
    refl.start()
    try:
        assert await refl.wait_synced(10)
        start = int(refl.resource_version)
        for i in range(3):  # other writes move the server's resourceVersion
            await cluster.add_node(f"other-{i}")
        await eventually(lambda: int(refl.resource_version) > start, message="bookmark")
        assert rec.events == []
        assert (
            metric(registry, "reflector_watch_restarts_total", resource="nodes", reason="closed")
            == 0
        )  # the same stream carried the bookmark
    finally:
        await refl.aclose()


@pytest.fixture
async def small_history() -> AsyncIterator[SimCluster]:
    """A cluster whose watch history keeps only 5 events per resource, like a compacted
    etcd: a watch from an older resourceVersion gets the 410 ERROR event."""
    cfg = SimConfig(timings=Timings.fast(), controllers=False, watch_history_size=5)
    async with SimCluster(cfg) as c:
        yield c


@pytest.fixture
async def proxy(small_history: SimCluster) -> AsyncIterator[TcpProxy]:
    p = TcpProxy(small_history.port)
    await p.start()
    yield p
    await p.stop()


async def test_410_expired_relists_and_store_converges(
    small_history: SimCluster, proxy: TcpProxy, tmp_path: Path, registry: CollectorRegistry
) -> None:
    cluster = small_history
    await cluster.add_nodes("w", 3)
    kube = client_for(cluster, tmp_path, port=proxy.port)
    refl = node_reflector(kube, registry, watch_timeout=(30.0, 30.0))
    rec = Recorder(refl)
    refl.start()
    try:
        assert await refl.wait_synced(10)
        await proxy.pause()  # the reflector loses its stream and cannot reconnect
        await cluster.delete_node("w1")
        await cluster.cordon("w2")
        for i in range(4, 10):
            await cluster.add_node(f"w{i}")
        rec.events.clear()
        await proxy.resume()
        expected = sorted(n["metadata"]["name"] for n in cluster.nodes())
        await eventually(lambda: sorted(refl.keys()) == expected, message="store converges")
    finally:
        await refl.aclose()
        await kube.aclose()
    assert (
        metric(registry, "reflector_watch_restarts_total", resource="nodes", reason="expired") >= 1
    )
    assert metric(registry, "reflector_relists_total", resource="nodes") >= 1
    # The re-list synthesized what the lost watch would have delivered.
    assert ("delete", "w1") in rec.events and ("update", "w2") in rec.events
    assert {("add", f"w{i}") for i in range(4, 10)} <= set(rec.events)
    assert refl.get("w2").spec.unschedulable  # type: ignore[union-attr]


async def test_disconnect_reconnects_with_backoff_from_last_resource_version(
    cluster: SimCluster, tmp_path: Path, registry: CollectorRegistry
) -> None:
    proxy = TcpProxy(cluster.port)
    await proxy.start()
    await cluster.add_nodes("w", 2)
    kube = client_for(cluster, tmp_path, port=proxy.port)
    refl = node_reflector(
        kube, registry, watch_timeout=(30.0, 30.0), backoff=Backoff(initial=0.05, maximum=0.2)
    )
    rec = Recorder(refl)
    refl.start()
    try:
        assert await refl.wait_synced(10)
        # 1. A reset of the established stream: reconnect, nothing lost, no re-list.
        proxy.drop_all()
        await cluster.add_node("w3")
        await eventually(lambda: "w3" in refl, message="w3 after reconnect")

        # 2. The server is unreachable for a while: retries back off instead of spinning.
        await proxy.pause()
        await eventually(lambda: refl.last_error is not None, message="failure noticed")
        await asyncio.sleep(1.0)
        failures = metric(
            registry, "reflector_watch_restarts_total", resource="nodes", reason="network"
        )
        # Backoff 0.05 s doubling to 0.2 s: about 8 attempts in a second; a busy loop
        # would make thousands.
        assert 1 <= failures <= 30
        await cluster.add_node("w4")
        await cluster.delete_node("w1")
        await proxy.resume()
        await eventually(lambda: "w4" in refl and "w1" not in refl, message="catch-up")
        assert refl.last_error is None
    finally:
        await refl.aclose()
        await kube.aclose()
        await proxy.stop()
    assert metric(registry, "reflector_relists_total", resource="nodes") == 0
    assert ("delete", "w1") in rec.events


async def test_unauthorized_watch_backs_off_and_reports(
    cluster: SimCluster, tmp_path: Path, registry: CollectorRegistry
) -> None:
    kube = client_for(cluster, tmp_path, user="bob")  # no permissions
    refl = node_reflector(kube, registry)
    refl.start()
    try:
        await eventually(lambda: refl.last_error is not None, message="error reported")
        assert "403" in (refl.last_error or "") and not refl.has_synced
        assert not await refl.wait_synced(0.3)
    finally:
        await refl.aclose()
        await kube.aclose()
    assert (
        metric(registry, "reflector_watch_restarts_total", resource="nodes", reason="http_error")
        >= 1
    )


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.next() == 1.0
    j = Backoff(initial=1.0, maximum=100.0, jitter=1.0)
    delays = [j.next() for _ in range(4)]
    for base, d in zip([1.0, 2.0, 4.0, 8.0], delays, strict=True):
        assert base <= d <= 2 * base


async def test_handler_errors_do_not_stop_the_reflector(
    cluster: SimCluster, kube: KubeClient, registry: CollectorRegistry
) -> None:
    await cluster.add_node("w1")
    refl = node_reflector(kube, registry)

    def boom(_node: NodeView) -> None:
        raise RuntimeError("handler bug")

    refl.add_handler(on_add=boom)
    rec = Recorder(refl)
    refl.start()
    try:
        assert await refl.wait_synced(10)
        await cluster.add_node("w2")
        await eventually(lambda: ("add", "w2") in rec.events, message="w2")
        # A handler registered after the sync gets the existing objects replayed.
        late: list[str] = []
        refl.add_handler(on_add=lambda n: late.append(n.metadata.name))
        assert sorted(late) == ["w1", "w2"]
    finally:
        await refl.aclose()
