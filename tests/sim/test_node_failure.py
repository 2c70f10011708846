"""Node failures as kube-controller-manager handles them, seen through a real HTTPS webhook."""

from __future__ import annotations

import itertools
from typing import Any

from kubeguard.sim import SimCluster, SimConfig, Timings
from kubeguard.sim.api import PODS
from kubeguard.sim.testing import RecordingWebhook, Review

NC = "system:serviceaccount:kube-system:node-controller"
FAST = {"node_monitor_grace_period": 0.5, "eviction_rate_interval": 0.2}


def deny_deletes(request: dict[str, Any]) -> tuple[bool, int | None, str]:
    if request["operation"] == "DELETE":
        return False, 429, "protected"
    return True, None, ""


def _summary(reviews: list[Review]) -> list[tuple[str, str, str, str]]:
    out = []
    for r in reviews:
        detail = ""
        obj = r.request.get("object") or {}
        old = r.request.get("oldObject") or {}
        if r.resource == "nodes/status":
            detail = "Ready=" + next(
                c["status"] for c in obj["status"]["conditions"] if c["type"] == "Ready"
            )
        elif r.resource == "nodes":
            detail = ",".join(
                f"{t['key'].split('/')[-1]}:{t['effect']}" for t in obj["spec"].get("taints") or []
            )
        elif r.resource == "pods/status":
            new = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
            before = {c["type"]: c["status"] for c in old["status"]["conditions"]}
            detail = ",".join(f"{k}={v}" for k, v in new.items() if before.get(k) != v)
        out.append((r.operation, r.resource, r.name, detail))
    return out


async def test_denying_webhook_sees_the_exact_sequence_and_pods_survive() -> None:
    config = SimConfig(timings=Timings.fast(**FAST))
    async with SimCluster(config) as c, RecordingWebhook(deny_deletes) as hook:
        await c.add_nodes("w", 3)
        await c.add_pod("app-0", "demo", node="w1", toleration_seconds=1, grace_period=0)
        await c.wait_pods_running()
        await c.register_webhook(hook.configuration("guard.example.com"))
        c.stop_heartbeat("w1")
        await c.wait_for(lambda: len([r for r in hook.reviews if r.operation == "DELETE"]) >= 5, 10)
        await c.wait_for(lambda: any("gave up" in e.message for e in c.timeline.entries), 5)
        reviews = [r for r in hook.reviews if r.username == NC]
        assert (
            _summary(reviews)
            == [
                ("UPDATE", "nodes/status", "w1", "Ready=Unknown"),
                ("UPDATE", "pods/status", "app-0", "Ready=False"),
                ("UPDATE", "nodes", "w1", "unreachable:NoSchedule"),
                ("UPDATE", "nodes", "w1", "unreachable:NoSchedule,unreachable:NoExecute"),
                ("UPDATE", "pods/status", "app-0", "DisruptionTarget=True"),
            ]
            + [("DELETE", "pods", "app-0", "")] * 5
        )
        target = next(
            cond
            for cond in reviews[4].request["object"]["status"]["conditions"]
            if cond["type"] == "DisruptionTarget"
        )
        assert target["reason"] == "DeletionByTaintManager"
        assert c.get("pods", "demo", "app-0") is not None
        assert all(r.request["options"]["gracePeriodSeconds"] == 0 for r in reviews[5:])


async def test_denying_the_disruption_target_patch_means_no_delete() -> None:
    def deny_target(request: dict[str, Any]) -> tuple[bool, int | None, str]:
        conds = (request.get("object") or {}).get("status", {}).get("conditions") or []
        if any(x["type"] == "DisruptionTarget" and x["status"] == "True" for x in conds):
            return False, 403, "no disruption"
        return True, None, ""

    async with (
        SimCluster(SimConfig(timings=Timings.fast(**FAST))) as c,
        RecordingWebhook(deny_target) as hook,
    ):
        await c.add_nodes("w", 2)
        await c.add_pod("app-0", "demo", node="w1", toleration_seconds=1, grace_period=0)
        await c.wait_pods_running()
        await c.register_webhook(hook.configuration("guard.example.com"))
        c.stop_heartbeat("w1")
        await c.wait_for(lambda: any("gave up" in e.message for e in c.timeline.entries), 10)
        patches = [
            r
            for r in hook.reviews
            if r.username == NC
            and r.resource == "pods/status"
            and "DisruptionTarget=True" in _summary([r])[0][3]
        ]
        assert len(patches) == 5
        assert not hook.matching("DELETE")
        assert c.get("pods", "demo", "app-0") is not None


async def test_allowing_webhook_lets_pods_go_after_their_toleration() -> None:
    async with SimCluster(SimConfig(timings=Timings.fast(**FAST))) as c, RecordingWebhook() as hook:
        await c.add_nodes("w", 3)
        await c.add_pod("short", "demo", node="w1", toleration_seconds=1, grace_period=0)
        await c.add_pod("long", "demo", node="w1", grace_period=0)  # default 300 s toleration
        await c.add_pod("other", "demo", node="w2", toleration_seconds=1, grace_period=0)
        await c.wait_pods_running()
        await c.register_webhook(hook.configuration("guard.example.com"))
        c.stop_heartbeat("w1")
        await c.wait_for(lambda: c.get("pods", "demo", "short") is None, 10)
        deletes = hook.matching("DELETE", "pods", NC)
        assert [r.name for r in deletes] == ["short", "short"]  # two reviews, one request
        assert c.get("pods", "demo", "long") is not None
        assert c.get("pods", "demo", "other") is not None
        assert c.pod_ready("demo", "long") == "False"
        # the node comes back: Ready again, taints removed, pods Ready again
        c.resume_heartbeat("w1")
        await c.wait_for(lambda: c.node_ready("w1") == "True", 5)
        await c.wait_for(lambda: not (c.get("nodes", "", "w1") or {})["spec"].get("taints"), 5)
        await c.wait_for(lambda: c.pod_ready("demo", "long") == "True", 5)


async def test_full_disruption_stops_noexecute_tainting() -> None:
    async with SimCluster(SimConfig(timings=Timings.fast(**FAST))) as c:
        await c.add_nodes("w", 2)
        await c.add_pod("p", "demo", node="w1", toleration_seconds=1, grace_period=0)
        await c.wait_pods_running()
        c.stop_heartbeat("w1", "w2")
        await c.wait_for(lambda: c.controllers.full_disruption, 5)
        await c.wait_for(
            lambda: all(
                not any(t["effect"] == "NoExecute" for t in n["spec"].get("taints") or [])
                for n in c.nodes()
            ),
            5,
        )
        await c.wait_for(lambda: c.pod_ready("demo", "p") == "False", 5)
        assert c.get("pods", "demo", "p") is not None
        c.resume_heartbeat("w2")
        await c.wait_for(lambda: not c.controllers.full_disruption, 5)


async def test_noexecute_taints_are_rate_limited_one_node_at_a_time() -> None:
    timings = Timings.fast(node_monitor_grace_period=0.5, eviction_rate_interval=0.5)
    async with SimCluster(SimConfig(timings=timings)) as c:
        await c.add_nodes("w", 4)
        c.stop_heartbeat("w1", "w2", "w3")
        taint_events = []
        c.timeline.subscribe(
            lambda e: (
                taint_events.append(e)
                if e.details.get("effect") == "NoExecute"
                and e.details.get("event") == "taint-added"
                else None
            )
        )
        await c.wait_for(lambda: len(taint_events) == 3, 10)
        gaps = [b.t - a.t for a, b in itertools.pairwise(taint_events)]
        assert all(g >= 0.45 for g in gaps), gaps  # never two nodes in the same interval
        assert sorted(e.details["node"] for e in taint_events) == ["w1", "w2", "w3"]


async def test_podgc_and_disruption_reset() -> None:
    timings = Timings.fast(podgc_quarantine=0.2, disruption_reset_delay=0.5)
    async with SimCluster(SimConfig(timings=timings)) as c, RecordingWebhook() as hook:
        await c.add_nodes("w", 2)
        await c.add_pod("orphan", "demo", node="w2")
        await c.add_pod("keep", "demo", node="w1")
        await c.wait_pods_running()
        await c.register_webhook(hook.configuration("guard.example.com"))
        await c.delete_node("w2")
        await c.wait_for(lambda: c.get("pods", "demo", "orphan") is None, 5)
        gc = [
            r
            for r in hook.reviews
            if r.username == "system:serviceaccount:kube-system:pod-garbage-collector"
        ]
        assert [(r.operation, r.resource) for r in gc] == [
            ("UPDATE", "pods/status"),
            ("DELETE", "pods"),
            ("DELETE", "pods"),
        ]
        status = gc[0].request["object"]["status"]
        assert status["phase"] == "Failed"
        # a DisruptionTarget that nobody acts on is reset to False
        code, _ = await c.evict_pod("demo", "keep", dry_run=True)
        assert code == 201
        pod = c.get("pods", "demo", "keep")
        assert pod is not None
        marked = {
            **pod,
            "status": {
                **pod["status"],
                "conditions": [
                    *pod["status"]["conditions"],
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "Test",
                        "message": "x",
                    },
                ],
            },
        }
        await c.api.update(PODS, "demo", "keep", marked, c.admin, subresource="status")
        await c.wait_for(
            lambda: any(
                x["type"] == "DisruptionTarget" and x["status"] == "False"
                for x in (c.get("pods", "demo", "keep") or {})["status"]["conditions"]
            ),
            5,
        )
