"""PodIndex against the simulated API server: per-node pod watches started on track(),
stopped on untrack(), and the eviction path's lookups."""

from __future__ import annotations

from kubeguard.kube.client import KubeClient
from kubeguard.kube.reflector import Backoff, PodIndex
from kubeguard.sim import SimCluster

from .conftest import eventually


def make_index(kube: KubeClient) -> PodIndex:
    return PodIndex(
        kube, watch_timeout=(5.0, 10.0), backoff=lambda: Backoff(initial=0.05, maximum=0.3)
    )


async def test_track_find_and_untrack(cluster: SimCluster, kube: KubeClient) -> None:
    await cluster.add_nodes("n", 3)
    await cluster.add_pods_per_node(2, namespace="demo")
    index = make_index(kube)
    try:
        assert index.pod_node("demo", "n1-pod-0") is None and not index.synced_for("n1")
        index.track("n1")
        index.track("n1")  # idempotent
        assert index.tracked == {"n1"}
        assert await index.wait_synced("n1", 10)
        assert index.synced_for("n1") and index.all_synced
        assert index.pod_node("demo", "n1-pod-0") == "n1"
        assert index.pod_node("demo", "n1-pod-1") == "n1"
        assert index.pod_node("demo", "n2-pod-0") is None  # not on a tracked node
        assert sorted(p.metadata.name for p in index.pods_on("n1")) == ["n1-pod-0", "n1-pod-1"]
        found = index.get("demo", "n1-pod-0")
        assert found is not None and found.spec.node_name == "n1"

        # Changes on the tracked node flow in through the watch.
        await cluster.add_pod("late", "demo", node="n1")
        await eventually(lambda: index.pod_node("demo", "late") == "n1", message="late pod")
        await cluster.delete_pod("demo", "n1-pod-1", grace_period=0)
        await eventually(
            lambda: index.pod_node("demo", "n1-pod-1") is None,
            message="deleted pod leaves the index",
        )

        index.set_tracked(["n2", "n3"])
        assert index.tracked == {"n2", "n3"}
        assert index.pod_node("demo", "n1-pod-0") is None  # dropped at once on untrack
        assert index.pods_on("n1") == []
        assert await index.wait_synced("n2", 10) and await index.wait_synced("n3", 10)
        assert index.pod_node("demo", "n2-pod-1") == "n2"
        assert index.pod_node("demo", "n3-pod-0") == "n3"
    finally:
        await index.aclose()
    assert index.tracked == frozenset()


async def test_get_pod_fallback(cluster: SimCluster, kube: KubeClient) -> None:
    await cluster.add_node("n1")
    await cluster.add_pod("p", "demo", node="n1")
    index = make_index(kube)
    pod = await index.get_pod("demo", "p")
    assert pod is not None and pod.spec.node_name == "n1" and pod.metadata.uid
    assert await index.get_pod("demo", "missing") is None
    await index.aclose()
