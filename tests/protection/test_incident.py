"""The main job end to end, through the simulated control plane calling the real HTTPS
webhook: a lone failure is evicted normally, a correlated failure engages protection and the
pods survive the taint-eviction controller, evictions are denied with 429 (and allowed on
healthy nodes), and after the operator's release the re-drive evicts the stranded pods."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeguard.sim import SimCluster

from .conftest import start_replica

pytestmark = pytest.mark.asyncio


async def test_correlated_failure_protects_then_release_redrives(
    cluster: SimCluster, workdir: Path
) -> None:
    workers = await cluster.add_nodes("w", 6)
    # grace 0 so evicted pods go at once; tolerate `unreachable` for 1 s (taint eviction comes
    # quickly in the test, as 300 s would in production)
    await cluster.add_pods_per_node(2, "demo", toleration_seconds=1, grace_period=0)
    await cluster.wait_pods_running()
    replica = await start_replica(cluster, workdir)
    try:
        await cluster.register_webhook(replica.webhook_configuration())
        p = replica.protector

        # 1. One node fails alone: an ordinary failure, its pods are evicted normally.
        cluster.stop_heartbeat("w1")
        await cluster.wait_for(
            lambda: not cluster.pods("demo", node="w1"),
            within=15,
            message="w1's pods evicted by the taint-eviction controller",
        )
        assert not p.snapshot.intercepting

        # 2. Two more fail within the window: 3 NotReady -> engaged; their pods survive.
        cluster.stop_heartbeat("w2", "w3")
        await cluster.wait_for(lambda: p.snapshot.intercepting, message="engaged")
        status = p.status()
        assert status["intercepting"] and status["engagedAt"]
        assert "3 of 6 worker nodes" in status["cause"]
        assert set(status["engagedNodes"]) == {"w1", "w2", "w3"}
        # A fourth node failing after engagement is protected too.
        cluster.stop_heartbeat("w4")
        await cluster.wait_for(lambda: "w4" in p.snapshot.protected_nodes, message="w4 down")

        # The taint-eviction controller tries (DisruptionTarget patch / DELETE), is denied 5
        # times per pod and gives up: wait until it has given up on every pod of w2..w4 (a
        # release before that would let its next retry delete the pod, racing the re-drive).
        def denied_pods() -> set[str]:
            return {
                str(e.details.get("name"))
                for e in cluster.timeline.entries
                if e.details.get("gave_up") and e.details.get("source") == "taint-eviction"
            }

        stranded = {
            n
            for w in ("w2", "w3", "w4")
            for n in (pod["metadata"]["name"] for pod in cluster.pods("demo", node=w))
        }
        assert len(stranded) == 6
        await cluster.wait_for(
            lambda: stranded <= denied_pods(),
            within=15,
            message="taint eviction denied until it gave up, for every pod",
        )
        assert {
            pod["metadata"]["name"]
            for w in ("w2", "w3", "w4")
            for pod in cluster.pods("demo", node=w)
        } == stranded

        # Evictions: denied with 429 on a NotReady node (kubectl drain retries), allowed on a
        # healthy one; dry runs predict the real outcome.
        code, body = await cluster.evict_pod("demo", "w2-pod-0", user="alice")
        assert code == 429
        assert "node w2 is NotReady" in body["message"]
        code, _ = await cluster.evict_pod("demo", "w2-pod-1", user="alice", dry_run=True)
        assert code == 429
        code, _ = await cluster.evict_pod("demo", "w5-pod-0", user="alice")
        assert code == 201
        code, body = await cluster.delete_pod("demo", "w3-pod-0", user="alice")
        assert code == 403 and "kubeguard disable" in body["message"]
        metrics = replica.metrics()
        assert "protection_engaged 1.0" in metrics
        assert "protected_pods 6.0" in metrics

        # 3. The operator releases protection through the callback API.
        async with replica.client(cluster.admin_token) as c:
            resp = await c.post("/callback/disable-interception")
        assert resp.status_code == 200
        assert resp.json() == {"status": "success", "message": "Interception disabled successfully"}

        # The re-drive evicts the stranded pods (the controller gave up on them).
        await cluster.wait_for(
            lambda: not any(cluster.pods("demo", node=w) for w in ("w2", "w3", "w4")),
            within=15,
            message="stranded pods re-driven",
        )
        await cluster.wait_for(
            lambda: p.state.redrive is not None and p.state.redrive.phase == "done",
            message="re-drive done",
        )
        r = p.state.redrive
        assert r is not None and (r.total, r.failed, r.blocked) == (6, 0, 0)
        # "gone": the pod disappeared between the listing and its eviction
        assert r.evicted + r.gone == 6 and r.evicted >= 1
        assert f'redrive_pods_total{{result="evicted"}} {r.evicted}.0' in replica.metrics()
        status = p.status()
        assert status["redrive"]["phase"] == "done" and not status["intercepting"]
        assert status["toggledBy"] == "admin"
    finally:
        await replica.aclose()
    assert workers == [f"w{i}" for i in range(1, 7)]
