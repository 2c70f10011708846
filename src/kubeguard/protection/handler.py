"""The admission handler on `/validate`: extracts the facts of one request, asks `policy`,
and records the decision (metrics, audit line, event on the denied pod).

The hot path does no API call: the pod's node comes from the request's objects, or, for an
eviction (whose review carries only the Eviction), from the index of pods bound to protected
nodes; only while that index is not yet synced does an eviction fall back to one GET.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from kubeguard.admission.handler import Response, allowed, denied
from kubeguard.admission.review import Request
from kubeguard.metrics import LabelledChildren
from kubeguard.protection import policy
from kubeguard.protection.metrics import ProtectionMetrics
from kubeguard.protection.policy import Disruption, PodFacts, PolicyConfig, Snapshot

log = logging.getLogger("kubeguard.protection.audit")

EVICTION_DISRUPTION = Disruption(policy.EVICTION, "eviction")


class SnapshotSource(Protocol):
    @property
    def snapshot(self) -> Snapshot: ...


class PodLocator(Protocol):
    """Where a pod is bound, for evictions."""

    def lookup(self, namespace: str, name: str) -> str | None:
        """The pod's node from memory ("" when it is on no protected node), or None when the
        answer is not known without asking the API server."""
        ...

    async def fetch(self, namespace: str, name: str) -> str | None:
        """The pod's node from the API server; None when the pod does not exist."""
        ...


DeniedHook = Callable[[str, str, str, Disruption, Response], None]


class ProtectionHandler:
    """`Handler` of the pod eviction protection webhook."""

    def __init__(
        self,
        source: SnapshotSource,
        pods: PodLocator,
        config: PolicyConfig,
        metrics: ProtectionMetrics | None = None,
        on_denied: DeniedHook | None = None,
    ) -> None:
        self.source = source
        self.pods = pods
        self.config = config
        self.on_denied = on_denied
        self._allowed = LabelledChildren(metrics.allowed) if metrics is not None else None
        self._intercepted = LabelledChildren(metrics.intercepted) if metrics is not None else None

    async def handle(self, request: Request) -> Response:
        if request.resource != "pods":
            return allowed(reason=policy.R_NO_DISRUPTION)
        snapshot = self.source.snapshot
        op, sub = request.operation, request.sub_resource
        namespace, name = request.namespace, request.name
        node = ""
        disruption: Disruption | None = None
        if op == "CREATE" and sub == "eviction":
            disruption = EVICTION_DISRUPTION
            if snapshot.intercepting and not request.user.username.startswith(
                policy.KUBELET_PREFIX
            ):
                located = self.pods.lookup(namespace, name)
                if located is None:
                    try:
                        located = await self.pods.fetch(namespace, name)
                    except Exception as exc:
                        return self._record(
                            request, disruption, "", self._lookup_failed(request, exc)
                        )
                    if located is None:  # no such pod: the API server answers 404 itself
                        return self._record(
                            request, disruption, "", allowed(reason=policy.R_UNKNOWN_POD)
                        )
                if not located:  # on no protected node (the index tracks only those)
                    return self._record(
                        request, disruption, "", allowed(reason=policy.R_NODE_READY)
                    )
                node = located
        elif op == "DELETE" and not sub:
            old = request.old_object_as(PodFacts)
            if old is not None:
                disruption = policy.delete_disruption(old)
                node = old.spec.node_name
                if disruption is None and snapshot.intercepting:
                    return self._record(
                        request,
                        Disruption(policy.DELETE, "deletion"),
                        node,
                        allowed(reason=policy.R_COMMITTED),
                    )
        elif op == "UPDATE" and sub in ("status", ""):
            old = request.old_object_as(PodFacts)
            new = request.object_as(PodFacts)
            if old is not None and new is not None:
                node = old.spec.node_name or new.spec.node_name
                disruption = (
                    policy.status_disruption(old, new, protect_ready=self.config.protect_ready)
                    if sub == "status"
                    else policy.update_disruption(old, new)
                )
        response = policy.decide(
            disruption,
            node=node,
            pod=f"{namespace}/{name}",
            user=request.user,
            snapshot=snapshot,
            config=self.config,
        )
        if disruption is None:
            return response
        return self._record(request, disruption, node, response)

    def _lookup_failed(self, request: Request, exc: Exception) -> Response:
        message = (
            f"kubeguard: cannot tell whether pod {request.namespace}/{request.name} is on a "
            f"NotReady node while pod eviction protection is engaged ({exc}); retry later or "
            f"{policy.RELEASE_HINT}"
        )
        if self.config.warn_only:
            return allowed(reason=policy.R_WARN).with_warnings("(warn mode, allowed) " + message)
        return denied(message, code=self.config.eviction_code, reason="pod-lookup-failed")

    def _record(
        self, request: Request, disruption: Disruption, node: str, response: Response
    ) -> Response:
        reason = response.reason
        counters = self._allowed if response.allowed else self._intercepted
        if counters is not None:
            counters(disruption.action, reason).inc()
        if reason in (policy.R_SELF, policy.R_BREAK_GLASS, policy.R_WARN):
            user = request.user
            log.info(
                "protection audit: disruption allowed during protection",
                extra={
                    "audit": True,
                    "reason": reason,
                    "user": user.username,
                    "groups": list(user.groups),
                    "action": disruption.action,
                    "what": disruption.what,
                    "pod": f"{request.namespace}/{request.name}",
                    "node": node,
                    "uid": request.uid,
                    "dry_run": request.dry_run,
                },
            )
        if (not response.allowed or reason == policy.R_WARN) and self.on_denied is not None:
            try:
                self.on_denied(request.namespace, request.name, node, disruption, response)
            except Exception:
                logging.getLogger("kubeguard.protection").exception("on_denied hook failed")
        return response
