"""The event recorder against the simulated API server: the core/v1 Event shape, aggregation,
de-duplication by PATCH, the per-object rate limit and the bounded queue."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from kubeguard.kube.client import KubeClient
from kubeguard.kube.events import NORMAL, WARNING, EventRecorder, ObjectReference
from kubeguard.kube.objects import NodeView, PodView
from kubeguard.kube.rest import call
from kubeguard.sim import SimCluster

from .conftest import fixture_json, metric


async def list_events(kube: KubeClient, namespace: str) -> list[dict[str, Any]]:
    raw = await call(kube.http, "GET", f"/api/v1/namespaces/{namespace}/events")
    items: list[dict[str, Any]] = msgspec.json.decode(raw)["items"]
    return [e for e in items if e.get("source", {}).get("component") == "kubeguard"]


async def pod_ref(cluster: SimCluster, name: str) -> ObjectReference:
    pod = await cluster.add_pod(name, "demo")
    return ObjectReference.pod(msgspec.convert(pod, PodView))


async def test_burst_becomes_one_event_then_count_is_patched(
    cluster: SimCluster, kube: KubeClient
) -> None:
    registry = CollectorRegistry()
    rec = EventRecorder(kube, instance="kubeguard-7d9f-abc", registry=registry, flush_interval=0.05)
    ref = await pod_ref(cluster, "victim")
    for _ in range(5):  # the taint-eviction controller's 5 denied attempts
        rec.record(ref, WARNING, "EvictionDenied", "node w1 is NotReady; protected")
    await rec.flush()
    (event,) = await list_events(kube, "demo")
    assert event["count"] == 5 and event["type"] == "Warning"
    assert event["reason"] == "EvictionDenied"
    assert event["involvedObject"] == {
        "kind": "Pod",
        "namespace": "demo",
        "name": "victim",
        "uid": ref.uid,
        "apiVersion": "v1",
        "resourceVersion": ref.resource_version,
    }
    assert event["source"] == {"component": "kubeguard"}
    assert event["reportingComponent"] == "kubeguard"
    assert event["reportingInstance"] == "kubeguard-7d9f-abc"
    assert event["metadata"]["name"].startswith("victim.")
    # Same keys as the real capture (our body is a client request, so minus server fields).
    real = fixture_json("api/event-create-core-v1.json")
    assert set(real) - {"kind", "apiVersion"} <= set(event) | {"kind", "apiVersion"}

    rec.record(ref, WARNING, "EvictionDenied", "node w1 is NotReady; protected")
    rec.record(ref, WARNING, "EvictionDenied", "node w1 is NotReady; protected")
    await rec.flush()
    (event2,) = await list_events(kube, "demo")
    assert event2["metadata"]["name"] == event["metadata"]["name"]
    assert event2["count"] == 7
    assert event2["lastTimestamp"] >= event["firstTimestamp"]

    rec.record(ref, NORMAL, "Released", "protection released")
    await rec.flush()
    assert len(await list_events(kube, "demo")) == 2
    assert metric(registry, "events_sent_total", action="create") == 2
    assert metric(registry, "events_sent_total", action="patch") == 1


async def test_patch_of_a_vanished_event_creates_a_new_one(
    cluster: SimCluster, kube: KubeClient
) -> None:
    rec = EventRecorder(kube, instance="i", flush_interval=0.05)
    ref = await pod_ref(cluster, "p")
    rec.record(ref, WARNING, "R", "m")
    await rec.flush()
    (event,) = await list_events(kube, "demo")
    await call(kube.http, "DELETE", f"/api/v1/namespaces/demo/events/{event['metadata']['name']}")
    rec.record(ref, WARNING, "R", "m")
    await rec.flush()
    (again,) = await list_events(kube, "demo")
    assert again["metadata"]["name"] != event["metadata"]["name"] and again["count"] == 1


async def test_rate_limit_defers_without_losing_the_count(
    cluster: SimCluster, kube: KubeClient
) -> None:
    registry = CollectorRegistry()
    rec = EventRecorder(
        kube, instance="i", registry=registry, flush_interval=0.05, burst=2, refill_seconds=0.3
    )
    ref = await pod_ref(cluster, "noisy")
    for reason in ("A", "B", "C"):
        rec.record(ref, WARNING, reason, "msg")
    await rec.flush()
    assert sorted(e["reason"] for e in await list_events(kube, "demo")) == ["A", "B"]
    rec.record(ref, WARNING, "C", "msg")  # merges into the deferred aggregate
    task = asyncio.create_task(rec.run())  # retries the deferred one when a token is back
    try:
        found: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + 10
        while not found:
            assert asyncio.get_running_loop().time() < deadline, "deferred event never sent"
            await asyncio.sleep(0.05)
            found = [e for e in await list_events(kube, "demo") if e["reason"] == "C"]
        assert found[0]["count"] == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert metric(registry, "events_dropped_total", reason="rate_limited") == 0


async def test_full_queue_drops_and_counts(cluster: SimCluster, kube: KubeClient) -> None:
    registry = CollectorRegistry()
    rec = EventRecorder(kube, instance="i", registry=registry, queue_size=2)
    ref = ObjectReference("Pod", "x", "demo", "uid-x")
    for i in range(5):
        rec.record(ref, WARNING, "R", f"m{i}")  # never blocks
    assert metric(registry, "events_dropped_total", reason="queue_full") == 3


async def test_cluster_scoped_object_events_go_to_default(
    cluster: SimCluster, kube: KubeClient
) -> None:
    node = msgspec.convert(await cluster.add_node("w1"), NodeView)
    rec = EventRecorder(kube, instance="i", flush_interval=0.05)
    rec.record(ObjectReference.node(node), WARNING, "ProtectionEngaged", "x" * 5000)
    await rec.flush()
    (event,) = await list_events(kube, "default")
    assert event["involvedObject"]["kind"] == "Node" and "namespace" not in event["involvedObject"]
    assert len(event["message"]) == 1024 and event["message"].endswith("...")


async def test_recorder_without_a_cluster_is_a_no_op() -> None:
    rec = EventRecorder(None, instance="i")
    rec.record(ObjectReference("Pod", "x", "demo"), WARNING, "R", "m")
    await rec.flush()
