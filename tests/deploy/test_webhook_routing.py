"""The rendered pod-eviction-protection configuration in the simulated cluster: the API server
calls kubeguard for the requests protection decides (node-controller status updates and
deletes, evictions, user deletes) and not for the others (kubelet requests, label-only
updates, kube-system and kubeguard's own namespace). A recording webhook stands in for
kubeguard so that only the configuration is under test."""

from __future__ import annotations

from typing import Any

from kubeguard import manifests
from kubeguard.sim.api import PODS
from kubeguard.sim.testing import RecordingWebhook, sim_cluster

NS = "kubeguard-system"
NODE_CONTROLLER = "system:serviceaccount:kube-system:node-controller"


def protection_configuration(hook: RecordingWebhook) -> dict[str, Any]:
    (config,) = manifests.render(manifests.options_from_settings({})).files["40-webhooks.yaml"]
    assert config["metadata"]["name"] == "pod-eviction-protection"
    for webhook in config["webhooks"]:
        service = webhook["clientConfig"]["service"]
        assert (service["namespace"], service["name"], service["port"]) == (NS, "kubeguard", 443)
        base = hook.url.rsplit("/", 1)[0]
        webhook["clientConfig"] = {"url": base + service["path"], "caBundle": hook.ca_bundle}
    return config


async def test_only_the_intended_requests_reach_kubeguard() -> None:
    async with sim_cluster() as cluster, RecordingWebhook() as hook:
        await cluster.register_webhook(protection_configuration(hook))
        await cluster.create_namespace(NS)
        await cluster.add_node("w1")
        await cluster.add_node("w2")
        for ns in ("demo", "kube-system", NS):
            await cluster.add_pod("victim", ns, node="w1", toleration_seconds=1, grace_period=0)
        await cluster.add_pod("steady", "demo", node="w2")
        await cluster.wait_pods_running()
        # A label-only UPDATE by a user: the API server must not call.
        await cluster.api.patch(
            PODS,
            "demo",
            "steady",
            "application/merge-patch+json",
            {"metadata": {"labels": {"tier": "backend"}}},
            cluster.user("alice"),
        )
        # The node fails: MarkPodsNotReady, then taint eviction (DisruptionTarget, DELETE).
        cluster.stop_heartbeat("w1")
        await cluster.wait_for(
            lambda: cluster.get("pods", "demo", "victim") is None,
            within=20,
            message="taint eviction of demo/victim",
        )
        code, _ = await cluster.evict_pod("demo", "steady", user="alice")
        assert code == 201
        seen = [
            (r.operation, r.resource, r.request.get("namespace"), r.username) for r in hook.reviews
        ]
        assert ("UPDATE", "pods/status", "demo", NODE_CONTROLLER) in seen  # Ready -> False
        assert ("DELETE", "pods", "demo", NODE_CONTROLLER) in seen
        assert ("CREATE", "pods/eviction", "demo", "alice") in seen
        assert {ns for _, _, ns, _ in seen} == {"demo"}
        assert not [u for *_, u in seen if u.startswith("system:node:")]
        assert not [s for s in seen if s[0] == "UPDATE" and s[1] == "pods"]  # label-only
        # kube-system and kubeguard's own pods were evicted without asking kubeguard.
        for ns in ("kube-system", NS):
            await cluster.wait_for(
                lambda ns=ns: cluster.get("pods", ns, "victim") is None, within=20
            )
