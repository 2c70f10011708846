"""The callback API over HTTPS (auth through the cluster's TokenReview/SubjectAccessReview,
the seed's JSON), two replicas sharing one ConfigMap, and a restart mid-incident."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kubeguard.config import Threshold
from kubeguard.sim import SimCluster
from kubeguard.sim.auth import Rule, SimUser

from .conftest import Replica, fixtures_dir, start_replica

pytestmark = pytest.mark.asyncio


def review(name: str) -> dict[str, object]:
    path = fixtures_dir() / "admission" / name
    if not path.exists():
        pytest.skip(f"fixture {path} not found")
    data: dict[str, object] = json.loads(path.read_text())
    return data


async def engage(cluster: SimCluster, replica: Replica) -> None:
    """victim-node + two more fail: protection engages (threshold 3)."""
    for n in ("victim-node", "x1", "x2", "ok1", "ok2"):
        await cluster.add_node(n)
    cluster.stop_heartbeat("victim-node", "x1", "x2")
    await cluster.wait_for(lambda: replica.protector.snapshot.intercepting, message="engaged")


async def test_callback_auth_and_seed_json(cluster: SimCluster, workdir: Path) -> None:
    cluster.users.add(
        SimUser(
            "oncall",
            "oncall-token-0123456789",
            ("sre",),
            rules=(Rule(("update",), ("kubeguard.io",), ("interception",)),),
        )
    )
    replica = await start_replica(cluster, workdir)
    try:
        await engage(cluster, replica)
        async with replica.client() as anon:
            resp = await anon.post("/callback/disable-interception")
            assert resp.status_code == 401
            assert resp.json()["status"] == "error" and "bearer token" in resp.json()["message"]
            # the status is readable without a token, as in the seed
            resp = await anon.get("/callback/status")
            assert resp.status_code == 200
            body = resp.json()
            assert body["status"] == "success"
            data = body["data"]
            assert data["intercepting"] is True
            assert data["notReadyNodes"] == ["victim-node", "x1", "x2"]
            assert data["engagedAt"] and "3 of 5 worker nodes" in data["cause"]
            assert data["mode"] == "enforce"
        async with replica.client("not-a-valid-token") as bad:
            resp = await bad.post("/callback/disable-interception")
            assert resp.status_code == 401 and resp.json()["status"] == "error"
        async with replica.client(cluster.token("bob")) as bob:
            resp = await bob.post("/callback/disable-interception")
            assert resp.status_code == 403
            assert "interception" in resp.json()["message"]
        assert replica.protector.snapshot.intercepting  # nothing changed so far

        async with replica.client("oncall-token-0123456789") as oncall:
            resp = await oncall.post("/callback/disable-interception")
            assert resp.status_code == 200
            assert resp.json() == {
                "status": "success",
                "message": "Interception disabled successfully",
            }
            data = (await oncall.get("/callback/status")).json()["data"]
            assert data["intercepting"] is False and data["toggledBy"] == "oncall"
            # enable: the latch is cleared and detection re-runs at once; the window still
            # holds, so protection re-engages immediately (seed 000: monitoring restarts)
            resp = await oncall.post("/callback/enable-interception")
            assert resp.json() == {
                "status": "success",
                "message": "Interception enabled successfully",
            }
            data = (await oncall.get("/callback/status")).json()["data"]
            assert data["intercepting"] is True
            events = [h["event"] for h in data["history"]]
            assert "disabled" in events and events[-2:] == ["enabled", "engaged"]
            # wrong method
            resp = await oncall.get("/callback/disable-interception")
            assert resp.status_code == 405
    finally:
        await replica.aclose()


async def test_two_replicas_share_the_toggle(cluster: SimCluster, workdir: Path) -> None:
    a = await start_replica(cluster, workdir, identity="replica-a")
    b = await start_replica(cluster, workdir, identity="replica-b")
    try:
        await engage(cluster, a)
        await cluster.wait_for(lambda: b.protector.snapshot.intercepting, message="b engaged")
        for r in (a, b):
            resp = await r.review(review("pod-delete-by-node-controller.json"))
            assert resp["allowed"] is False

        async with a.client(cluster.admin_token) as c:
            assert (await c.post("/callback/disable-interception")).status_code == 200
        # B learns it from the shared ConfigMap (watch) within a second.
        await cluster.wait_for(
            lambda: not b.protector.snapshot.intercepting, within=1.0, message="b released"
        )
        resp = await b.review(review("pod-delete-by-node-controller.json"))
        assert resp["allowed"] is True
        cm = cluster.get("configmaps", "kubeguard", "kubeguard-state")
        assert cm is not None and '"enabled": false' in cm["data"]["state.json"]

        async with b.client(cluster.admin_token) as c:
            assert (await c.post("/callback/enable-interception")).status_code == 200
        await cluster.wait_for(lambda: a.protector.snapshot.intercepting, message="a engaged")
        # Only one release happened, whoever's detector proposed first.
        assert a.protector.state.releases == 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_restart_mid_incident_keeps_protecting(cluster: SimCluster, workdir: Path) -> None:
    # A short window: by the time the replica restarts, the failures are older than it; the
    # latched engagement in the ConfigMap must hold anyway.
    first = await start_replica(cluster, workdir, notready_window=2.0)
    await engage(cluster, first)
    engaged_at = first.protector.state.engaged_at
    await first.aclose()
    await cluster.wait_for(
        lambda: not first.protector.detection().engage, within=5, message="window passed"
    )
    second = await start_replica(cluster, workdir, notready_window=2.0)
    try:
        # start_replica returned once ready: it protects before /readyz turns ready.
        assert second.protector.snapshot.intercepting
        assert second.protector.state.engaged_at == engaged_at
        resp = await second.review(
            review("pod-status-patch-disruption-target-by-node-controller.json")
        )
        assert resp["allowed"] is False and resp["status"]["code"] == 403
        async with second.client() as c:
            ready = await c.get("/readyz")
        assert ready.status_code == 200
    finally:
        await second.aclose()


async def test_percentage_threshold_engages(cluster: SimCluster, workdir: Path) -> None:
    replica = await start_replica(cluster, workdir, notready_threshold=Threshold(percent=40))
    try:
        names = await cluster.add_nodes("n", 5)  # 40% of 5 -> 2 nodes
        await cluster.add_node("cp", control_plane=True)  # not a worker: not counted
        cluster.stop_heartbeat("cp", "n1")
        await cluster.wait_for(lambda: "n1" in replica.protector.snapshot.protected_nodes)
        assert not replica.protector.snapshot.intercepting
        assert replica.protector.status()["requiredNodes"] == 2
        cluster.stop_heartbeat("n2")
        await cluster.wait_for(lambda: replica.protector.snapshot.intercepting, message="engaged")
        assert "2 of 5 worker nodes" in replica.protector.state.cause
        assert names == ["n1", "n2", "n3", "n4", "n5"]
    finally:
        await replica.aclose()


async def test_failures_spread_over_more_than_the_window_do_not_engage(
    cluster: SimCluster, workdir: Path
) -> None:
    # lastTransitionTime has second precision: a 2 s window, failures ~2.6 s apart.
    replica = await start_replica(cluster, workdir, notready_window=2.0)
    p = replica.protector
    try:
        await cluster.add_nodes("s", 6)
        for node in ("s1", "s2", "s3"):
            if node != "s1":
                await asyncio.sleep(2.3)
            cluster.stop_heartbeat(node)
            await cluster.wait_for(lambda n=node: n in p.snapshot.protected_nodes)  # type: ignore[misc]
            assert not p.snapshot.intercepting
        assert not p.detection().engage
        assert p.status()["notReadyNodes"] == ["s1", "s2", "s3"]
        # Two more failing right after the latest one: 3 within the window -> engaged.
        cluster.stop_heartbeat("s4", "s5")
        await cluster.wait_for(lambda: p.snapshot.intercepting, message="engaged")
        assert set(p.state.engaged_nodes) >= {"s4", "s5"}
        assert "s1" not in p.state.engaged_nodes
    finally:
        await replica.aclose()
