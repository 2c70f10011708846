"""StsNodeSelector on reviews derived from the real StatefulSet pod CREATE (web-2)."""

from __future__ import annotations

from typing import Any

import pytest

from kubeguard.admission.webhook import Webhook
from kubeguard.notify import events
from kubeguard.plugins.sts_node_selector import (
    PATH,
    AnnotationError,
    NodeSelectorRule,
    parse_rule,
)
from kubeguard.runtime import Runtime

from .conftest import (
    RecordingNotifier,
    patched_object,
    plugin_webhook,
    review,
    settings,
    sts_pod_review,
    webhooks_for,
)

ANNOTATION = "custom-node-selector"


def make_webhook(**overrides: Any) -> tuple[Webhook, RecordingNotifier]:
    webhook, notifier = plugin_webhook("StsNodeSelector", **overrides)
    assert webhook.path == PATH
    return webhook, notifier


def pod_review(
    *,
    name: str = "web-2",
    index: str | None = "2",
    annotation: str | None = '{"key": "name", "even": "node1", "odd": "node2"}',
    node_selector: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body = sts_pod_review()
    pod = body["request"]["object"]
    meta = pod["metadata"]
    meta["name"] = name
    body["request"]["name"] = name
    if index is None:
        meta["labels"].pop("apps.kubernetes.io/pod-index")
    else:
        meta["labels"]["apps.kubernetes.io/pod-index"] = index
    if annotation is None:
        meta["annotations"].pop(ANNOTATION)
    else:
        meta["annotations"][ANNOTATION] = annotation
    if node_selector is not None:
        pod["spec"]["nodeSelector"] = node_selector
    if owners is not None:
        meta["ownerReferences"] = owners
    return body


async def test_fixture_pod_even_ordinal_gets_even_value() -> None:
    webhook, notifier = make_webhook()
    body = sts_pod_review()
    decision = await review(webhook, body)
    assert decision.allowed
    assert decision.patch == [
        {"op": "add", "path": "/spec/nodeSelector", "value": {"name": "node1"}}
    ]
    assert patched_object(body, decision)["spec"]["nodeSelector"] == {"name": "node1"}
    assert notifier.events() == [events.PLUGIN_MUTATION]
    assert "web-2" in notifier.sent[0].text and "name=node1" in notifier.sent[0].text


@pytest.mark.parametrize(
    ("ordinal", "value"),
    [(0, "node1"), (1, "node2"), (9, "node2"), (10, "node1"), (11, "node2"), (123, "node2")],
)
async def test_ordinal_from_name_including_above_nine(ordinal: int, value: str) -> None:
    webhook, _ = make_webhook()
    body = pod_review(name=f"web-{ordinal}", index=None)
    decision = await review(webhook, body)
    assert patched_object(body, decision)["spec"]["nodeSelector"] == {"name": value}


async def test_pod_index_label_is_authoritative_over_the_name() -> None:
    # spec.ordinals.start or a renamed pod: the controller's label wins.
    webhook, _ = make_webhook()
    body = pod_review(name="web-2", index="7")
    decision = await review(webhook, body)
    assert patched_object(body, decision)["spec"]["nodeSelector"] == {"name": "node2"}


async def test_existing_node_selector_entries_are_kept() -> None:
    webhook, _ = make_webhook()
    body = pod_review(node_selector={"kubernetes.io/arch": "amd64", "disk": "ssd"})
    decision = await review(webhook, body)
    assert decision.patch == [{"op": "add", "path": "/spec/nodeSelector/name", "value": "node1"}]
    assert patched_object(body, decision)["spec"]["nodeSelector"] == {
        "kubernetes.io/arch": "amd64",
        "disk": "ssd",
        "name": "node1",
    }
    assert decision.warnings == []


async def test_existing_key_is_replaced_with_a_warning() -> None:
    webhook, _ = make_webhook()
    body = pod_review(node_selector={"name": "node9", "zone": "a"})
    decision = await review(webhook, body)
    assert patched_object(body, decision)["spec"]["nodeSelector"] == {"name": "node1", "zone": "a"}
    assert any("replaced nodeSelector name=node9" in w for w in decision.warnings)


async def test_key_with_slash_is_escaped_in_the_pointer() -> None:
    webhook, _ = make_webhook()
    body = pod_review(
        annotation='{"key": "example.com/pool", "even": "a", "odd": "b"}',
        node_selector={"disk": "ssd"},
    )
    decision = await review(webhook, body)
    assert decision.patch[0]["path"] == "/spec/nodeSelector/example.com~1pool"
    assert patched_object(body, decision)["spec"]["nodeSelector"] == {
        "disk": "ssd",
        "example.com/pool": "a",
    }


async def test_already_placed_pod_gets_no_patch() -> None:
    webhook, notifier = make_webhook()
    decision = await review(webhook, pod_review(node_selector={"name": "node1"}))
    assert decision.allowed and decision.patch == []
    assert notifier.sent == []


async def test_pod_without_the_label_passes_untouched() -> None:
    webhook, notifier = make_webhook()
    body = sts_pod_review()
    del body["request"]["object"]["metadata"]["labels"]["ab-build-different"]
    decision = await review(webhook, body)
    assert decision.allowed and decision.patch == [] and decision.warnings == []
    assert notifier.sent == []


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (None, "no annotation custom-node-selector"),
        ('{"key": "name", "even": "node1"', "is not valid JSON"),
        ('["name", "node1", "node2"]', "must be a JSON object"),
        ('{"key": "name", "even": "node1"}', "missing field(s) 'odd'"),
        ('{"key": "name", "even": 1, "odd": "node2"}', "field 'even' must be a string, got int 1"),
        ('{"key": "", "even": "node1", "odd": "node2"}', "field 'key' '' is not a valid label key"),
        ('{"key": "name", "even": "", "odd": "node2"}', "field 'even' must not be empty"),
        ('{"key": "na me", "even": "a", "odd": "b"}', "is not a valid label key"),
        ('{"key": "name", "even": "node 1", "odd": "b"}', "field 'even' 'node 1' is not a valid"),
        ('{"key": "name", "even": "a", "odd": "b", "evne": "c"}', "unknown field(s) 'evne'"),
    ],
)
async def test_malformed_annotation_is_denied_with_what_and_an_example(
    annotation: str | None, expected: str
) -> None:
    webhook, notifier = make_webhook()
    decision = await review(webhook, pod_review(annotation=annotation))
    assert not decision.allowed
    assert decision.code == 400
    assert expected in decision.message
    assert "pod demo/web-2" in decision.message
    assert '{"key": "name", "even": "node1", "odd": "node2"}' in decision.message
    assert notifier.events() == [events.PLUGIN_DENIAL]


async def test_pod_without_statefulset_owner_is_denied() -> None:
    webhook, _ = make_webhook()
    body = pod_review(
        owners=[
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d4cf56db6", "uid": "x"}
        ]
    )
    decision = await review(webhook, body)
    assert not decision.allowed
    assert "not owned by a StatefulSet" in decision.message
    assert "apps/v1 ReplicaSet web-6d4cf56db6" in decision.message


async def test_pod_without_any_owner_is_denied() -> None:
    webhook, _ = make_webhook()
    decision = await review(webhook, pod_review(owners=[]))
    assert not decision.allowed and "ownerReferences: none" in decision.message


async def test_name_that_is_not_statefulset_ordinal_is_denied() -> None:
    webhook, _ = make_webhook()
    decision = await review(webhook, pod_review(name="other-2", index=None))
    assert not decision.allowed
    assert "'other-2' is not <statefulset>-<ordinal>" in decision.message


async def test_bad_pod_index_label_is_denied() -> None:
    webhook, _ = make_webhook()
    decision = await review(webhook, pod_review(index="-1"))
    assert not decision.allowed and "is not a non-negative integer" in decision.message


async def test_warn_mode_admits_unchanged_with_a_warning() -> None:
    webhook, notifier = make_webhook(sts_invalid_action="warn")
    decision = await review(webhook, pod_review(annotation="not json"))
    assert decision.allowed and decision.patch == []
    assert any(
        "did not set a nodeSelector" in w and "not valid JSON" in w for w in decision.warnings
    )
    assert notifier.events() == [events.PLUGIN_WARNING]


async def test_configurable_label_key() -> None:
    webhook, _ = make_webhook(sts_label_key="example.com/placement")
    body = sts_pod_review()
    labels = body["request"]["object"]["metadata"]["labels"]
    del labels["ab-build-different"]
    assert (await review(webhook, body)).patch == []
    labels["example.com/placement"] = "true"
    assert (await review(webhook, body)).patch != []


async def test_dry_run_is_patched_but_not_notified() -> None:
    webhook, notifier = make_webhook()
    body = sts_pod_review()
    body["request"]["dryRun"] = True
    decision = await review(webhook, body)
    assert decision.patch
    assert notifier.sent == []


def test_entry_selects_only_labelled_pod_creates() -> None:
    runtime = Runtime(settings())
    [webhook] = webhooks_for(runtime, "StsNodeSelector=true")
    [entry] = webhook.specs[0].entries
    assert entry.object_selector == {"matchLabels": {"ab-build-different": "true"}}
    assert [r.operations for r in entry.rules] == [("CREATE",)]
    assert entry.failure_policy == "Fail"


def test_parse_rule_round_trip() -> None:
    rule = NodeSelectorRule("name", "node1", "node2")
    assert parse_rule(rule.to_annotation()) == rule
    assert rule.value_for(0) == "node1" and rule.value_for(13) == "node2"
    with pytest.raises(AnnotationError, match="not valid JSON"):
        parse_rule("{")


def test_default_registry_builds_every_plugin_without_a_cluster() -> None:
    from kubeguard.metrics import AdmissionMetrics
    from kubeguard.plugins import default_registry

    registry = default_registry()
    gates = registry.gates(
        "StsNodeSelector=true,StsOrdinalEnv=true,DeletionProtection=true,SidecarInjection=true"
    )
    runtime = Runtime(settings())  # no kube client: builders must not do I/O
    webhooks = registry.build(gates, runtime, AdmissionMetrics(runtime.registry))
    paths = {w.path: w.kind for w in webhooks}
    assert paths["/mutate-sts-node-selector"] == "mutating"
    assert paths["/mutate-sts-ordinal-env"] == "mutating"
    assert paths["/validate-deletion-protection"] == "validating"
    assert paths["/mutate-sidecar"] == "mutating"
    assert all(spec.entries for w in webhooks for spec in w.specs)
    off = registry.gates("")
    assert not any(
        off.enabled(g)
        for g in ("StsNodeSelector", "StsOrdinalEnv", "DeletionProtection", "SidecarInjection")
    )
