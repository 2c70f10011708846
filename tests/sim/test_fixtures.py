"""The simulated cluster's wire formats against the real kube-apiserver v1.36 captures.

One module-scoped run replays the fixtures' scenario (README of the fixtures) on the sim with a
recording webhook configured like the capture webhook; each test then compares one of the sim's
outputs with the corresponding fixture, key by key and type by type (values such as uids,
names, timestamps and resourceVersions naturally differ), plus the values that must be equal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from kubeguard.sim import SimCluster, SimConfig, Timings
from kubeguard.sim.testing import RecordingWebhook, assert_same_shape

from .conftest import FIXTURES, fixture, http_client

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOOK = "capture.fixtures.example.com"


def eviction(
    name: str, namespace: str | None = "demo", api_version: str = "policy/v1", **extra: Any
) -> dict[str, Any]:
    """An Eviction body as kubectl/clients send it (`namespace=None` leaves it out)."""
    meta = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {"apiVersion": api_version, "kind": "Eviction", "metadata": meta, **extra}


@dataclass
class Run:
    cluster: SimCluster
    hook: RecordingWebhook
    out: dict[str, Any] = field(default_factory=dict)
    watch_lines: list[dict[str, Any]] = field(default_factory=list)

    def review(
        self,
        operation: str,
        resource: str,
        name: str,
        *,
        user: str = "",
        index: int = 0,
        denied: bool | None = None,
    ) -> dict[str, Any]:
        found = [
            r
            for r in self.hook.reviews
            if r.operation == operation
            and r.resource == resource
            and r.name == name
            and (not user or r.username == user)
        ]
        assert len(found) > index, (
            f"no review #{index} {operation} {resource} {name} {user}: "
            f"{[(r.operation, r.resource, r.name, r.username) for r in self.hook.reviews]}"
        )
        return found[index].request


def decide(state: dict[str, int]) -> Any:
    def fn(request: dict[str, Any]) -> tuple[bool, int | None, str]:
        name = request.get("name", "")
        op = request["operation"]
        sub = request.get("subResource", "")
        if op == "DELETE" and name in ("vic-protected", "user-del-denied"):
            return False, 429, "protected"
        if sub == "eviction" and name == "ev-denied":
            return False, 429, "protected"
        if sub == "eviction" and name == "drain-b":
            state["drain-b"] = state.get("drain-b", 0) + 1
            if state["drain-b"] == 1:
                return False, 429, "protected"
        return True, None, ""

    return fn


async def _watch(cluster: SimCluster, rv: str, lines: list[dict[str, Any]]) -> None:
    async with (
        http_client(cluster) as client,
        client.stream(
            "GET",
            "/api/v1/nodes",
            params={"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": rv},
            timeout=None,
        ) as resp,
    ):
        async for line in resp.aiter_lines():
            if line.strip():
                lines.append(json.loads(line))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run() -> AsyncIterator[Run]:
    if not FIXTURES.exists():
        pytest.skip(f"fixtures not available at {FIXTURES}")
    timings = Timings.fast(
        node_monitor_grace_period=0.6,
        eviction_rate_interval=0.1,
        podgc_quarantine=0.3,
        disruption_reset_delay=1.5,
        pod_termination_delay=0.2,
        bookmark_interval=0.3,
    )
    state: dict[str, int] = {}
    async with (
        SimCluster(SimConfig(timings=timings)) as cluster,
        RecordingWebhook(decide(state)) as hook,
    ):
        r = Run(cluster, hook)
        c = cluster
        start_rv = str(c.store.rv)
        watch = asyncio.create_task(_watch(c, start_rv, r.watch_lines))
        await c.create_namespace("demo")
        for node in ("steady-1", "steady-2", "victim-node", "drain-node", "gc-node"):
            await c.add_node(node)
        await c.register_webhook(hook.configuration(HOOK))
        for name in ("vic-tol10", "vic-protected"):
            await c.add_pod(name, "demo", node="victim-node", toleration_seconds=1, grace_period=0)
        await c.add_pod("vic-default", "demo", node="victim-node", grace_period=0)
        await c.add_pod("user-del-default", "demo", node="steady-1")
        for name in (
            "user-del-force",
            "user-del-denied",
            "label-me",
            "ev-v1",
            "ev-v1beta1",
            "ev-dryrun",
            "ev-denied",
            "ev-pdb",
        ):
            await c.add_pod(name, "demo", node="steady-1", grace_period=0)
        for name in ("drain-a", "drain-b"):
            await c.add_pod(name, "demo", node="drain-node", grace_period=0)
        await c.add_pod("gc-orphan", "demo", node="gc-node")
        await c.wait_pods_running()
        await c.create_pdb("ev-pdb", "demo", {"matchLabels": {"app": "ev-pdb"}}, max_unavailable=0)
        async with http_client(c) as admin, http_client(c, "alice") as alice:
            resp = await admin.get(
                "/api/v1/pods", params={"fieldSelector": "spec.nodeName=steady-1"}
            )
            r.out["pods-by-node-steady-1"] = resp.json()
            resp = await admin.get("/api/v1/nodes", params={"limit": "1"})
            r.out["nodes-list-limit-1"] = resp.json()
            r.out["nodes-list"] = (await admin.get("/api/v1/nodes")).json()
            await alice.patch(
                "/api/v1/namespaces/demo/pods/label-me",
                params={"fieldManager": "kubectl-label"},
                content=b'{"metadata":{"labels":{"tier":"backend"}}}',
                headers={"Content-Type": "application/merge-patch+json"},
            )
            base = "/api/v1/namespaces/demo/pods"
            resp = await alice.post(f"{base}/ev-v1/eviction", json=eviction("ev-v1"))
            r.out["pod-eviction-allowed-201"] = (resp.status_code, resp.json())
            await alice.post(
                f"{base}/ev-v1beta1/eviction",
                json=eviction(
                    "ev-v1beta1",
                    api_version="policy/v1beta1",
                    deleteOptions={"gracePeriodSeconds": 0},
                ),
            )
            resp = await alice.post(
                f"{base}/ev-dryrun/eviction",
                params={"dryRun": "All"},
                json=eviction("ev-dryrun", namespace=None),
            )
            r.out["eviction-dry-run"] = (resp.status_code, resp.json())
            for name, key in (
                ("ev-denied", "pod-eviction-denied-by-webhook-429"),
                ("ev-pdb", "pod-eviction-blocked-by-pdb-429"),
            ):
                resp = await alice.post(f"{base}/{name}/eviction", json=eviction(name))
                r.out[key] = (resp.status_code, resp.json())
            resp = await alice.request(
                "DELETE", f"{base}/user-del-default", json={"propagationPolicy": "Background"}
            )
            r.out["user-del-default"] = resp.json()
            resp = await alice.request(
                "DELETE",
                f"{base}/user-del-force",
                json={"gracePeriodSeconds": 0, "propagationPolicy": "Background"},
            )
            r.out["pod-delete-200"] = (resp.status_code, resp.json())
            resp = await alice.request(
                "DELETE", f"{base}/user-del-denied", json={"propagationPolicy": "Background"}
            )
            r.out["pod-delete-denied-by-webhook-429"] = (resp.status_code, resp.json())
            await c.wait_for(lambda: c.get("pods", "demo", "user-del-default") is None, 5)
            assert await c.drain("drain-node", within=10)
            await c.create_statefulset_pods(
                "web",
                "demo",
                3,
                labels={"ab-build-different": "true"},
                annotations={
                    "custom-node-selector": '{"key": "name", "even": "node1", "odd": "node2"}'
                },
            )
            # victim-node goes silent: NotReady, taints, taint evictions, denied deletes
            c.stop_heartbeat("victim-node")
            await c.wait_for(lambda: c.get("pods", "demo", "vic-tol10") is None, 10)
            await c.wait_for(
                lambda: (
                    len(hook.matching("DELETE", "pods"))
                    and sum(
                        1
                        for x in hook.reviews
                        if x.name == "vic-protected" and x.operation == "DELETE"
                    )
                    >= 5
                ),
                10,
            )
            r.out["node-get-ready-unknown"] = (await admin.get("/api/v1/nodes/victim-node")).json()
            r.out["pods-by-node-victim-node"] = (
                await admin.get(
                    "/api/v1/pods", params={"fieldSelector": "spec.nodeName=victim-node"}
                )
            ).json()

            def reset() -> bool:
                pod = c.get("pods", "demo", "vic-protected") or {}
                return any(
                    x.get("type") == "DisruptionTarget" and x.get("status") == "False"
                    for x in pod.get("status", {}).get("conditions", [])
                )

            await c.wait_for(reset, 10)
            r.out["pod-get-after-denied-taint-eviction"] = (
                await admin.get(f"{base}/vic-protected")
            ).json()
            # pod GC after a node deletion
            resp = await admin.request("DELETE", "/api/v1/nodes/gc-node")
            r.out["node-delete-200"] = (resp.status_code, resp.json())
            await c.wait_for(lambda: c.get("pods", "demo", "gc-orphan") is None, 10)
            # kubelet comes back: node status patch by the kubelet
            c.resume_heartbeat("victim-node")
            await c.wait_for(lambda: c.node_ready("victim-node") == "True", 10)
            # plain CRUD objects
            cm = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": "demo"},
                "data": {"mode": "a"},
            }
            resp = await admin.post("/api/v1/namespaces/demo/configmaps", json=cm)
            r.out["configmap-create"] = (resp.status_code, resp.json())
            created = resp.json()
            updated = {**created, "data": {"mode": "b"}}
            resp = await admin.put("/api/v1/namespaces/demo/configmaps/settings", json=updated)
            r.out["configmap-update"] = (resp.status_code, resp.json())
            stale = {**created, "data": {"mode": "c"}}
            resp = await admin.put("/api/v1/namespaces/demo/configmaps/settings", json=stale)
            r.out["configmap-update-stale-resource-version-409"] = (resp.status_code, resp.json())
            r.out["lease-kube-node-lease"] = (
                await admin.get(
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/steady-1"
                )
            ).json()
            tr = "/apis/authentication.k8s.io/v1/tokenreviews"
            resp = await admin.post(
                tr,
                json={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": c.token("system:serviceaccount:kubeguard:kubeguard")},
                },
            )
            r.out["tokenreview-serviceaccount"] = (resp.status_code, resp.json())
            resp = await admin.post(
                tr,
                json={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": "not-a-token"},
                },
            )
            r.out["tokenreview-invalid-token"] = (resp.status_code, resp.json())
            sar = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

            async def access(user: str, groups: list[str], attrs: dict[str, str]) -> Any:
                resp = await admin.post(
                    sar,
                    json={
                        "apiVersion": "authorization.k8s.io/v1",
                        "kind": "SubjectAccessReview",
                        "spec": {"resourceAttributes": attrs, "user": user, "groups": groups},
                    },
                )
                return resp.status_code, resp.json()

            r.out["subjectaccessreview-allowed"] = await access(
                "alice",
                ["dev-team", "system:authenticated"],
                {"namespace": "demo", "verb": "delete", "resource": "pods"},
            )
            r.out["subjectaccessreview-allowed-node-controller"] = await access(
                "system:serviceaccount:kube-system:node-controller",
                [
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated",
                ],
                {"namespace": "demo", "verb": "delete", "resource": "pods"},
            )
            r.out["subjectaccessreview-denied"] = await access(
                "alice",
                ["dev-team", "system:authenticated"],
                {"verb": "delete", "resource": "nodes"},
            )
            label_me = c.get("pods", "demo", "label-me") or {}
            involved = {
                "kind": "Pod",
                "namespace": "demo",
                "name": "label-me",
                "uid": label_me.get("metadata", {}).get("uid", ""),
                "apiVersion": "v1",
            }
            resp = await admin.post(
                "/apis/events.k8s.io/v1/namespaces/demo/events",
                json={
                    "apiVersion": "events.k8s.io/v1",
                    "kind": "Event",
                    "metadata": {"name": "label-me.fixture1", "namespace": "demo"},
                    "eventTime": "2026-11-22T02:07:15.007330Z",
                    "reportingController": "example.com/admission-webhook",
                    "reportingInstance": "webhook-0",
                    "action": "Validate",
                    "reason": "Allowed",
                    "regarding": involved,
                    "note": "pod label-me passed validation",
                    "type": "Normal",
                },
            )
            r.out["event-create-events-k8s-io-v1"] = (resp.status_code, resp.json())
            resp = await admin.post(
                "/api/v1/namespaces/demo/events",
                json={
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": "label-me.fixture2", "namespace": "demo"},
                    "involvedObject": involved,
                    "reason": "Allowed",
                    "message": "pod label-me passed validation",
                    "source": {"component": "admission-webhook"},
                    "firstTimestamp": "2026-11-22T02:07:15Z",
                    "lastTimestamp": "2026-11-22T02:07:15Z",
                    "count": 1,
                    "type": "Normal",
                },
            )
            r.out["event-create-core-v1"] = (resp.status_code, resp.json())
            r.out["events-list-core-v1"] = (
                await admin.get("/api/v1/namespaces/demo/events")
            ).json()
            r.out["events-list-events-k8s-io-v1"] = (
                await admin.get("/apis/events.k8s.io/v1/namespaces/demo/events")
            ).json()
        await asyncio.sleep(0.7)  # let at least one more BOOKMARK arrive
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        yield r


# ----------------------------------------------------------------------------- admission


ADMISSION_CASES = [
    # (fixture, operation, resource, name, user, index, skip paths)
    ("pod-create-by-user", "CREATE", "pods", "vic-tol10", "admin", 0, ()),
    (
        "pod-status-update-by-kubelet",
        "UPDATE",
        "pods/status",
        "vic-tol10",
        "system:node:victim-node",
        0,
        (),
    ),
    ("pod-update-label-by-user", "UPDATE", "pods", "label-me", "alice", 0, ()),
    ("pod-eviction-policy-v1", "CREATE", "pods/eviction", "ev-v1", "alice", 0, ()),
    ("pod-eviction-policy-v1beta1-body", "CREATE", "pods/eviction", "ev-v1beta1", "alice", 0, ()),
    ("pod-eviction-dry-run", "CREATE", "pods/eviction", "ev-dryrun", "alice", 0, ()),
    ("pod-eviction-denied", "CREATE", "pods/eviction", "ev-denied", "alice", 0, ()),
    ("pod-eviction-by-kubectl-drain", "CREATE", "pods/eviction", "drain-a", "admin", 0, ()),
    ("pod-eviction-by-kubectl-drain-denied", "CREATE", "pods/eviction", "drain-b", "admin", 0, ()),
    ("node-update-cordon-by-kubectl-drain", "UPDATE", "nodes", "drain-node", "admin", 0, ()),
    (
        "node-update-unschedulable-taint-by-node-controller",
        "UPDATE",
        "nodes",
        "drain-node",
        "system:serviceaccount:kube-system:node-controller",
        0,
        (),
    ),
    (
        "pod-delete-by-user-kubectl-default-grace",
        "DELETE",
        "pods",
        "user-del-default",
        "alice",
        0,
        (),
    ),
    (
        "pod-delete-by-user-kubectl-force-grace-0",
        "DELETE",
        "pods",
        "user-del-force",
        "alice",
        0,
        (),
    ),
    ("pod-delete-by-user-denied", "DELETE", "pods", "user-del-denied", "alice", 0, ()),
    (
        "pod-delete-by-kubelet-grace-0-uid-precondition",
        "DELETE",
        "pods",
        "user-del-default",
        "system:node:steady-1",
        0,
        (),
    ),
    (
        "pod-delete-by-kubelet-grace-0-uid-precondition-third-admission-call",
        "DELETE",
        "pods",
        "user-del-default",
        "system:node:steady-1",
        2,
        (),
    ),
    (
        "pod-create-by-statefulset-controller-web-2",
        "CREATE",
        "pods",
        "web-2",
        "system:serviceaccount:kube-system:statefulset-controller",
        0,
        (),
    ),
    (
        "node-status-update-ready-unknown-by-node-controller",
        "UPDATE",
        "nodes/status",
        "victim-node",
        "system:serviceaccount:kube-system:node-controller",
        0,
        (),
    ),
    (
        "node-update-add-unreachable-noschedule-taint-by-node-controller",
        "UPDATE",
        "nodes",
        "victim-node",
        "system:serviceaccount:kube-system:node-controller",
        0,
        (),
    ),
    (
        "node-update-add-unreachable-noexecute-taint-by-node-controller",
        "UPDATE",
        "nodes",
        "victim-node",
        "system:serviceaccount:kube-system:node-controller",
        1,
        (),
    ),
    (
        "pod-status-update-mark-not-ready-by-node-controller",
        "UPDATE",
        "pods/status",
        "vic-tol10",
        "system:serviceaccount:kube-system:node-controller",
        0,
        (),
    ),
    (
        "pod-status-patch-disruption-target-by-node-controller",
        "UPDATE",
        "pods/status",
        "vic-tol10",
        "system:serviceaccount:kube-system:node-controller",
        1,
        (),
    ),
    (
        "pod-delete-by-node-controller",
        "DELETE",
        "pods",
        "vic-tol10",
        "system:serviceaccount:kube-system:node-controller",
        0,
        (),
    ),
    (
        "pod-delete-by-node-controller-second-admission-call",
        "DELETE",
        "pods",
        "vic-tol10",
        "system:serviceaccount:kube-system:node-controller",
        1,
        (),
    ),
    (
        "pod-delete-by-node-controller-denied",
        "DELETE",
        "pods",
        "vic-protected",
        "system:serviceaccount:kube-system:node-controller",
        0,
        (),
    ),
    (
        "pod-status-update-disruption-target-reset-by-disruption-controller",
        "UPDATE",
        "pods/status",
        "vic-protected",
        "system:serviceaccount:kube-system:disruption-controller",
        0,
        (),
    ),
    (
        "pod-status-patch-by-pod-garbage-collector",
        "UPDATE",
        "pods/status",
        "gc-orphan",
        "system:serviceaccount:kube-system:pod-garbage-collector",
        0,
        (),
    ),
    (
        "pod-delete-by-pod-garbage-collector",
        "DELETE",
        "pods",
        "gc-orphan",
        "system:serviceaccount:kube-system:pod-garbage-collector",
        0,
        (),
    ),
    # The fixture's oldObject is the node before its first status post (the sim registers
    # nodes Ready at once), so only the request and the new object are compared.
    (
        "node-status-update-by-kubelet",
        "UPDATE",
        "nodes/status",
        "victim-node",
        "system:node:victim-node",
        0,
        (
            ".request.oldObject",
            ".request.object.metadata.annotations",
            ".request.object.spec.taints",
        ),
    ),
]

SAME_VALUES = (
    "kind",
    "resource",
    "subResource",
    "requestKind",
    "requestResource",
    "requestSubResource",
    "operation",
    "dryRun",
    "options",
)


@pytest.mark.parametrize("case", ADMISSION_CASES, ids=[c[0] for c in ADMISSION_CASES])
async def test_admission_review_matches_fixture(run: Run, case: tuple[Any, ...]) -> None:
    name, op, resource, obj_name, user, index, skip = case
    expected = fixture(f"admission/{name}.json")
    request = run.review(op, resource, obj_name, user=user, index=index)
    actual = {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request}
    assert_same_shape(actual, expected, skip=set(skip))
    for key in SAME_VALUES:
        exp = expected["request"].get(key)
        act = request.get(key)
        if key == "options" and exp is not None:
            exp = {k: v for k, v in exp.items() if k != "preconditions"}
            act = {k: v for k, v in (act or {}).items() if k != "preconditions"}
        assert act == exp, f"request.{key}: {act!r} != {exp!r}"
    exp_user = expected["request"]["userInfo"]
    assert sorted(request["userInfo"]) == sorted(exp_user)
    assert request["userInfo"]["username"].split(":")[:2] == exp_user["username"].split(":")[:2]


async def test_node_controller_sequence_for_denied_pod(run: Run) -> None:
    """vic-protected: one DisruptionTarget patch, then exactly 5 denied DELETE attempts."""
    reviews = [
        r
        for r in run.hook.reviews
        if r.name == "vic-protected"
        and r.username == "system:serviceaccount:kube-system:node-controller"
    ]
    kinds = [(r.operation, r.resource) for r in reviews]
    assert (
        kinds == [("UPDATE", "pods/status"), ("UPDATE", "pods/status")] + [("DELETE", "pods")] * 5
    )
    conditions = {c["type"]: c for c in reviews[1].request["object"]["status"]["conditions"]}
    assert conditions["DisruptionTarget"]["reason"] == "DeletionByTaintManager"
    assert run.cluster.get("pods", "demo", "vic-protected") is not None


async def test_immediate_delete_gets_two_reviews(run: Run) -> None:
    first = run.review("DELETE", "pods", "vic-tol10", index=0)
    second = run.review("DELETE", "pods", "vic-tol10", index=1)
    assert first["uid"] != second["uid"]
    old1, old2 = first["oldObject"]["metadata"], second["oldObject"]["metadata"]
    assert "deletionTimestamp" not in old1
    assert old2["deletionGracePeriodSeconds"] == 0
    assert old2["generation"] == old1["generation"] + 1
    assert old2["uid"] == old1["uid"]


async def test_eviction_reviews(run: Run) -> None:
    beta = run.review("CREATE", "pods/eviction", "ev-v1beta1")
    assert beta["object"]["apiVersion"] == "policy/v1"
    assert beta["requestKind"] == {"group": "policy", "version": "v1", "kind": "Eviction"}
    assert beta["oldObject"] is None
    dry = run.review("CREATE", "pods/eviction", "ev-dryrun")
    assert dry["dryRun"] is True and dry["options"]["dryRun"] == ["All"]
    assert run.cluster.get("pods", "demo", "ev-dryrun") is not None
    assert run.out["eviction-dry-run"] == (201, fixture("responses/pod-eviction-allowed-201.json"))
    # the eviction's own status write and delete never reach the webhook
    mine = [r for r in run.hook.reviews if r.name == "ev-v1"]
    first = next(i for i, r in enumerate(mine) if r.resource == "pods/eviction")
    assert mine[first + 1 :] == []
    assert run.cluster.get("pods", "demo", "ev-v1") is None


async def test_webhook_url_has_timeout_query(run: Run) -> None:
    assert {r.query for r in run.hook.reviews} == {"timeout=5s"}


# ----------------------------------------------------------------------------- responses


@pytest.mark.parametrize(
    "name",
    [
        "pod-eviction-allowed-201",
        "pod-eviction-denied-by-webhook-429",
        "pod-eviction-blocked-by-pdb-429",
        "pod-delete-denied-by-webhook-429",
    ],
)
async def test_status_responses_equal_fixture(run: Run, name: str) -> None:
    code, body = run.out[name]
    expected = fixture(f"responses/{name}.json")
    assert code == expected.get("code", 201)
    assert body == expected


async def test_pod_delete_returns_last_state(run: Run) -> None:
    code, body = run.out["pod-delete-200"]
    assert code == 200
    assert_same_shape(body, fixture("responses/pod-delete-by-kubelet-200.json"))
    assert body["metadata"]["deletionGracePeriodSeconds"] == 0


async def test_node_delete_returns_status(run: Run) -> None:
    code, body = run.out["node-delete-200"]
    assert code == 200
    expected = fixture("responses/node-delete-200.json")
    assert_same_shape(body, expected)
    assert body["details"]["name"] == "gc-node" and body["details"]["kind"] == "nodes"


# ----------------------------------------------------------------------------- api


@pytest.mark.parametrize("name", ["nodes-list", "pods-by-node-steady-1"])
async def test_lists_match_fixture(run: Run, name: str) -> None:
    expected = fixture(f"api/{name}.json")
    actual = run.out[name]
    assert actual["items"] and "kind" not in actual["items"][0]
    assert_same_shape({**actual, "items": []}, {**expected, "items": []})
    # compare every item with a fixture item in the same state (Ready node / Running pod)
    reference = next(
        i for i in expected["items"] if i["metadata"]["name"] in ("steady-1", "ev-dryrun")
    )
    for item in actual["items"]:
        assert_same_shape(
            item,
            reference,
            skip={".metadata.deletionTimestamp", ".metadata.deletionGracePeriodSeconds"},
        )


async def test_paginated_list_matches_fixture(run: Run) -> None:
    expected = fixture("api/nodes-list-limit-1.json")
    actual = run.out["nodes-list-limit-1"]
    assert_same_shape(
        actual, expected, skip={".items[0].spec.unschedulable", ".items[0].spec.taints"}
    )
    assert len(actual["items"]) == 1

    def token(t: str) -> Any:
        return json.loads(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)))

    exp_token = token(expected["metadata"]["continue"])
    act_token = token(actual["metadata"]["continue"])
    assert sorted(act_token) == sorted(exp_token)
    assert act_token["start"].endswith("\u0000") and act_token["start"].startswith("/")


async def test_node_ready_unknown_matches_fixture(run: Run) -> None:
    expected = fixture("api/node-get-ready-unknown.json")
    actual = run.out["node-get-ready-unknown"]
    assert_same_shape(actual, expected)
    for cond in actual["status"]["conditions"]:
        assert (cond["status"], cond["reason"]) == ("Unknown", "NodeStatusUnknown")
    assert [(t["key"], t["effect"]) for t in actual["spec"]["taints"]] == [
        (t["key"], t["effect"]) for t in expected["spec"]["taints"]
    ]


async def test_pods_on_victim_node_match_fixture(run: Run) -> None:
    expected = fixture("api/pods-by-node-victim-node.json")
    actual = run.out["pods-by-node-victim-node"]
    by_name = {p["metadata"]["name"]: p for p in actual["items"]}
    assert set(by_name) == {"vic-default", "vic-protected"}
    for exp in expected["items"]:
        assert_same_shape(by_name[exp["metadata"]["name"]], exp)


async def test_pod_after_reset_matches_fixture(run: Run) -> None:
    expected = fixture("api/pod-get-after-denied-taint-eviction.json")
    actual = run.out["pod-get-after-denied-taint-eviction"]
    assert_same_shape(actual, expected)


@pytest.mark.parametrize(
    "name",
    [
        "configmap-create",
        "configmap-update",
        "configmap-update-stale-resource-version-409",
        "tokenreview-serviceaccount",
        "tokenreview-invalid-token",
        "subjectaccessreview-allowed",
        "subjectaccessreview-allowed-node-controller",
        "subjectaccessreview-denied",
        "event-create-events-k8s-io-v1",
        "event-create-core-v1",
    ],
)
async def test_created_objects_match_fixture(run: Run, name: str) -> None:
    code, actual = run.out[name]
    expected = fixture(f"api/{name}.json")
    assert code == (409 if "409" in name else 200 if "update" in name else 201)
    assert_same_shape(actual, expected)
    if "409" in name:
        assert actual == expected


async def test_allowed_access_reviews_name_a_binding(run: Run) -> None:
    for name in ("subjectaccessreview-allowed", "subjectaccessreview-allowed-node-controller"):
        assert run.out[name][1]["status"]["reason"].startswith("RBAC: allowed by ")
    assert run.out["subjectaccessreview-denied"][1]["status"] == {"allowed": False}


@pytest.mark.parametrize(
    "name", ["events-list-core-v1", "events-list-events-k8s-io-v1", "lease-kube-node-lease"]
)
async def test_reads_match_fixture(run: Run, name: str) -> None:
    expected = fixture(f"api/{name}.json")
    actual = run.out[name]
    if "items" in expected:
        assert_same_shape(
            {k: v for k, v in actual.items() if k != "items"},
            {k: v for k, v in expected.items() if k != "items"},
        )
        mine = [i for i in actual["items"] if i["metadata"]["name"].startswith("label-me.fix")]
        theirs = [i for i in expected["items"] if i["metadata"]["name"].startswith("label-me.")]
        assert len(mine) == 2 and theirs
        for item in mine:
            assert_same_shape(
                item, next(t for t in theirs if t["metadata"]["name"] == item["metadata"]["name"])
            )
    else:
        assert_same_shape(actual, expected)


async def test_watch_events_match_fixture(run: Run) -> None:
    expected = fixture("api/watch-nodes.jsonl")
    lines = run.watch_lines
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in lines:
        assert sorted(event) == ["object", "type"]
        by_type.setdefault(event["type"], []).append(event)
    assert {"ADDED", "MODIFIED", "DELETED", "BOOKMARK"} <= set(by_type)
    exp_types = {e["type"]: e for e in expected}
    # the fixture's ADDED events are bare registrations (the sim registers nodes Ready at once):
    # compare objects with a fixture event of a Ready node instead
    ready = next(
        e
        for e in expected
        if e["type"] == "MODIFIED"
        and e["object"]["metadata"]["name"] == "steady-2"
        and e["object"]["status"].get("conditions")
    )
    for event in by_type["ADDED"][:1] + by_type["MODIFIED"][:1]:
        assert_same_shape(event, ready, skip={".object.spec.taints", ".object.spec.unschedulable"})
    assert_same_shape(
        by_type["DELETED"][0],
        exp_types["DELETED"],
        skip={".object.spec.taints", ".object.spec.unschedulable"},
    )
    assert_same_shape(by_type["BOOKMARK"][0], exp_types["BOOKMARK"])
    bookmark = by_type["BOOKMARK"][0]["object"]
    exp_bookmark = exp_types["BOOKMARK"]["object"]
    assert {**bookmark, "metadata": {}} == {**exp_bookmark, "metadata": {}}
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in lines]
    assert rvs == sorted(rvs)
