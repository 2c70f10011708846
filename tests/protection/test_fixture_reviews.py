"""Every captured real AdmissionReview, POSTed to the running HTTPS `/validate` while
protection is engaged by real (simulated) node failures, and once more after release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeguard.config import Threshold
from kubeguard.sim import SimCluster

from .conftest import Replica, fixtures_dir, start_replica

pytestmark = pytest.mark.asyncio

DOWN = ("victim-node", "gc-node", "other-down")
UP = ("steady-1", "steady-2", "drain-node")
PODS = {
    "victim-node": [
        "vic-tol10",
        "vic-protected",
        "ev-v1",
        "ev-v1beta1",
        "ev-denied",
        "ev-dryrun",
        "drain-b",
    ],
    "gc-node": ["gc-orphan"],
    "drain-node": ["drain-a"],
    "steady-1": ["user-del-default", "user-del-force", "user-del-denied"],
    "steady-2": ["on-steady", "label-me"],
}

# (allowed, HTTP code of the denial) with victim-node and gc-node NotReady and protection engaged.
ENGAGED: dict[str, tuple[bool, int | None]] = {
    "pod-create-by-statefulset-controller-web-2.json": (True, None),
    "pod-create-by-user.json": (True, None),
    # the kubelet is always allowed
    "pod-delete-by-kubelet-grace-0-uid-precondition.json": (True, None),
    "pod-delete-by-kubelet-grace-0-uid-precondition-third-admission-call.json": (True, None),
    "pod-status-update-by-kubelet.json": (True, None),
    # taint eviction of pods on the NotReady node: the DisruptionTarget patch and the DELETE
    "pod-status-patch-disruption-target-by-node-controller.json": (False, 403),
    "pod-delete-by-node-controller.json": (False, 403),
    "pod-delete-by-node-controller-denied.json": (False, 403),
    # the API server's second call of an already committed grace-0 delete
    "pod-delete-by-node-controller-second-admission-call.json": (True, None),
    # MarkPodsNotReady (--protect-ready-condition, default on)
    "pod-status-update-mark-not-ready-by-node-controller.json": (False, 403),
    # the disruption controller resetting a stale DisruptionTarget: never fought
    "pod-status-update-disruption-target-reset-by-disruption-controller.json": (True, None),
    # PodGC on a NotReady node
    "pod-status-patch-by-pod-garbage-collector.json": (False, 403),
    "pod-delete-by-pod-garbage-collector.json": (False, 403),
    # pods on Ready nodes
    "pod-delete-by-node-controller-during-full-disruption.json": (True, None),
    "pod-delete-by-user-denied.json": (True, None),
    "pod-delete-by-user-kubectl-default-grace.json": (True, None),
    "pod-delete-by-user-kubectl-force-grace-0.json": (True, None),
    "pod-update-label-by-user.json": (True, None),
    "pod-eviction-by-kubectl-drain.json": (True, None),
    # evictions of pods on the NotReady node: 429 so that kubectl drain retries
    "pod-eviction-by-kubectl-drain-denied.json": (False, 429),
    "pod-eviction-denied.json": (False, 429),
    "pod-eviction-dry-run.json": (False, 429),
    "pod-eviction-policy-v1.json": (False, 429),
    "pod-eviction-policy-v1beta1-body.json": (False, 429),
}


def all_reviews() -> list[Path]:
    files = sorted((fixtures_dir() / "admission").glob("*.json"))
    if not files:
        pytest.skip(f"no fixtures in {fixtures_dir()} (set KUBEGUARD_FIXTURES)")
    return files


async def incident(cluster: SimCluster, workdir: Path, **settings: object) -> Replica:
    for node in DOWN + UP:
        await cluster.add_node(node)
    for node, pods in PODS.items():
        for pod in pods:
            await cluster.add_pod(pod, "demo", node=node, running=True)
    replica = await start_replica(
        cluster,
        workdir,
        notready_threshold=Threshold(2),
        **settings,
    )
    cluster.stop_heartbeat(*DOWN)
    p = replica.protector
    await cluster.wait_for(
        lambda: (
            p.snapshot.intercepting
            and set(DOWN) <= p.snapshot.protected_nodes
            and all(p.pod_index is not None and p.pod_index.synced_for(n) for n in DOWN)
        ),
        message="protection engaged on the failed nodes",
    )
    return replica


async def test_every_captured_review_engaged_then_released(
    cluster: SimCluster, workdir: Path
) -> None:
    replica = await incident(cluster, workdir)
    try:
        files = all_reviews()
        seen = set()
        for path in files:
            body = json.loads(path.read_text())
            resp = await replica.review(body)
            assert resp["uid"] == body["request"]["uid"]
            expected = ENGAGED.get(path.name, (True, None))
            assert resp["allowed"] is expected[0], (path.name, resp)
            if not expected[0]:
                status = resp["status"]
                assert status["code"] == expected[1], path.name
                pod = body["request"]["name"]
                node = "gc-node" if pod == "gc-orphan" else "victim-node"
                assert f"demo/{pod}" in status["message"]
                assert f"node {node} is NotReady" in status["message"]
                assert "kubeguard disable" in status["message"]
                assert "/callback/disable-interception" in status["message"]
            seen.add(path.name)
        assert set(ENGAGED) <= seen, "a fixture named in the table is missing"

        metrics = replica.metrics()
        assert 'eviction_intercepted_total{operation="eviction",reason="node-not-ready"} 5.0' in (
            metrics
        )
        assert 'eviction_intercepted_total{operation="delete",reason="node-not-ready"} 3.0' in (
            metrics
        )
        assert 'eviction_allowed_total{operation="delete",reason="kubelet"} 1.0' in metrics
        # the 2nd/3rd admission calls of committed grace-0 deletes
        assert 'eviction_allowed_total{operation="delete",reason="deletion-committed"} 2.0' in (
            metrics
        )
        assert (
            'eviction_allowed_total{operation="eviction",reason="node-not-protected"} 1.0'
            in metrics
        )
        assert (
            'eviction_intercepted_total{operation="status-update",reason="node-not-ready"} 3.0'
            in (metrics)
        )
        assert "protection_engaged 1.0" in metrics
        assert "node_notready_count 3.0" in metrics

        # PodGC after the node object was deleted: nothing left to protect.
        await cluster.delete_node("gc-node")
        await cluster.wait_for(lambda: "gc-node" not in replica.protector.snapshot.protected_nodes)
        for name in (
            "pod-status-patch-by-pod-garbage-collector.json",
            "pod-delete-by-pod-garbage-collector.json",
        ):
            resp = await replica.review(
                json.loads((fixtures_dir() / "admission" / name).read_text())
            )
            assert resp["allowed"], name

        # After a release every review is allowed.
        await replica.protector.disable("test-operator")
        for path in files:
            resp = await replica.review(json.loads(path.read_text()))
            assert resp["allowed"], path.name
    finally:
        await replica.aclose()


async def test_captured_reviews_not_engaged_are_allowed(cluster: SimCluster, workdir: Path) -> None:
    """One node down is an ordinary failure: nothing is intercepted."""
    for node in ("victim-node", *UP):
        await cluster.add_node(node)
    await cluster.add_pod("ev-v1", "demo", node="victim-node", running=True)
    replica = await start_replica(cluster, workdir)
    try:
        cluster.stop_heartbeat("victim-node")
        p = replica.protector
        await cluster.wait_for(lambda: "victim-node" in p.snapshot.protected_nodes)
        assert not p.snapshot.intercepting
        for path in all_reviews():
            resp = await replica.review(json.loads(path.read_text()))
            assert resp["allowed"], path.name
        assert 'eviction_allowed_total{operation="eviction",reason="not-engaged"}' in (
            replica.metrics()
        )
    finally:
        await replica.aclose()
