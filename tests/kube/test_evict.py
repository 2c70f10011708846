"""Eviction and deletion outcomes against the simulated API server: evicted, dry run,
PodDisruptionBudget 429, webhook denial, not found, uid precondition, transport error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubeguard.kube.client import KubeClient
from kubeguard.kube.evict import (
    BlockedByPDB,
    Deleted,
    DeniedByWebhook,
    Evicted,
    EvictError,
    NotFound,
    classify,
    delete_pod,
    evict,
)
from kubeguard.kube.objects import Status
from kubeguard.kube.rest import KubeApiError, decode_status
from kubeguard.sim import SimCluster
from kubeguard.sim.testing import RecordingWebhook

from .conftest import client_for, fixture_bytes

POD_RULES = [
    {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "DELETE"],
        "resources": ["pods", "pods/eviction"],
    }
]


async def test_evict_outcomes(cluster: SimCluster, kube: KubeClient) -> None:
    await cluster.add_node("w1")
    pod = await cluster.add_pod("p1", "demo", node="w1", running=True)
    assert await evict(kube, "demo", "p1", dry_run=True) == Evicted(dry_run=True)
    assert cluster.get("pods", "demo", "p1")["metadata"].get("deletionTimestamp") is None  # type: ignore[index]

    outcome = await evict(kube, "demo", "p1", uid="not-the-uid")
    assert isinstance(outcome, NotFound) and "Precondition" in outcome.message

    assert await evict(kube, "demo", "p1", grace_seconds=0, uid=pod["metadata"]["uid"]) == (
        Evicted()
    )
    gone = cluster.get("pods", "demo", "p1")
    assert gone is None or gone["metadata"].get("deletionTimestamp")

    assert isinstance(await evict(kube, "demo", "never-existed"), NotFound)


async def test_pdb_blocks_eviction(cluster: SimCluster, kube: KubeClient) -> None:
    await cluster.add_node("w1")
    await cluster.add_pod("db-0", "demo", node="w1", labels={"app": "db"}, running=True)
    await cluster.create_pdb("db", "demo", {"matchLabels": {"app": "db"}}, max_unavailable=0)
    outcome = await evict(kube, "demo", "db-0")
    assert outcome == BlockedByPDB(
        "Cannot evict pod as it would violate the pod's disruption budget."
    )
    # DELETE is not subject to the budget.
    assert await delete_pod(kube, "demo", "db-0", None, 0) == Deleted()


async def test_webhook_denials(cluster: SimCluster, kube: KubeClient) -> None:
    def deny(request: dict[str, Any]) -> tuple[bool, int | None, str]:
        if request.get("operation") == "CREATE" and request.get("subResource") != "eviction":
            return True, None, ""
        return False, 429, "protected"

    await cluster.add_node("w1")
    await cluster.add_pod("p", "demo", node="w1", running=True)
    async with RecordingWebhook(deny) as hook:
        await cluster.register_webhook(hook.configuration("protect.example.com", rules=POD_RULES))
        outcome = await evict(kube, "demo", "p")
        assert isinstance(outcome, DeniedByWebhook) and outcome.code == 429
        assert outcome.message.startswith('admission webhook "protect.example.com" denied')
        outcome2 = await delete_pod(kube, "demo", "p", None, 30)
        assert isinstance(outcome2, DeniedByWebhook) and outcome2.message.endswith("protected")
        await cluster.unregister_webhook("protect.example.com")
    pod = cluster.get("pods", "demo", "p")
    assert pod is not None and not pod["metadata"].get("deletionTimestamp")
    assert isinstance(await delete_pod(kube, "demo", "p", "wrong-uid", 0), NotFound)
    assert await delete_pod(kube, "demo", "p", pod["metadata"]["uid"], 0) == Deleted()
    assert isinstance(await delete_pod(kube, "demo", "p", None, 0), NotFound)


async def test_transport_error_is_an_error_outcome(cluster: SimCluster, tmp_path: Path) -> None:
    dead = client_for(cluster, tmp_path, port=1)
    try:
        outcome = await evict(dead, "demo", "p")
        assert isinstance(outcome, EvictError) and outcome.code == 0 and outcome.message
        assert isinstance(await delete_pod(dead, "demo", "p", None, 0), EvictError)
    finally:
        await dead.aclose()


def test_classify_real_responses() -> None:
    def err(name: str, code: int) -> KubeApiError:
        return KubeApiError(decode_status(code, fixture_bytes(f"responses/{name}")))

    assert isinstance(classify(err("pod-eviction-blocked-by-pdb-429.json", 429)), BlockedByPDB)
    denied = classify(err("pod-eviction-denied-by-webhook-429.json", 429))
    assert isinstance(denied, DeniedByWebhook) and denied.code == 429
    assert isinstance(classify(err("pod-delete-denied-by-webhook-429.json", 429)), DeniedByWebhook)
    throttled = classify(
        KubeApiError(Status(code=429, reason="TooManyRequests", message="too many requests"))
    )
    assert isinstance(throttled, EvictError) and throttled.code == 429
    html = decode_status(502, b"<html>bad gateway</html>")
    assert html.code == 502 and "bad gateway" in html.message
