"""Shared helpers of the deployment tests: a probe plugin registry, the plugins' registry, and
the rendered RBAC turned into the simulated cluster's permission table."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeguard.admission.handler import Response, allowed
from kubeguard.admission.registry import Plugin, Registry
from kubeguard.admission.review import Request
from kubeguard.admission.webhook import HandlerSpec, Rule, WebhookEntry
from kubeguard.runtime import Runtime
from kubeguard.sim.auth import Rule as SimRule
from kubeguard.sim.auth import SimUser, service_account

REPO = Path(__file__).resolve().parents[2]
NOT_KUBELET = "!request.userInfo.username.startsWith('system:node:')"


@dataclass
class Recorder:
    """A handler that allows everything and remembers what it saw."""

    seen: list[tuple[str, str, str, str]] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        resource = request.resource + (f"/{request.sub_resource}" if request.sub_resource else "")
        self.seen.append((request.operation, resource, request.namespace, request.user.username))
        return allowed()


def probe_registry(recorder: Recorder | None = None) -> Registry[Runtime]:
    """Two plugins shaped like kubeguard's: a validating one with the protection rules (pods
    DELETE, pods/status UPDATE, pods/eviction CREATE; kubelet requests skipped by a match
    condition) under the protection gate, and a mutating one off by default."""
    rec = recorder or Recorder()

    def protection(runtime: Runtime) -> list[HandlerSpec]:
        entries = (
            WebhookEntry(
                name="pods.probe.kubeguard.io",
                rules=(
                    Rule(operations=("DELETE",), resources=("pods",)),
                    Rule(operations=("UPDATE",), resources=("pods/status",)),
                    Rule(operations=("CREATE",), resources=("pods/eviction",)),
                ),
                failure_policy="Fail",
                match_conditions=(("not-kubelet", NOT_KUBELET),),
            ),
        )
        return [HandlerSpec("probe", "/validate", "validating", rec, entries=entries)]

    def mutating(runtime: Runtime) -> list[HandlerSpec]:
        entry = WebhookEntry(
            name="pods.mutating-probe.kubeguard.io",
            rules=(Rule(operations=("CREATE",), resources=("pods",)),),
            failure_policy="Ignore",
            object_selector={"matchLabels": {runtime.settings.sidecar_label: "true"}},
            side_effects="NoneOnDryRun",
        )
        return [HandlerSpec("mutating-probe", "/mutate-probe", "mutating", rec, entries=(entry,))]

    registry: Registry[Runtime] = Registry()
    registry.register(Plugin("PodEvictionProtection", "probe", protection, default_enabled=True))
    registry.register(Plugin("MutatingProbe", "probe", mutating, default_enabled=False))
    return registry


def sim_user_from_rbac(objects: list[dict[str, Any]], namespace: str, name: str) -> SimUser:
    """The service account with exactly the rendered ClusterRole and Role rules (the simulated
    authorizer has no resourceNames; verbs, groups, resources and namespaces are enforced)."""
    rules: list[SimRule] = []
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "Role"):
            continue
        scope = ("*",) if obj["kind"] == "ClusterRole" else (obj["metadata"]["namespace"],)
        for rule in obj["rules"]:
            rules.append(
                SimRule(
                    tuple(rule["verbs"]),
                    tuple(rule["apiGroups"]),
                    tuple(rule["resources"]),
                    scope,
                )
            )
    token = base64.urlsafe_b64encode(f"{namespace}:{name}".encode()).decode().rstrip("=")
    return service_account(namespace, name, token=token + "-tok", rules=tuple(rules))
