"""The `PodEvictionProtection` plugin: the handler on `/validate`, its webhook entries, the
callback API, background tasks and readiness checks.

Webhook entries and their failure policies
------------------------------------------
All entries skip the kubelet (`system:node:*`, always allowed) with a `matchCondition`, so a
node's own status and final deletes never wait on kubeguard, and exclude kubeguard's own
namespace and `kube-system` with a `namespaceSelector`.

* `pods.pod-eviction-protection.kubeguard.io` — pods DELETE. **failurePolicy: Ignore.**
* `pods-status.pod-eviction-protection.kubeguard.io` — pods/status UPDATE, called only when
  the conditions or the phase change. **failurePolicy: Ignore.**
* `pods-update.pod-eviction-protection.kubeguard.io` — pods UPDATE, called only when the update
  sets `deletionTimestamp` / `deletionGracePeriodSeconds`. **failurePolicy: Ignore.**
* `evictions.pod-eviction-protection.kubeguard.io` — pods/eviction CREATE.
  **failurePolicy: Fail.**

Why: the first three carry *involuntary* disruptions by controllers and every workload's
rollouts. With `Fail`, an unreachable kubeguard would block every pod deletion in the cluster,
and worse, deny the taint-eviction controller's DisruptionTarget patch or DELETE, after 5
attempts of which it gives up for good: pods on failed nodes would be stranded with nobody to
re-drive them, because a kubeguard that cannot be reached is not engaged either. A protection
that turns its own outage into a cluster outage does more harm than the failure it guards
against; run two or more replicas spread over zones instead (the chart does). Evictions are
*voluntary* disruptions (`kubectl drain`, cluster-autoscaler scale-down); their callers retry
and can wait, so an unreachable kubeguard fails them closed rather than letting a drain evict
pods off a partitioned node unchecked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kubeguard.admission.handler import Handler
from kubeguard.admission.registry import Plugin
from kubeguard.admission.webhook import (
    HandlerSpec,
    Rule,
    WebhookEntry,
    configuration,
    entry_to_wire,
    url_client_config,
)
from kubeguard.config import Settings
from kubeguard.kube.auth import DelegatingAuth
from kubeguard.protection.callback import CallbackAPI
from kubeguard.protection.policy import PodFacts
from kubeguard.protection.protector import Protector, Timing
from kubeguard.runtime import Runtime

log = logging.getLogger("kubeguard.protection")

GATE = "PodEvictionProtection"
PATH = "/validate"
HANDLER_NAME = "pod-eviction-protection"
DOMAIN = "pod-eviction-protection.kubeguard.io"

NOT_KUBELET = ("not-kubelet", "!request.userInfo.username.startsWith('system:node:')")
STATUS_CHANGED = (
    "conditions-or-phase-changed",
    "!has(object.status) || !has(oldObject.status) || "
    "(has(object.status.conditions) ? object.status.conditions : []) != "
    "(has(oldObject.status.conditions) ? oldObject.status.conditions : []) || "
    "(has(object.status.phase) ? object.status.phase : '') != "
    "(has(oldObject.status.phase) ? oldObject.status.phase : '')",
)
MARKS_DELETION = (
    "marks-pod-for-deletion",
    "(has(object.metadata.deletionTimestamp) && !has(oldObject.metadata.deletionTimestamp)) || "
    "(has(object.metadata.deletionGracePeriodSeconds) && "
    "!has(oldObject.metadata.deletionGracePeriodSeconds))",
)


def namespace_selector(settings: Settings) -> dict[str, object]:
    return {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": sorted({settings.namespace, "kube-system"}),
            }
        ]
    }


def webhook_entries(settings: Settings) -> tuple[WebhookEntry, ...]:
    """The ValidatingWebhookConfiguration entries of pod eviction protection."""
    ns = namespace_selector(settings)
    return (
        WebhookEntry(
            name=f"pods.{DOMAIN}",
            rules=(Rule(("DELETE",), ("pods",)),),
            failure_policy="Ignore",
            match_conditions=(NOT_KUBELET,),
            namespace_selector=ns,
        ),
        WebhookEntry(
            name=f"pods-status.{DOMAIN}",
            rules=(Rule(("UPDATE",), ("pods/status",)),),
            failure_policy="Ignore",
            match_conditions=(NOT_KUBELET, STATUS_CHANGED),
            namespace_selector=ns,
        ),
        WebhookEntry(
            name=f"pods-update.{DOMAIN}",
            rules=(Rule(("UPDATE",), ("pods",)),),
            failure_policy="Ignore",
            match_conditions=(NOT_KUBELET, MARKS_DELETION),
            namespace_selector=ns,
        ),
        WebhookEntry(
            name=f"evictions.{DOMAIN}",
            rules=(Rule(("CREATE",), ("pods/eviction",)),),
            failure_policy="Fail",
            match_conditions=(NOT_KUBELET,),
            namespace_selector=ns,
        ),
    )


def webhook_configuration(settings: Settings, url: str, ca_pem: bytes) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration for a kubeguard reached at `url` (running outside
    the cluster): `clientConfig.url` is `url` + `/validate`."""
    client = url_client_config(url, PATH, ca_pem)
    hooks = [entry_to_wire(e, "validating", client) for e in webhook_entries(settings)]
    return configuration("validating", settings.webhook_config_name, hooks)


def build_protection(
    runtime: Runtime, *, timing: Timing | None = None, identity: str | None = None
) -> tuple[Protector, list[HandlerSpec]]:
    """Build the protection of one server (no I/O): the `Protector`, registered on the
    runtime (tasks, callback routes, readiness), and its handler spec."""
    settings = runtime.settings
    protector = Protector(
        settings,
        runtime.kube,
        runtime.registry,
        runtime.notifier,
        timing=timing,
        identity=identity,
    )
    for name, run in protector.tasks():
        runtime.add_task(name, run)
    for name, check in protector.readiness_checks():
        runtime.add_readiness(name, check)
    runtime.on_shutdown(protector.aclose)
    auth = (
        DelegatingAuth(runtime.kube)
        if runtime.kube is not None and settings.callback_auth == "kubernetes"
        else None
    )
    CallbackAPI(protector, settings, auth).register(runtime)
    if runtime.kube is None:
        log.warning(
            "pod eviction protection has no Kubernetes API access: it cannot see nodes, so it "
            "never engages and allows every request"
        )
    spec = handler_spec(
        protector.handler, settings, ready=lambda: runtime.kube is None or protector.ready
    )
    return protector, [spec]


def handler_spec(
    handler: Handler, settings: Settings, *, ready: Callable[[], bool] | None = None
) -> HandlerSpec:
    """How the protection handler is served: path, failure policy, webhook entries, view."""
    return HandlerSpec(
        name=HANDLER_NAME,
        path=PATH,
        kind="validating",
        handler=handler,
        failure_policy="Ignore",
        entries=webhook_entries(settings),
        ready=ready,
        object_view=PodFacts,
    )


def _build(runtime: Runtime) -> list[HandlerSpec]:
    return build_protection(runtime)[1]


PLUGIN: Plugin[Runtime] = Plugin(
    gate=GATE,
    description="Seed 000: deny pod evictions on NotReady nodes during correlated node failures.",
    build=_build,
    default_enabled=True,
)
