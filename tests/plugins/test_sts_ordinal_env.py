"""StsOrdinalEnv on reviews derived from the real StatefulSet pod CREATE."""

from __future__ import annotations

from typing import Any

from kubeguard.admission.webhook import Webhook
from kubeguard.notify import events
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

LABEL = "kubeguard.io/ordinal-env"


def make_webhook(**overrides: Any) -> tuple[Webhook, RecordingNotifier]:
    return plugin_webhook("StsOrdinalEnv", **overrides)


def pod_review(
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    *,
    name: str = "web-2",
    index: str | None = "2",
    label: bool = True,
) -> dict[str, Any]:
    body = sts_pod_review()
    pod = body["request"]["object"]
    pod["metadata"]["name"] = name
    labels = pod["metadata"]["labels"]
    if index is None:
        del labels["apps.kubernetes.io/pod-index"]
    else:
        labels["apps.kubernetes.io/pod-index"] = index
    if label:
        labels[LABEL] = "true"
    if containers is not None:
        pod["spec"]["containers"] = containers
    if init_containers is not None:
        pod["spec"]["initContainers"] = init_containers
    return body


def env_of(pod: dict[str, Any], field: str = "containers") -> dict[str, list[dict[str, Any]]]:
    return {c["name"]: c.get("env") for c in pod["spec"].get(field, [])}


async def test_fixture_pod_gets_index_in_its_container() -> None:
    webhook, notifier = make_webhook()
    body = pod_review()
    decision = await review(webhook, body)
    assert decision.patch == [
        {"op": "add", "path": "/spec/containers/0/env", "value": [{"name": "INDEX", "value": "2"}]}
    ]
    assert env_of(patched_object(body, decision)) == {"nginx": [{"name": "INDEX", "value": "2"}]}
    assert notifier.events() == [events.PLUGIN_MUTATION]


async def test_every_container_and_init_container_by_index_with_sidecars() -> None:
    webhook, _ = make_webhook()
    body = pod_review(
        containers=[
            {"name": "app", "image": "a", "env": [{"name": "A", "value": "$(INDEX)-x"}]},
            {"name": "sidecar/proxy~1", "image": "p"},
            {"name": "logs", "image": "l", "env": []},
        ],
        init_containers=[{"name": "init", "image": "i"}],
        name="web-11",
        index=None,
    )
    decision = await review(webhook, body)
    pod = patched_object(body, decision)
    # INDEX first, so A's $(INDEX) reference resolves; existing variables kept.
    assert env_of(pod) == {
        "app": [{"name": "INDEX", "value": "11"}, {"name": "A", "value": "$(INDEX)-x"}],
        "sidecar/proxy~1": [{"name": "INDEX", "value": "11"}],
        "logs": [{"name": "INDEX", "value": "11"}],
    }
    assert env_of(pod, "initContainers") == {"init": [{"name": "INDEX", "value": "11"}]}
    assert [c["image"] for c in pod["spec"]["containers"]] == ["a", "p", "l"]


async def test_container_defining_the_variable_is_left_alone() -> None:
    webhook, _ = make_webhook()
    body = pod_review(
        containers=[
            {"name": "app", "image": "a", "env": [{"name": "INDEX", "value": "custom"}]},
            {"name": "same", "image": "s", "env": [{"name": "INDEX", "value": "2"}]},
            {"name": "other", "image": "o"},
        ]
    )
    decision = await review(webhook, body)
    pod = patched_object(body, decision)
    assert env_of(pod) == {
        "app": [{"name": "INDEX", "value": "custom"}],
        "same": [{"name": "INDEX", "value": "2"}],
        "other": [{"name": "INDEX", "value": "2"}],
    }
    assert (
        len(decision.warnings) == 1
        and "container app already defines INDEX=custom" in (decision.warnings[0])
    )


async def test_repeated_injection_is_a_no_op() -> None:
    webhook, notifier = make_webhook()
    body = pod_review()
    first = await review(webhook, body)
    body["request"]["object"] = patched_object(body, first)
    second = await review(webhook, body)
    assert second.allowed and second.patch == [] and second.warnings == []
    assert notifier.events() == [events.PLUGIN_MUTATION]


async def test_init_containers_can_be_excluded_and_name_configured() -> None:
    webhook, _ = make_webhook(ordinal_env_init_containers=False, ordinal_env_name="POD_ORDINAL")
    body = pod_review(init_containers=[{"name": "init", "image": "i"}])
    pod = patched_object(body, await review(webhook, body))
    assert env_of(pod) == {"nginx": [{"name": "POD_ORDINAL", "value": "2"}]}
    assert env_of(pod, "initContainers") == {"init": None}


async def test_unlabelled_pod_untouched() -> None:
    webhook, _ = make_webhook()
    decision = await review(webhook, pod_review(label=False))
    assert decision.allowed and decision.patch == []


async def test_labelled_pod_without_statefulset_is_admitted_with_a_warning() -> None:
    webhook, notifier = make_webhook()
    body = pod_review()
    body["request"]["object"]["metadata"]["ownerReferences"] = []
    decision = await review(webhook, body)
    assert decision.allowed and decision.patch == []
    assert "not owned by a StatefulSet" in decision.warnings[0]
    assert notifier.events() == [events.PLUGIN_WARNING]


def test_entry_reinvokes_for_later_sidecars() -> None:
    [webhook] = webhooks_for(Runtime(settings()), "StsOrdinalEnv=true")
    [entry] = webhook.specs[0].entries
    assert entry.reinvocation_policy == "IfNeeded"
    assert entry.object_selector == {"matchLabels": {LABEL: "true"}}
