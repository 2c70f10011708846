"""Driving the simulated API server with lightkube and with plain HTTP (httpx2)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Node, Pod

from kubeguard.sim import SimCluster, SimConfig, Timings
from kubeguard.sim.controllers import NODES

from .conftest import fixture, http_client


async def test_lightkube_reads_writes_and_watches(sim_cluster: SimCluster) -> None:
    c = sim_cluster
    await c.add_nodes("w", 2)
    await c.add_pods_per_node(2, "demo")
    await c.wait_pods_running()
    client = AsyncClient(KubeConfig.from_file(str(c.kubeconfig_path)))
    try:
        nodes = [n async for n in client.list(Node)]
        assert sorted(n.metadata.name for n in nodes) == ["w1", "w2"]
        ready = {cond.type: cond.status for cond in nodes[0].status.conditions}
        assert ready["Ready"] == "True"
        pods = [p async for p in client.list(Pod, namespace="demo", fields={"spec.nodeName": "w1"})]
        assert sorted(p.metadata.name for p in pods) == ["w1-pod-0", "w1-pod-1"]
        paged = [p async for p in client.list(Pod, namespace="*", chunk_size=1)]
        assert len(paged) == 4
        lease = await client.get(Lease, "w1", namespace="kube-node-lease")
        assert lease.spec.holderIdentity == "w1"

        cm = await client.create(
            ConfigMap(metadata=ObjectMeta(name="cfg", namespace="demo"), data={"a": "1"})
        )
        cm.data = {"a": "2"}
        updated = await client.replace(cm)
        assert updated.data == {"a": "2"}
        with pytest.raises(ApiError) as err:
            await client.replace(cm)  # stale resourceVersion
        assert err.value.status.code == 409 and err.value.status.reason == "Conflict"
        with pytest.raises(ApiError) as err:
            await client.get(Pod, "missing", namespace="demo")
        assert err.value.status.code == 404 and err.value.status.reason == "NotFound"

        events: list[tuple[str, str]] = []

        async def watch() -> None:
            async for etype, pod in client.watch(Pod, namespace="demo"):
                events.append((etype, pod.metadata.name))
                if etype == "DELETED":
                    return

        task = asyncio.create_task(watch())
        await c.wait_for(lambda: len(events) >= 4, 5)
        await client.delete(Pod, "w2-pod-1", namespace="demo", grace_period=0)
        await asyncio.wait_for(task, 5)
        assert ("DELETED", "w2-pod-1") in events
        patched = await client.patch(
            Pod, "w1-pod-0", {"metadata": {"labels": {"x": "y"}}}, namespace="demo"
        )
        assert patched.metadata.labels["x"] == "y"
    finally:
        await client.close()


async def test_http_errors_are_real_status_objects(sim_cluster: SimCluster) -> None:
    c = sim_cluster
    await c.add_node("n1")
    async with http_client(c) as admin, http_client(c, "bob") as bob:
        resp = await admin.get("/api/v1/pods", headers={"Authorization": ""})
        assert resp.status_code == 401 and resp.json()["reason"] == "Unauthorized"
        resp = await admin.get("/api/v1/pods", headers={"Authorization": "Bearer wrong"})
        assert resp.status_code == 401
        resp = await bob.get("/api/v1/namespaces/default/pods")
        assert resp.status_code == 403
        assert resp.json()["message"] == (
            'pods is forbidden: User "bob" cannot list resource "pods" in API group "" in '
            'the namespace "default"'
        )
        resp = await admin.get("/api/v1/namespaces/default/widgets")
        assert resp.status_code == 404 and resp.json()["kind"] == "Status"
        resp = await admin.post(
            "/api/v1/namespaces/default/pods",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert resp.status_code == 400 and resp.json()["reason"] == "BadRequest"
        resp = await admin.post(
            "/api/v1/namespaces/default/pods",
            json={
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "Bad_Name"},
                "spec": {"containers": []},
            },
        )
        body = resp.json()
        assert resp.status_code == 422 and body["reason"] == "Invalid"
        assert {c["field"] for c in body["details"]["causes"]} == {
            "metadata.name",
            "spec.containers",
        }
        resp = await admin.post(
            "/api/v1/namespaces/nowhere/configmaps", json={"metadata": {"name": "x"}}
        )
        assert (
            resp.status_code == 404 and resp.json()["message"] == 'namespaces "nowhere" not found'
        )
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dup"}}
        assert (
            await admin.post("/api/v1/namespaces/default/configmaps", json=cm)
        ).status_code == 201
        resp = await admin.post("/api/v1/namespaces/default/configmaps", json=cm)
        assert resp.status_code == 409 and resp.json()["reason"] == "AlreadyExists"
        resp = await admin.patch(
            "/api/v1/namespaces/default/configmaps/dup",
            content=b"{}",
            headers={"Content-Type": "text/plain"},
        )
        assert resp.status_code == 415
        resp = await admin.patch(
            "/api/v1/namespaces/default/configmaps/dup",
            content=b'[{"op": "remove", "path": "/nope"}]',
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert resp.status_code == 422
        resp = await admin.get("/api/v1/pods", params={"labelSelector": "a in (b"})
        assert resp.status_code == 400
        resp = await admin.get("/api/v1/pods", params={"fieldSelector": "spec.bogus=1"})
        assert resp.status_code == 400
        resp = await admin.get("/api/v1/nodes", params={"limit": "x"})
        assert resp.status_code == 400
        resp = await admin.delete("/api/v1/nodes/n1", params={"dryRun": "All"})
        assert resp.status_code == 200 and c.get("nodes", "", "n1") is not None
        resp = await admin.get("/version")
        assert resp.json()["gitVersion"] == "v1.36.2"


async def test_namespace_gets_metadata_name_label(sim_cluster: SimCluster) -> None:
    async with http_client(sim_cluster) as admin:
        resp = await admin.post(
            "/api/v1/namespaces",
            json={
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "team-a", "labels": {"tier": "gold"}},
            },
        )
        assert resp.status_code == 201
        assert resp.json()["metadata"]["labels"] == {
            "tier": "gold",
            "kubernetes.io/metadata.name": "team-a",
        }
        names = [
            n["metadata"]["name"] for n in (await admin.get("/api/v1/namespaces")).json()["items"]
        ]
        assert "team-a" in names and "kube-node-lease" in names


async def _stream(
    cluster: SimCluster, params: dict[str, str], stop: int, seconds: float = 5.0
) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    async with (
        http_client(cluster) as admin,
        admin.stream(
            "GET", "/api/v1/nodes", params={"watch": "1", **params}, timeout=seconds
        ) as resp,
    ):
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.strip():
                lines.append(json.loads(line))
            if len(lines) >= stop:
                break
    return lines


async def test_watch_replay_bookmarks_and_expired() -> None:
    config = SimConfig(
        timings=Timings.fast(bookmark_interval=0.2), watch_history_size=5, controllers=False
    )
    async with SimCluster(config) as c:
        rv0 = str(c.store.rv)
        await c.add_node("a")
        replay = await _stream(c, {"resourceVersion": rv0}, 1)
        assert replay[0]["type"] == "ADDED" and replay[0]["object"]["metadata"]["name"] == "a"
        marks = await _stream(c, {"allowWatchBookmarks": "true", "resourceVersion": rv0}, 2)
        assert [e["type"] for e in marks] == ["ADDED", "BOOKMARK"]
        ended = await _stream(c, {"timeoutSeconds": "1"}, 10)  # ends by itself after 1 s
        assert [e["type"] for e in ended] == ["ADDED"]
        for i in range(8):
            await c.add_node(f"b{i}")
        expired = await _stream(c, {"resourceVersion": rv0}, 5)
        assert len(expired) == 1
        expected = fixture("api/watch-nodes-too-old-resource-version.jsonl")[0]
        assert expired[0]["type"] == "ERROR"
        obj, exp = expired[0]["object"], expected["object"]
        assert {**obj, "message": ""} == {**exp, "message": ""}
        assert obj["message"].startswith(f"too old resource version: {rv0} (")
        async with http_client(c) as admin:
            resp = await admin.get(
                "/api/v1/nodes", params={"resourceVersion": rv0, "resourceVersionMatch": "Exact"}
            )
            assert resp.status_code == 410
            assert resp.json() == fixture("api/nodes-list-exact-too-old-resource-version-410.json")
            resp = await admin.get("/api/v1/nodes", params={"limit": "2"})
            token = resp.json()["metadata"]["continue"]
            rest = await admin.get("/api/v1/nodes", params={"limit": "100", "continue": token})
            names = [n["metadata"]["name"] for n in resp.json()["items"] + rest.json()["items"]]
            assert names == sorted(names) and len(names) == 9
            assert "continue" not in rest.json()["metadata"]
            sel = await admin.get(
                "/api/v1/nodes", params={"labelSelector": "kubernetes.io/hostname in (a,b1)"}
            )
            assert [n["metadata"]["name"] for n in sel.json()["items"]] == ["a", "b1"]


async def test_filtered_watch_turns_label_change_into_deleted() -> None:
    async with SimCluster(SimConfig(controllers=False)) as c:
        await c.add_node("a", labels={"pool": "x"})
        task = asyncio.create_task(_stream(c, {"labelSelector": "pool=x"}, 2))
        await asyncio.sleep(0.3)
        await c.api.patch(
            NODES,
            "",
            "a",
            "application/merge-patch+json",
            {"metadata": {"labels": {"pool": "y"}}},
            c.admin,
        )
        events = await asyncio.wait_for(task, 5)
        assert [e["type"] for e in events] == ["ADDED", "DELETED"]
