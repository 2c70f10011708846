"""The shared state store against the simulated API server: creation, optimistic
concurrency (409 Conflict and 409 AlreadyExists), watch propagation between replicas, and
the rule that an undecodable document is never overwritten."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from kubeguard.kube.client import KubeClient
from kubeguard.kube.rest import call
from kubeguard.kube.state import StateDecodeError, StateStore
from kubeguard.sim import SimCluster
from kubeguard.sim.util import deepcopy

from .conftest import client_for, eventually, metric

NS = "kubeguard-system"
NAME = "kubeguard-state"


class Doc(msgspec.Struct, frozen=True, kw_only=True):
    disabled: bool = False
    marks: tuple[str, ...] = ()


def add_mark(mark: str):  # type: ignore[no-untyped-def]
    def mutate(doc: Doc) -> Doc:
        return msgspec.structs.replace(doc, marks=(*doc.marks, mark))

    return mutate


def make_store(kube: KubeClient, registry: CollectorRegistry | None = None) -> StateStore[Doc]:
    return StateStore(
        kube,
        NS,
        NAME,
        Doc,
        registry=registry,
        watch_timeout=(5.0, 10.0),
        labels={"app.kubernetes.io/name": "kubeguard"},
    )


@pytest.fixture
async def ns_cluster(cluster: SimCluster) -> SimCluster:
    await cluster.create_namespace(NS)
    return cluster


@pytest.fixture
async def two_clients(
    ns_cluster: SimCluster, tmp_path: Path
) -> AsyncIterator[tuple[KubeClient, KubeClient]]:
    a = client_for(ns_cluster, tmp_path / "a")
    b = client_for(ns_cluster, tmp_path / "b")
    yield a, b
    await a.aclose()
    await b.aclose()


def stored(cluster: SimCluster) -> dict[str, object] | None:
    cm = cluster.get("configmaps", NS, NAME)
    return None if cm is None else json.loads(cm["data"]["state.json"])


async def test_created_on_first_update_and_seen_by_a_second_replica(
    ns_cluster: SimCluster, two_clients: tuple[KubeClient, KubeClient]
) -> None:
    a, b = make_store(two_clients[0]), make_store(two_clients[1])
    changes: list[Doc] = []
    b.on_change(changes.append)
    a.start()
    b.start()
    try:
        assert await a.wait_synced(10) and await b.wait_synced(10)
        assert a.ready and not a.exists and a.current == Doc()
        result = await a.update(lambda d: msgspec.structs.replace(d, disabled=True))
        assert result == Doc(disabled=True)
        assert a.current == Doc(disabled=True)  # the writer sees its own write at once
        cm = ns_cluster.get("configmaps", NS, NAME)
        assert cm is not None and cm["metadata"]["labels"] == {
            "app.kubernetes.io/name": "kubeguard"
        }
        assert stored(ns_cluster) == {"disabled": True, "marks": []}
        await eventually(lambda: b.current.disabled, within=5, message="replica b sees it")
        assert b.exists and changes == [Doc(disabled=True)]

        # An update that changes nothing writes nothing.
        rv = a.resource_version
        await a.update(lambda d: d)
        assert ns_cluster.get("configmaps", NS, NAME)["metadata"]["resourceVersion"] == rv  # type: ignore[index]
    finally:
        await a.aclose()
        await b.aclose()


async def test_conflict_reapplies_the_mutation_and_loses_nothing(
    ns_cluster: SimCluster, two_clients: tuple[KubeClient, KubeClient]
) -> None:
    registry = CollectorRegistry()
    store = make_store(two_clients[0], registry)
    await store.update(add_mark("first"))
    calls: list[Doc] = []

    def racing(doc: Doc) -> Doc:
        calls.append(doc)
        if len(calls) == 1:
            # Another writer commits between our read and our write (a different replica):
            # our PUT carries a stale resourceVersion and must get 409 Conflict.
            cm = deepcopy(ns_cluster.get("configmaps", NS, NAME))
            theirs = json.loads(cm["data"]["state.json"])
            theirs["marks"].append("theirs")
            cm["data"]["state.json"] = json.dumps(theirs)
            ns_cluster.store.replace("configmaps", cm)
        return msgspec.structs.replace(doc, marks=(*doc.marks, "ours"))

    result = await store.update(racing)
    assert len(calls) == 2 and calls[1].marks == ("first", "theirs")
    assert result.marks == ("first", "theirs", "ours")
    assert stored(ns_cluster) == {"disabled": False, "marks": ["first", "theirs", "ours"]}
    assert metric(registry, "state_update_conflicts_total", name=NAME) == 1


async def test_concurrent_writers_on_two_replicas(
    ns_cluster: SimCluster, two_clients: tuple[KubeClient, KubeClient]
) -> None:
    import asyncio

    a, b = make_store(two_clients[0]), make_store(two_clients[1])
    await asyncio.gather(
        *(s.update(add_mark(f"{tag}{i}")) for i in range(8) for s, tag in ((a, "a"), (b, "b")))
    )
    marks = stored(ns_cluster)["marks"]  # type: ignore[index]
    assert sorted(marks) == sorted([f"a{i}" for i in range(8)] + [f"b{i}" for i in range(8)])


async def test_create_race_already_exists_falls_back_to_update(
    ns_cluster: SimCluster, two_clients: tuple[KubeClient, KubeClient]
) -> None:
    store = make_store(two_clients[0])
    calls = 0

    def racing(doc: Doc) -> Doc:
        nonlocal calls
        calls += 1
        if calls == 1:  # another replica creates the object between our GET (404) and POST
            ns_cluster.store.create(
                "configmaps",
                {
                    "metadata": {
                        "name": NAME,
                        "namespace": NS,
                        "uid": "other-replica",
                        "creationTimestamp": "2026-11-22T02:07:14Z",
                    },
                    "data": {"state.json": json.dumps({"marks": ["theirs"]})},
                },
            )
        return msgspec.structs.replace(doc, marks=(*doc.marks, "ours"))

    result = await store.update(racing)
    assert calls == 2 and result.marks == ("theirs", "ours")
    assert stored(ns_cluster) == {"disabled": False, "marks": ["theirs", "ours"]}


async def test_invalid_document_is_reported_and_never_overwritten(
    ns_cluster: SimCluster, two_clients: tuple[KubeClient, KubeClient]
) -> None:
    a = make_store(two_clients[0])
    a.start()
    try:
        assert await a.wait_synced(10)
        await a.update(lambda d: msgspec.structs.replace(d, disabled=True))
        # An operator hand-edits the object and breaks it.
        cm = await call(two_clients[1].http, "GET", f"/api/v1/namespaces/{NS}/configmaps/{NAME}")
        obj = msgspec.json.decode(cm)
        obj["data"]["state.json"] = '{"disabled": "yes please"'
        await call(
            two_clients[1].http, "PUT", f"/api/v1/namespaces/{NS}/configmaps/{NAME}", body=obj
        )
        await eventually(lambda: a.error is not None, message="decode error noticed")
        assert not a.ready
        assert a.current == Doc(disabled=True)  # the last good document is kept
        assert f"{NS}/{NAME}" in (a.error or "") and "state.json" in (a.error or "")
        with pytest.raises(StateDecodeError, match="left untouched"):
            await a.update(add_mark("x"))
        broken = ns_cluster.get("configmaps", NS, NAME)
        assert broken is not None and broken["data"]["state.json"] == '{"disabled": "yes please"'

        # A replica starting now cannot read it either, and is not ready.
        c = make_store(two_clients[1])
        c.start()
        try:
            assert await c.wait_synced(10)
            assert c.error is not None and not c.ready
            with pytest.raises(StateDecodeError):
                await c.read()
        finally:
            await c.aclose()

        # The operator fixes it: everyone recovers.
        obj = msgspec.json.decode(
            await call(two_clients[1].http, "GET", f"/api/v1/namespaces/{NS}/configmaps/{NAME}")
        )
        obj["data"]["state.json"] = '{"disabled": false}'
        await call(
            two_clients[1].http, "PUT", f"/api/v1/namespaces/{NS}/configmaps/{NAME}", body=obj
        )
        await eventually(lambda: a.ready, message="valid again")
        assert a.current == Doc(disabled=False)
    finally:
        await a.aclose()


async def test_deleted_object_means_default_and_is_recreated(
    ns_cluster: SimCluster, two_clients: tuple[KubeClient, KubeClient]
) -> None:
    a = make_store(two_clients[0])
    a.start()
    try:
        assert await a.wait_synced(10)
        await a.update(add_mark("one"))
        await call(two_clients[1].http, "DELETE", f"/api/v1/namespaces/{NS}/configmaps/{NAME}")
        await eventually(lambda: not a.exists, message="deletion seen")
        assert a.current == Doc()
        await a.update(add_mark("two"))
        assert stored(ns_cluster) == {"disabled": False, "marks": ["two"]}
        await eventually(lambda: a.exists and a.current.marks == ("two",), message="recreated")
    finally:
        await a.aclose()
