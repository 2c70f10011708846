"""DeletionProtection decisions without a cluster (the namespace listing is tested on the sim
in test_e2e_sim.py)."""

from __future__ import annotations

from typing import Any

import pytest

from kubeguard.admission.webhook import Webhook
from kubeguard.notify import events
from kubeguard.plugins.deletion_protection import (
    KNOWN_RESOURCES,
    MARKER,
    entries,
    parse_resources,
)
from kubeguard.runtime import Runtime

from .conftest import RecordingNotifier, make_review, review, settings, webhooks_for


def make_webhook(**overrides: Any) -> tuple[Webhook, RecordingNotifier]:
    notifier = RecordingNotifier()
    runtime = Runtime(settings(**overrides), notifier=notifier)
    [webhook] = webhooks_for(runtime, "DeletionProtection=true")
    return webhook, notifier


def obj(
    kind: str,
    name: str,
    namespace: str = "demo",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels, "annotations": annotations}
    if namespace:
        meta["namespace"] = namespace
    return {"kind": kind, "apiVersion": "v1", "metadata": meta}


def delete_review(
    kind: str,
    name: str,
    resource: tuple[str, str, str],
    *,
    namespace: str = "demo",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """An AdmissionReview deleting `kind` `name`; the old object carries the metadata."""
    return make_review(
        "DELETE",
        None,
        old=obj(kind, name, namespace, labels, annotations),
        resource=resource,
        kind=kind,
        namespace=namespace,
        dry_run=dry_run,
    )


async def test_labelled_deployment_delete_is_denied_with_the_lift_command() -> None:
    webhook, notifier = make_webhook()
    body = delete_review(
        "Deployment", "web", ("apps", "v1", "deployments"), labels={MARKER: "true"}
    )
    decision = await review(webhook, body)
    assert not decision.allowed and decision.code == 403
    assert "Deployment demo/web is protected from deletion by kubeguard" in decision.message
    assert f"kubectl label deployments.apps web -n demo {MARKER}-" in decision.message
    assert notifier.events() == [events.PLUGIN_DENIAL]


async def test_annotated_configmap_delete_is_denied_with_annotate_command() -> None:
    webhook, _ = make_webhook()
    body = delete_review(
        "ConfigMap", "settings", ("", "v1", "configmaps"), annotations={MARKER: "true"}
    )
    decision = await review(webhook, body)
    assert not decision.allowed
    assert f"kubectl annotate configmaps settings -n demo {MARKER}-" in decision.message


@pytest.mark.parametrize("value", ["false", "True", "yes", ""])
async def test_other_marker_values_do_not_protect(value: str) -> None:
    webhook, _ = make_webhook()
    body = delete_review("Service", "web", ("", "v1", "services"), labels={MARKER: value})
    assert (await review(webhook, body)).allowed


async def test_resource_not_configured_is_not_protected() -> None:
    webhook, _ = make_webhook(delete_protection_resources=("configmaps",))
    body = delete_review("Secret", "s", ("", "v1", "secrets"), labels={MARKER: "true"})
    assert (await review(webhook, body)).allowed


async def test_dry_run_delete_is_denied_but_not_notified() -> None:
    webhook, notifier = make_webhook()
    body = delete_review(
        "ConfigMap", "c", ("", "v1", "configmaps"), dry_run=True, labels={MARKER: "true"}
    )
    assert not (await review(webhook, body)).allowed
    assert notifier.sent == []


async def test_protected_namespace_itself_is_denied_without_listing() -> None:
    webhook, _ = make_webhook()
    body = delete_review(
        "Namespace", "prod", ("", "v1", "namespaces"), namespace="", labels={MARKER: "true"}
    )
    decision = await review(webhook, body)
    assert not decision.allowed
    assert "Namespace prod is protected" in decision.message
    assert f"kubectl label namespaces prod {MARKER}-" in decision.message


async def test_namespace_check_without_api_access_fails_closed() -> None:
    webhook, _ = make_webhook()  # Runtime without a kube client
    body = delete_review("Namespace", "prod", ("", "v1", "namespaces"), namespace="")
    decision = await review(webhook, body)
    assert not decision.allowed and decision.code == 503
    assert "could not verify that namespace prod holds no objects protected" in decision.message
    assert "no Kubernetes API access" in decision.message


def test_parse_resources_known_custom_and_errors() -> None:
    types = parse_resources(["deployments", "configmaps", "example.com/v1/widgets", "deployments"])
    assert [t.kubectl_name for t in types] == [
        "deployments.apps",
        "configmaps",
        "widgets.example.com",
    ]
    assert types[2].collection_path("ns") == "/apis/example.com/v1/namespaces/ns/widgets"
    assert types[1].collection_path("ns") == "/api/v1/namespaces/ns/configmaps"
    with pytest.raises(ValueError, match="unknown resource 'deploymnets'"):
        parse_resources(["deploymnets"])


def test_entries_narrow_object_deletes_and_cover_namespaces() -> None:
    objects, namespaces = entries(parse_resources(["namespaces", "deployments", "configmaps"]))
    assert objects.match_conditions and MARKER in objects.match_conditions[0][1]
    assert {(r.api_groups, r.resources) for r in objects.rules} == {
        (("apps",), ("deployments",)),
        (("",), ("configmaps",)),
    }
    assert all(r.operations == ("DELETE",) for r in objects.rules)
    assert namespaces.rules[0].resources == ("namespaces",)
    assert namespaces.failure_policy == "Fail" and namespaces.timeout_seconds == 15
    assert not namespaces.match_conditions
    assert set(KNOWN_RESOURCES) >= set(settings().delete_protection_resources)


def test_empty_resource_list_is_a_build_error() -> None:
    runtime = Runtime(settings(delete_protection_resources=()))
    with pytest.raises(ValueError, match="lists no resource"):
        webhooks_for(runtime, "DeletionProtection=true")
