"""The four plugins end to end: the simulated cluster calls kubeguard's real HTTPS server (in
this process, 127.0.0.1, ephemeral port) through Mutating/ValidatingWebhookConfigurations
rendered from the plugins' WebhookEntries, applies the patches and returns the denials to the
client, exactly as kube-apiserver does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubeguard.notify import events
from kubeguard.notify.dingtalk import DingTalkChannel
from kubeguard.notify.dispatcher import NotificationDispatcher
from kubeguard.plugins.deletion_protection import MARKER
from kubeguard.plugins.sidecar_injection import INJECTED_ANNOTATION, SidecarInjection
from kubeguard.sim import SimCluster, pod_manifest
from kubeguard.sim.admission import WebhookCallRecord
from kubeguard.sim.auth import STATEFULSET_CONTROLLER
from kubeguard.sim.resources import core
from kubeguard.sim.util import ApiError
from notify.endpoint import FakeRobot

from .conftest import Kubeguard, kubeguard_on_sim

PODS = core("pods")
CONFIGMAPS = core("configmaps")
SECRETS = core("secrets")
NAMESPACES = core("namespaces")
STS_LABELS = {"ab-build-different": "true"}
STS_ANNOTATIONS = {"custom-node-selector": '{"key": "name", "even": "node1", "odd": "node2"}'}


def calls(kg: Kubeguard) -> list[WebhookCallRecord]:
    recorded: list[WebhookCallRecord] = []
    kg.cluster.dispatcher.on_call = recorded.append
    return recorded


async def create_as_statefulset(cluster: SimCluster, body: dict[str, Any]) -> dict[str, Any]:
    ns = body["metadata"]["namespace"]
    await cluster.create_namespace(ns)
    return await cluster.api.create(PODS, ns, body, STATEFULSET_CONTROLLER.info())


def sts_owner(name: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": name,
            "uid": "0b8f7a5e-2f6c-4d7e-9a53-3c1f0e0d5a11",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


# ------------------------------------------------------------------------- StsNodeSelector


async def test_sts_node_selector_end_to_end() -> None:
    async with kubeguard_on_sim("StsNodeSelector=true") as kg:
        cluster = kg.cluster
        pods = await cluster.create_statefulset_pods(
            "web", "demo", replicas=12, labels=STS_LABELS, annotations=STS_ANNOTATIONS
        )
        selectors = {p["metadata"]["name"]: p["spec"].get("nodeSelector") for p in pods}
        assert selectors == {
            f"web-{i}": {"name": "node1" if i % 2 == 0 else "node2"} for i in range(12)
        }
        # Stored as patched (not only returned).
        assert cluster.get("pods", "demo", "web-11")["spec"]["nodeSelector"] == {"name": "node2"}
        assert kg.notifier is not None
        assert kg.notifier.events().count(events.PLUGIN_MUTATION) == 12

        # Existing nodeSelector entries survive, the ordinal key is set.
        body = pod_manifest(
            "db-3",
            "demo",
            labels=STS_LABELS,
            annotations=STS_ANNOTATIONS,
            owner_references=sts_owner("db"),
        )
        body["spec"]["nodeSelector"] = {"kubernetes.io/arch": "amd64", "disk": "ssd"}
        created = await create_as_statefulset(cluster, body)
        assert created["spec"]["nodeSelector"] == {
            "kubernetes.io/arch": "amd64",
            "disk": "ssd",
            "name": "node2",
        }

        # A pod without the label: the API server does not even call kubeguard.
        recorded = calls(kg)
        plain = await cluster.add_pod("plain", "demo", labels={"app": "plain"})
        assert "nodeSelector" not in plain["spec"]
        assert [r for r in recorded if r.webhook.startswith("sts-node-selector")] == []


@pytest.mark.parametrize(
    ("annotations", "owners", "expected"),
    [
        (
            {"custom-node-selector": "{bad json"},
            "sts",
            "annotation custom-node-selector is not valid JSON",
        ),
        (
            {"custom-node-selector": '{"key": "name", "even": "node1"}'},
            "sts",
            "missing field(s) 'odd'",
        ),
        ({}, "sts", "no annotation custom-node-selector"),
        (STS_ANNOTATIONS, None, "is not owned by a StatefulSet (ownerReferences: none)"),
    ],
)
async def test_sts_node_selector_denials_reach_the_client(
    annotations: dict[str, str], owners: str | None, expected: str
) -> None:
    async with kubeguard_on_sim("StsNodeSelector=true") as kg:
        body = pod_manifest(
            "web-4",
            "demo",
            labels=STS_LABELS,
            annotations=annotations or None,
            owner_references=sts_owner("web") if owners else None,
        )
        with pytest.raises(ApiError) as info:
            await create_as_statefulset(kg.cluster, body)
        assert info.value.code == 400
        message = info.value.status["message"]
        assert message.startswith(
            'admission webhook "sts-node-selector.kubeguard.io" denied the request: '
        )
        assert expected in message
        assert '{"key": "name", "even": "node1", "odd": "node2"}' in message
        assert kg.cluster.get("pods", "demo", "web-4") is None
        assert kg.notifier is not None and kg.notifier.events() == [events.PLUGIN_DENIAL]


async def test_sts_node_selector_warn_mode_admits() -> None:
    async with kubeguard_on_sim(
        "StsNodeSelector=true", settings_overrides={"sts_invalid_action": "warn"}
    ) as kg:
        body = pod_manifest("web-1", "demo", labels=STS_LABELS, owner_references=sts_owner("web"))
        created = await create_as_statefulset(kg.cluster, body)
        assert "nodeSelector" not in created["spec"]


# ------------------------------------------------------------------------- StsOrdinalEnv


async def test_ordinal_env_end_to_end_with_sidecars_and_repeats() -> None:
    async with kubeguard_on_sim("StsOrdinalEnv=true") as kg:
        label = {"kubeguard.io/ordinal-env": "true"}
        pods = await kg.cluster.create_statefulset_pods("web", "demo", replicas=11, labels=label)
        assert pods[10]["spec"]["containers"][0]["env"] == [{"name": "INDEX", "value": "10"}]
        assert pods[3]["spec"]["containers"][0]["env"] == [{"name": "INDEX", "value": "3"}]

        body = pod_manifest("db-12", "demo", labels=label, owner_references=sts_owner("db"))
        body["spec"]["containers"] = [
            {"name": "app", "image": "app", "env": [{"name": "INDEX", "value": "mine"}]},
            {"name": "proxy", "image": "proxy", "env": [{"name": "PORT", "value": "80"}]},
        ]
        body["spec"]["initContainers"] = [{"name": "init", "image": "init"}]
        created = await create_as_statefulset(kg.cluster, body)
        spec = created["spec"]
        assert spec["containers"][0]["env"] == [{"name": "INDEX", "value": "mine"}]
        assert spec["containers"][1]["env"] == [
            {"name": "INDEX", "value": "12"},
            {"name": "PORT", "value": "80"},
        ]
        assert spec["initContainers"][0]["env"] == [{"name": "INDEX", "value": "12"}]


# ------------------------------------------------------------------------- DeletionProtection


async def test_deletion_protection_end_to_end() -> None:
    async with kubeguard_on_sim("DeletionProtection=true") as kg:
        cluster = kg.cluster
        await cluster.create_namespace("shop")
        await cluster.create(
            CONFIGMAPS,
            {"metadata": {"name": "guarded", "namespace": "shop", "labels": {MARKER: "true"}}},
        )
        await cluster.create(
            SECRETS,
            {"metadata": {"name": "creds", "namespace": "shop", "annotations": {MARKER: "true"}}},
        )
        await cluster.create(CONFIGMAPS, {"metadata": {"name": "free", "namespace": "shop"}})

        recorded = calls(kg)
        await cluster.api.delete(CONFIGMAPS, "shop", "free", {}, cluster.admin)
        # The matchCondition kept kubeguard out of an unprotected object's deletion.
        assert [r.webhook for r in recorded] == []

        with pytest.raises(ApiError) as info:
            await cluster.api.delete(CONFIGMAPS, "shop", "guarded", {}, cluster.admin)
        assert info.value.code == 403
        assert "ConfigMap shop/guarded is protected from deletion by kubeguard" in str(info.value)
        assert f"kubectl label configmaps guarded -n shop {MARKER}-" in str(info.value)

        with pytest.raises(ApiError) as info:
            await cluster.api.delete(SECRETS, "shop", "creds", {}, cluster.admin)
        assert f"kubectl annotate secrets creds -n shop {MARKER}-" in str(info.value)

        # The namespace still holds both: denied at DELETE time, nothing deleted.
        with pytest.raises(ApiError) as info:
            await cluster.api.delete(NAMESPACES, "", "shop", {}, cluster.admin)
        message = str(info.value)
        assert info.value.code == 403
        assert "namespace shop still contains 2 object(s) protected" in message
        assert "configmaps/guarded" in message and "secrets/creds" in message
        assert "stuck Terminating" in message
        assert cluster.get("configmaps", "shop", "guarded") is not None

        # Lift the protection as the message says; then the namespace can go.
        await cluster.api.patch(
            CONFIGMAPS,
            "shop",
            "guarded",
            "application/merge-patch+json",
            {"metadata": {"labels": {MARKER: None}}},
            cluster.admin,
        )
        await cluster.api.patch(
            SECRETS,
            "shop",
            "creds",
            "application/merge-patch+json",
            {"metadata": {"annotations": {MARKER: None}}},
            cluster.admin,
        )
        await cluster.api.delete(NAMESPACES, "", "shop", {}, cluster.admin)
        assert cluster.get("namespaces", "", "shop") is None

        # A protected namespace itself.
        await cluster.create_namespace("prod", labels={MARKER: "true"})
        with pytest.raises(ApiError) as info:
            await cluster.api.delete(NAMESPACES, "", "prod", {}, cluster.admin)
        assert "Namespace prod is protected" in str(info.value)

        # An empty, unprotected namespace is deleted normally.
        await cluster.create_namespace("scratch")
        await cluster.api.delete(NAMESPACES, "", "scratch", {}, cluster.admin)
        assert kg.notifier is not None
        assert kg.notifier.events().count(events.PLUGIN_DENIAL) == 4


async def test_namespace_check_pages_through_large_lists() -> None:
    async with kubeguard_on_sim("DeletionProtection=true") as kg:
        cluster = kg.cluster
        await cluster.create_namespace("big")
        for i in range(1203):
            labels = {MARKER: "true"} if i == 1202 else {"n": str(i)}
            await cluster.create(
                CONFIGMAPS,
                {"metadata": {"name": f"cm-{i:04d}", "namespace": "big", "labels": labels}},
            )
        with pytest.raises(ApiError) as info:
            await cluster.api.delete(NAMESPACES, "", "big", {}, cluster.admin)
        assert "configmaps/cm-1202" in str(info.value)


# ------------------------------------------------------------------------- SidecarInjection

TEMPLATE = """
containers:
  - name: log-agent
    image: registry.example.com/log-agent:1.4
    volumeMounts: [{name: shared-logs, mountPath: /var/log/app}]
volumes:
  - name: shared-logs
    emptyDir: {}
"""


async def put_template(cluster: SimCluster, text: str) -> None:
    await cluster.create_namespace("kubeguard-system")
    existing = cluster.get("configmaps", "kubeguard-system", "kubeguard-sidecar")
    if existing is None:
        await cluster.create(
            CONFIGMAPS,
            {
                "metadata": {"name": "kubeguard-sidecar", "namespace": "kubeguard-system"},
                "data": {"sidecar.yaml": text},
            },
        )
    else:
        await cluster.api.patch(
            CONFIGMAPS,
            "kubeguard-system",
            "kubeguard-sidecar",
            "application/merge-patch+json",
            {"data": {"sidecar.yaml": text}},
            cluster.admin,
        )


def sidecar_handler(kg: Kubeguard) -> SidecarInjection:
    [webhook] = [w for w in kg.webhooks if w.path == "/mutate-sidecar"]
    handler = webhook.specs[0].handler
    assert isinstance(handler, SidecarInjection)
    return handler


async def test_sidecar_injection_end_to_end() -> None:
    async def prepare(cluster: SimCluster) -> None:
        await put_template(cluster, TEMPLATE)

    async with kubeguard_on_sim("SidecarInjection=true", before_start=[prepare]) as kg:
        cluster = kg.cluster
        handler = sidecar_handler(kg)
        await cluster.wait_for(lambda: handler.cache.template is not None, message="template")
        await cluster.create_namespace("mesh", labels={"kubeguard.io/inject-sidecar": "true"})
        await cluster.create_namespace("plain")

        pod = await cluster.add_pod("a", "mesh")
        assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "log-agent"]
        assert [v["name"] for v in pod["spec"]["volumes"]][-1] == "shared-logs"
        assert INJECTED_ANNOTATION in pod["metadata"]["annotations"]

        opted_out = await cluster.add_pod(
            "b", "mesh", labels={"kubeguard.io/inject-sidecar": "false"}
        )
        assert [c["name"] for c in opted_out["spec"]["containers"]] == ["app"]

        recorded = calls(kg)
        untouched = await cluster.add_pod("c", "plain")
        assert [c["name"] for c in untouched["spec"]["containers"]] == ["app"]
        assert recorded == []  # selectors: kubeguard not called

        by_label = await cluster.add_pod(
            "d", "plain", labels={"kubeguard.io/inject-sidecar": "true"}
        )
        assert [c["name"] for c in by_label["spec"]["containers"]] == ["app", "log-agent"]
        # Exactly one entry matched (namespace and pod entries do not overlap).
        assert len([r for r in recorded if "sidecar" in r.webhook]) == 1

        # Re-submitting an injected pod's spec under a new name: no second sidecar.
        again = {k: pod[k] for k in ("apiVersion", "kind", "spec") if k in pod}
        again["metadata"] = {
            "name": "a2",
            "namespace": "mesh",
            "annotations": pod["metadata"]["annotations"],
        }
        again.setdefault("apiVersion", "v1")
        again.setdefault("kind", "Pod")
        again["spec"] = {
            "containers": pod["spec"]["containers"],
            "volumes": [v for v in pod["spec"]["volumes"] if v["name"] == "shared-logs"],
        }
        resubmitted = await cluster.create(PODS, again)
        assert [c["name"] for c in resubmitted["spec"]["containers"]] == ["app", "log-agent"]

        # The template breaks: the watch picks it up, pods are refused with the reason.
        await put_template(cluster, "containers: [")
        await cluster.wait_for(lambda: "not valid YAML" in handler.cache.problem, message="bad")
        with pytest.raises(ApiError) as info:
            await cluster.add_pod("e", "mesh")
        assert info.value.code == 503
        assert "ConfigMap kubeguard-system/kubeguard-sidecar is malformed" in str(info.value)
        value = kg.runtime.registry.get_sample_value("sidecar_template_valid")
        assert value == 0

        # Fixed again: injection resumes without a restart.
        await put_template(cluster, TEMPLATE.replace("1.4", "1.5"))
        await cluster.wait_for(lambda: handler.cache.template is not None, message="fixed")
        fixed = await cluster.add_pod("f", "mesh")
        assert fixed["spec"]["containers"][1]["image"].endswith(":1.5")


async def test_sidecar_template_deleted_is_reported() -> None:
    async def prepare(cluster: SimCluster) -> None:
        await put_template(cluster, TEMPLATE)

    async with kubeguard_on_sim("SidecarInjection=true", before_start=[prepare]) as kg:
        handler = sidecar_handler(kg)
        await kg.cluster.wait_for(lambda: handler.cache.template is not None, message="template")
        await kg.cluster.api.delete(
            CONFIGMAPS, "kubeguard-system", "kubeguard-sidecar", {}, kg.cluster.admin
        )
        await kg.cluster.wait_for(lambda: "does not exist" in handler.cache.problem, message="gone")
        await kg.cluster.create_namespace("mesh", labels={"kubeguard.io/inject-sidecar": "true"})
        with pytest.raises(ApiError) as info:
            await kg.cluster.add_pod("a", "mesh")
        assert "does not exist" in str(info.value)


# ------------------------------------------------------------------------- notifications


async def test_hanging_dingtalk_never_delays_admission() -> None:
    """The robot accepts the connection and never answers; every pod CREATE still completes
    (admission answers) while the first notification is stuck in flight."""
    async with FakeRobot(secret="SECabc", mode="hang") as robot:
        dispatcher = NotificationDispatcher(
            [DingTalkChannel(robot.url, "SECabc", verify=robot.client_context())],
            attempts=1,
            attempt_timeout=60,
        )
        async with kubeguard_on_sim("StsNodeSelector=true", notifier=dispatcher) as kg:
            runner = asyncio.create_task(dispatcher.run())
            try:
                first = await kg.cluster.create_statefulset_pods(
                    "web", "demo", replicas=1, labels=STS_LABELS, annotations=STS_ANNOTATIONS
                )
                async with asyncio.timeout(10):
                    await robot.arrived.wait()  # the notification is now hanging
                more = [
                    await create_as_statefulset(
                        kg.cluster,
                        pod_manifest(
                            f"web-{i}",
                            "demo",
                            labels=STS_LABELS,
                            annotations=STS_ANNOTATIONS,
                            owner_references=sts_owner("web"),
                        ),
                    )
                    for i in range(1, 4)
                ]
                # All admitted and patched while DingTalk still holds the first request.
                assert not robot.release.is_set() and len(robot.received) == 1
                assert [p["spec"]["nodeSelector"]["name"] for p in first + more] == [
                    "node1",
                    "node2",
                    "node1",
                    "node2",
                ]
                assert robot.received[0].signature_ok is True
                robot.mode = "ok"
                robot.release.set()
                async with asyncio.timeout(10):
                    await dispatcher.wait_idle()
                assert len(robot.received) == 4
                assert all(r.signature_ok for r in robot.received)
                assert "web-3" in robot.received[-1].body["markdown"]["text"]
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
                await dispatcher.aclose()
