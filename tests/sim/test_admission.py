"""Webhook matching and calling: selectors, CEL matchConditions, failure policies, mutation."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from kubeguard.sim import SimCluster
from kubeguard.sim.testing import RecordingWebhook

POD_RULES = [
    {
        "operations": ["CREATE", "DELETE"],
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "resources": ["pods"],
    }
]


async def test_selectors_and_match_conditions(sim_cluster: SimCluster) -> None:
    c = sim_cluster
    await c.create_namespace("guarded", {"protect": "yes"})
    await c.create_namespace("open")
    async with RecordingWebhook() as hook:
        await c.register_webhook(
            hook.configuration(
                "sel.example.com",
                rules=POD_RULES,
                namespace_selector={"matchLabels": {"protect": "yes"}},
                object_selector={
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["db", "web"]}]
                },
                match_conditions=[
                    {
                        "name": "not-kube-system",
                        "expression": "request.userInfo.username != 'bob' && "
                        "object.metadata.name.startsWith('p')",
                    }
                ],
            )
        )
        await c.add_pod("p1", "guarded", labels={"tier": "db"})
        await c.add_pod("p2", "open", labels={"tier": "db"})  # namespace not selected
        await c.add_pod("p3", "guarded", labels={"tier": "cache"})  # object not selected
        await c.add_pod("x4", "guarded", labels={"tier": "web"})  # matchCondition false
        assert [r.name for r in hook.reviews] == ["p1"]


async def test_failure_policies(sim_cluster: SimCluster) -> None:
    c = sim_cluster
    dead = {"url": "https://127.0.0.1:1/nowhere"}
    for policy in ("Ignore", "Fail"):
        await c.register_webhook(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": f"dead-{policy.lower()}"},
                "webhooks": [
                    {
                        "name": f"dead-{policy.lower()}.example.com",
                        "clientConfig": dead,
                        "rules": POD_RULES,
                        "failurePolicy": policy,
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                        "timeoutSeconds": 1,
                    }
                ],
            }
        )
        if policy == "Ignore":
            await c.add_pod("ok", "demo")
            assert c.get("pods", "demo", "ok") is not None
    code, status = await c.delete_pod("demo", "ok")
    assert code == 500 and status["reason"] == "InternalError"
    assert status["message"].startswith(
        'Internal error occurred: failed calling webhook "dead-fail.example.com": '
        'failed to call webhook: Post "https://127.0.0.1:1/nowhere?timeout=1s"'
    )
    assert c.get("pods", "demo", "ok") is not None


async def test_invalid_webhook_configuration_is_422(sim_cluster: SimCluster) -> None:
    from kubeguard.sim.util import ApiError

    with pytest.raises(ApiError) as err:
        await sim_cluster.register_webhook(
            {
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "bad"},
                "webhooks": [{"name": "bad.example.com", "clientConfig": {}, "rules": POD_RULES}],
            }
        )
    assert err.value.code == 422 and err.value.reason == "Invalid"


async def test_mutating_webhook_patch_applied_before_validation(sim_cluster: SimCluster) -> None:
    c = sim_cluster
    patch = [{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}]

    def mutate(_request: dict[str, Any]) -> dict[str, Any]:
        return {
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
        }

    async with RecordingWebhook(mutate) as mut, RecordingWebhook() as val:
        await c.register_webhook(
            mut.configuration("mut.example.com", rules=POD_RULES, mutating=True)
        )
        await c.register_webhook(val.configuration("val.example.com", rules=POD_RULES))
        await c.add_pod("m", "demo")
        assert (c.get("pods", "demo", "m") or {})["metadata"]["labels"]["mutated"] == "yes"
        assert val.reviews[0].request["object"]["metadata"]["labels"]["mutated"] == "yes"


async def test_denial_code_defaults_to_403_without_reason(sim_cluster: SimCluster) -> None:
    c = sim_cluster
    await c.add_pod("d", "demo")
    async with RecordingWebhook(lambda r: (False, None, "")) as hook:
        await c.register_webhook(hook.configuration("deny.example.com", rules=POD_RULES))
        code, status = await c.delete_pod("demo", "d", user="alice")
    assert code == 403 and "reason" not in status
    assert status["message"] == (
        'admission webhook "deny.example.com" denied the request without explanation'
    )
    assert c.timeline.of_kind("denial")
