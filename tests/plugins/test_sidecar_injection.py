"""SidecarInjection: template parsing, cache states and the injection patch (no cluster; the
ConfigMap watch is tested on the sim in test_e2e_sim.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from kubeguard.admission.review import Request, decode_review
from kubeguard.admission.webhook import Webhook
from kubeguard.notify import events
from kubeguard.plugins.sidecar_injection import (
    INJECTED_ANNOTATION,
    SidecarInjection,
    TemplateError,
    _CMMeta,
    _ConfigMap,
    parse_template,
)
from kubeguard.runtime import Runtime

from .conftest import RecordingNotifier, make_review, patched_object, review, settings, webhooks_for

TEMPLATE = """
containers:
  - name: log-agent
    image: registry.example.com/log-agent:1.4
    volumeMounts:
      - {name: shared-logs, mountPath: /var/log/app}
volumes:
  - name: shared-logs
    emptyDir: {}
"""


def make_webhook() -> tuple[Webhook, SidecarInjection, RecordingNotifier]:
    notifier = RecordingNotifier()
    runtime = Runtime(settings(), notifier=notifier)
    [webhook] = webhooks_for(runtime, "SidecarInjection=true")
    handler = webhook.specs[0].handler
    assert isinstance(handler, SidecarInjection)
    return webhook, handler, notifier


def configmap(text: str | None, version: str = "7") -> _ConfigMap:
    return _ConfigMap(
        metadata=_CMMeta(
            name="kubeguard-sidecar", namespace="kubeguard-system", resource_version=version
        ),
        data=None if text is None else {"sidecar.yaml": text},
    )


def pod(
    containers: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers or [{"name": "app", "image": "app:1"}]}
    if volumes is not None:
        spec["volumes"] = volumes
    meta: dict[str, Any] = {"name": "p", "namespace": "demo", "labels": labels or {"app": "p"}}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


async def test_injects_containers_volumes_and_marker() -> None:
    webhook, handler, notifier = make_webhook()
    handler.cache.apply(configmap(TEMPLATE))
    body = make_review("CREATE", pod())
    decision = await review(webhook, body)
    result = patched_object(body, decision)
    assert [c["name"] for c in result["spec"]["containers"]] == ["app", "log-agent"]
    assert result["spec"]["volumes"] == [{"name": "shared-logs", "emptyDir": {}}]
    marker = result["metadata"]["annotations"][INJECTED_ANNOTATION]
    assert '"containers":["log-agent"]' in marker and "kubeguard-sidecar@7" in marker
    assert notifier.events() == [events.PLUGIN_MUTATION]

    # Repeated injection (e.g. the pod manifest re-submitted, or a second entry): nothing.
    body["request"]["object"] = result
    again = await review(webhook, body)
    assert again.allowed and again.patch == []


async def test_existing_names_are_respected_and_volumes_appended() -> None:
    webhook, handler, _ = make_webhook()
    handler.cache.apply(configmap(TEMPLATE))
    body = make_review(
        "CREATE",
        pod(
            containers=[{"name": "app", "image": "a"}, {"name": "log-agent", "image": "mine"}],
            volumes=[{"name": "data", "emptyDir": {}}],
            annotations={"team": "x"},
        ),
    )
    decision = await review(webhook, body)
    result = patched_object(body, decision)
    assert [(c["name"], c["image"]) for c in result["spec"]["containers"]] == [
        ("app", "a"),
        ("log-agent", "mine"),
    ]
    assert [v["name"] for v in result["spec"]["volumes"]] == ["data", "shared-logs"]
    assert result["metadata"]["annotations"]["team"] == "x"
    assert INJECTED_ANNOTATION in result["metadata"]["annotations"]


async def test_pod_volume_with_template_name_is_kept_with_warning() -> None:
    webhook, handler, _ = make_webhook()
    handler.cache.apply(configmap(TEMPLATE))
    body = make_review("CREATE", pod(volumes=[{"name": "shared-logs", "hostPath": {"path": "/x"}}]))
    decision = await review(webhook, body)
    result = patched_object(body, decision)
    assert result["spec"]["volumes"] == [{"name": "shared-logs", "hostPath": {"path": "/x"}}]
    assert any("already has a volume named shared-logs" in w for w in decision.warnings)


async def test_opt_out_label_and_marker_skip() -> None:
    webhook, handler, _ = make_webhook()
    handler.cache.apply(configmap(TEMPLATE))
    out = make_review("CREATE", pod(labels={"kubeguard.io/inject-sidecar": "false"}))
    assert (await review(webhook, out)).patch == []
    marked = make_review("CREATE", pod(annotations={INJECTED_ANNOTATION: "{}"}))
    assert (await review(webhook, marked)).patch == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "has no key sidecar.yaml"),
        ("containers: [", "is not valid YAML"),
        ("- a\n- b", "must be a mapping"),
        ("containers: []\n", "defines no containers"),
        ("containers:\n  - image: x\n", "containers[0] needs a string name"),
        ("containers:\n  - name: Bad_Name\n    image: x\n", "containers[0].name 'Bad_Name'"),
        ("containers:\n  - name: a\n", "containers[0] (a) needs an image"),
        ("containers:\n  - {name: a, image: x}\n  - {name: a, image: y}\n", "duplicate name 'a'"),
        ("containers:\n  - {name: a, image: x}\nvolumes: {}\n", "volumes must be a list"),
        (
            "containers:\n  - {name: a, image: x}\ninitContainers: []\n",
            "unknown key(s) initContainers",
        ),
    ],
)
async def test_malformed_template_denies_with_a_clear_message(
    text: str | None, problem: str
) -> None:
    webhook, handler, notifier = make_webhook()
    handler.cache.apply(configmap(text))
    assert handler.cache.synced and handler.cache.template is None
    decision = await review(webhook, make_review("CREATE", pod()))
    assert not decision.allowed and decision.code == 503
    assert problem in decision.message
    assert "ConfigMap kubeguard-system/kubeguard-sidecar" in decision.message
    assert "kubeguard.io/inject-sidecar=false" in decision.message
    assert notifier.events() == [events.PLUGIN_DENIAL]


async def test_missing_configmap_and_not_loaded_yet() -> None:
    webhook, handler, _ = make_webhook()
    assert not webhook.is_ready()
    decision = await review(webhook, make_review("CREATE", pod()))
    assert "has not been loaded yet" in decision.message
    handler.cache.apply(None)
    assert webhook.is_ready()
    decision = await review(webhook, make_review("CREATE", pod()))
    assert not decision.allowed and "does not exist" in decision.message


async def test_ignore_policy_admits_with_warning() -> None:
    _, handler, _ = make_webhook()
    handler.failure_policy = "Ignore"
    handler.cache.apply(configmap("containers: ["))

    body = make_review("CREATE", pod())
    response = await handler.handle(Request(decode_review(msgspec.json.encode(body))))
    assert response.allowed and "is not valid YAML" in response.warnings[0]


def test_template_recovers_after_fix() -> None:
    _, handler, _ = make_webhook()
    handler.cache.apply(configmap("containers: [", version="1"))
    assert handler.cache.template is None
    handler.cache.apply(configmap(TEMPLATE, version="2"))
    assert handler.cache.template is not None and handler.cache.problem == ""


def test_parse_template_ok() -> None:
    template = parse_template(TEMPLATE, "ns/cm@1")
    assert [c["name"] for c in template.containers] == ["log-agent"]
    with pytest.raises(TemplateError):
        parse_template("containers: 3")


def test_entries_exclude_own_namespace_and_do_not_overlap() -> None:
    [webhook] = webhooks_for(Runtime(settings()), "SidecarInjection=true")
    ns_entry, pod_entry = webhook.specs[0].entries
    assert ns_entry.namespace_selector is not None and pod_entry.namespace_selector is not None
    assert ns_entry.namespace_selector["matchLabels"] == {"kubeguard.io/inject-sidecar": "true"}
    own = {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kubeguard-system"],
    }
    assert own in ns_entry.namespace_selector["matchExpressions"]
    assert own in pod_entry.namespace_selector["matchExpressions"]
    assert pod_entry.object_selector == {"matchLabels": {"kubeguard.io/inject-sidecar": "true"}}
