"""`Protector`: the running pod eviction protection of one replica, wiring the pieces together.

    node reflector ──> NodeMonitor ──> pod index (watches pods of NotReady nodes)
                          │
                          └──> detector loop ──proposes──> shared state (ConfigMap) <── callbacks
                                                               │ watched by every replica
    admission handler <── Snapshot (switch, engagement, protected nodes)
                                                               │
                                                 re-drive (one replica, after a release)

The admission path reads one immutable `Snapshot`, rebuilt whenever the nodes or the shared
state change, so a decision costs a few attribute loads.

Build with `Protector.build(settings, kube, registry, notifier)` (no I/O), register its tasks
with `register(runtime)`, or for a demo/test call `await protector.start()` /
`await protector.stop()`. Operators act through `status()`, `disable(user)`, `enable(user)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from kubeguard.config import Settings
from kubeguard.kube.client import KubeClient
from kubeguard.kube.events import NORMAL, WARNING, EventRecorder, ObjectReference
from kubeguard.kube.objects import NodeView, parse_label_selector
from kubeguard.kube.reflector import PodIndex, Reflector
from kubeguard.kube.state import StateStore
from kubeguard.notify import Notification, Notifier
from kubeguard.protection import policy
from kubeguard.protection import state as sm
from kubeguard.protection.detector import Detection, DetectorConfig, all_ready_since, detect
from kubeguard.protection.handler import ProtectionHandler
from kubeguard.protection.metrics import ProtectionMetrics
from kubeguard.protection.nodes import NodeMonitor
from kubeguard.protection.policy import Disruption, PolicyConfig, Snapshot
from kubeguard.protection.redrive import RedriveConfig, Redriver
from kubeguard.protection.state import ProtectionState, Redrive

log = logging.getLogger("kubeguard.protection")

DISABLED_UNREADABLE = Snapshot(enabled=False, engaged=False, protected_nodes=frozenset())


def replica_identity() -> str:
    base = os.environ.get("POD_NAME") or socket.gethostname() or "kubeguard"
    return f"{base}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Timing:
    """Loop periods; tests shrink them."""

    detector_tick: float = 1.0
    redrive_lease: float = 15.0
    redrive_retry_initial: float = 1.0
    redrive_retry_max: float = 30.0
    redrive_progress: float = 1.0


class _Locator:
    """`PodLocator` over the kube engineer's `PodIndex`."""

    def __init__(self, index: PodIndex | None) -> None:
        self.index = index

    def lookup(self, namespace: str, name: str) -> str | None:
        if self.index is None:
            return None
        node = self.index.pod_node(namespace, name)
        if node is not None:
            return node
        return "" if self.index.all_synced else None

    async def fetch(self, namespace: str, name: str) -> str | None:
        if self.index is None:
            raise RuntimeError("pod eviction protection has no Kubernetes API access")
        pod = await self.index.get_pod(namespace, name)
        return None if pod is None else pod.spec.node_name


class Protector:
    def __init__(
        self,
        settings: Settings,
        kube: KubeClient | None,
        registry: CollectorRegistry,
        notifier: Notifier | None = None,
        *,
        identity: str | None = None,
        timing: Timing | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.notifier = notifier
        self.identity = identity or replica_identity()
        self.timing = timing or Timing(detector_tick=min(1.0, settings.notready_window / 10))
        self.clock = clock
        self.metrics = ProtectionMetrics(registry)
        self.detector_config = DetectorConfig(
            settings.notready_threshold,
            settings.notready_window,
            settings.count_cordoned,
            settings.count_excluded,
        )
        self.monitor = NodeMonitor(parse_label_selector(settings.worker_selector))
        self.policy_config = PolicyConfig(
            warn_only=settings.mode == "warn",
            eviction_code=settings.eviction_deny_code,
            deny_code=settings.delete_deny_code,
            protect_ready=settings.protect_ready_condition,
            self_username=f"system:serviceaccount:{settings.namespace}:{settings.service_account}",
            break_glass_users=frozenset(settings.break_glass_users),
            break_glass_groups=frozenset(settings.break_glass_groups),
        )
        self._snapshot = DISABLED_UNREADABLE
        self._good_state_seen = False
        self._denied_pods: set[str] = set()
        self._protected_pods = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.nodes: Reflector[NodeView] | None = None
        self.pod_index: PodIndex | None = None
        self.store: StateStore[ProtectionState] | None = None
        self.events: EventRecorder | None = None
        self.redriver: Redriver | None = None
        if kube is not None:
            self.nodes = Reflector(
                kube, "/api/v1/nodes", NodeView, resource="nodes", registry=registry
            )
            self.nodes.add_handler(
                on_add=self.monitor.on_upsert,
                on_update=lambda _old, new: self.monitor.on_upsert(new),
                on_delete=lambda node: self.monitor.on_delete(node.metadata.name),
            )
            self.pod_index = PodIndex(kube, registry=registry)
            self.store = StateStore(
                kube,
                settings.namespace,
                settings.state_name,
                ProtectionState,
                key=sm.STATE_KEY,
                labels={"app.kubernetes.io/name": "kubeguard"},
                registry=registry,
            )
            self.store.on_change(lambda _doc: self._refresh())
            try:
                self.events = EventRecorder(kube, registry=registry)
            except ValueError:  # another component registered the event metrics already
                self.events = EventRecorder(kube)
            self.redriver = Redriver(
                kube=kube,
                store=self.store,
                identity=self.identity,
                config=RedriveConfig(
                    rate=settings.redrive_rate,
                    force_delete_after=settings.redrive_force_delete_after,
                    lease_duration=self.timing.redrive_lease,
                    retry_initial=self.timing.redrive_retry_initial,
                    retry_max=self.timing.redrive_retry_max,
                    progress_interval=self.timing.redrive_progress,
                    enabled=settings.redrive,
                ),
                protected_nodes=lambda: self.monitor.protected_nodes,
                node_view=self._node_view,
                metrics=self.metrics,
                on_done=self._redrive_done,
                clock=clock,
            )
        self.monitor.add_listener(self._on_nodes_changed)
        self.handler = ProtectionHandler(
            self,
            _Locator(self.pod_index),
            self.policy_config,
            self.metrics,
            on_denied=self._on_denied,
        )

    # ------------------------------------------------------------------ hot path

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # ------------------------------------------------------------------ readiness

    @property
    def ready(self) -> bool:
        """Protecting: the node view and the shared state are loaded."""
        if self.nodes is None or self.store is None:
            return False
        if self.nodes.has_synced and self.store.has_synced and not self._good_state_seen:
            self._refresh(wake=False)
        return self.nodes.has_synced and self.store.has_synced and self._good_state_seen

    def readiness_checks(self) -> list[tuple[str, Callable[[], bool]]]:
        return [
            ("protection-nodes", lambda: self.nodes is not None and self.nodes.has_synced),
            ("protection-state", lambda: self.ready),
        ]

    # ------------------------------------------------------------------ state -> snapshot

    @property
    def state(self) -> ProtectionState:
        return self.store.current if self.store is not None else ProtectionState()

    def _refresh(self, *, wake: bool = True) -> None:
        store = self.store
        if store is None or not store.has_synced:
            return
        if store.error is None:
            self._good_state_seen = True
        doc = store.current
        if not self._good_state_seen:
            # The stored document never decoded on this replica: never assume that an
            # operator's disable was lifted.
            self._snapshot = DISABLED_UNREADABLE
        else:
            self._snapshot = Snapshot(
                enabled=doc.enabled,
                engaged=doc.engaged,
                protected_nodes=self.monitor.protected_nodes,
                cause=doc.cause,
            )
        snap = self._snapshot
        if not snap.intercepting:
            self._denied_pods.clear()
        self.metrics.engaged.set(1 if snap.intercepting else 0)
        self.metrics.enabled.set(1 if snap.enabled else 0)
        self._update_protected_pods()
        if not wake:
            return
        self._wake.set()
        if self.redriver is not None:
            self.redriver.wake.set()

    def _refresh_if_stale(self) -> None:
        if not self._good_state_seen:
            self._refresh(wake=False)
        else:
            self._update_protected_pods()

    def _on_nodes_changed(self) -> None:
        self.metrics.node_notready.set(len(self.monitor.not_ready_workers()))
        if self.pod_index is not None:
            self.pod_index.set_tracked(self.monitor.protected_nodes)
        self._refresh()

    def _update_protected_pods(self) -> None:
        count = 0
        if self._snapshot.intercepting and self.pod_index is not None:
            count = sum(len(self.pod_index.pods_on(n)) for n in self._snapshot.protected_nodes)
        self._protected_pods = count
        self.metrics.protected_pods.set(count)

    def _node_view(self, name: str) -> NodeView | None:
        return self.nodes.get(name) if self.nodes is not None else None

    # ------------------------------------------------------------------ lifecycle

    def tasks(self) -> list[tuple[str, Callable[[], Any]]]:
        if self.nodes is None or self.store is None or self.events is None or self.redriver is None:
            return []
        return [
            ("protection-node-reflector", self.nodes.run),
            ("protection-state-watch", self.store.run),
            ("protection-detector", self.run_detector),
            ("protection-events", self.events.run),
            ("protection-redrive", self.redriver.run),
        ]

    async def start(self) -> None:
        """Run the background loops in tasks of the current event loop (demo, tests); the
        server runs them through `Runtime.add_task` instead."""
        for name, fn in self.tasks():
            self._tasks.append(asyncio.create_task(fn(), name=name))

    async def wait_ready(self, within: float = 10.0) -> bool:
        deadline = time.monotonic() + within
        while not self.ready:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.aclose()

    async def aclose(self) -> None:
        if self.pod_index is not None:
            await self.pod_index.aclose()
        if self.events is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.events.flush(), 2.0)

    # ------------------------------------------------------------------ detector loop

    def detection(self) -> Detection:
        return detect(self.monitor.states(), self.detector_config, self.clock())

    async def run_detector(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.timing.detector_tick)
            self._wake.clear()
            self._refresh_if_stale()
            if self.store is None or not self.ready or self.store.error is not None:
                continue
            doc = self.store.current
            if not doc.enabled:
                continue
            try:
                if not doc.engaged:
                    detection = self.detection()
                    if detection.engage:
                        await self._propose(detection)
                elif self.settings.auto_release_after is not None:
                    await self._maybe_auto_release(self.settings.auto_release_after)
            except Exception as exc:
                self.metrics.state_errors.labels("detector-write").inc()
                log.warning("detector could not write the shared state: %s", exc)
                await asyncio.sleep(self.timing.detector_tick)

    async def _propose(self, detection: Detection) -> None:
        assert self.store is not None
        at = self.clock()
        before, new = await self._transition(
            self.store,
            lambda doc: sm.engage(doc, at=at, cause=detection.cause, nodes=list(detection.recent)),
        )
        if before is not None and not before.engaged and new.engaged:
            self._announce_engaged(new, detection)

    async def _maybe_auto_release(self, after: float) -> None:
        assert self.store is not None
        since = all_ready_since(self.monitor.states())
        now = self.clock()
        if since is None or now - since < after:
            return
        detail = f"every worker node has been Ready for {after:g}s"
        before, new = await self._transition(
            self.store,
            lambda doc: sm.auto_release(doc, at=now, detail=detail, redrive=self.settings.redrive),
        )
        if before is not None and before.intercepting and not new.intercepting:
            self._announce_released(new, "auto-release")

    @staticmethod
    async def _transition(
        store: StateStore[ProtectionState], fn: Callable[[ProtectionState], ProtectionState]
    ) -> tuple[ProtectionState | None, ProtectionState]:
        """`store.update(fn)`, plus the document the final (stored) attempt started from, so
        the caller announces only transitions it made itself (None when nothing was read)."""
        seen: list[ProtectionState] = []

        def tracked(doc: ProtectionState) -> ProtectionState:
            seen.append(doc)
            return fn(doc)

        new = await store.update(tracked)
        return (seen[-1] if seen else None), new

    # ------------------------------------------------------------------ operator actions

    def _require_store(self) -> StateStore[ProtectionState]:
        if self.store is None:
            raise RuntimeError("pod eviction protection needs Kubernetes API access")
        return self.store

    async def disable(self, user: str) -> ProtectionState:
        """Turn interception off (release); logged with the user."""
        store = self._require_store()
        at = self.clock()
        before, new = await self._transition(
            store, lambda doc: sm.disable(doc, at=at, by=user, redrive=self.settings.redrive)
        )
        log.warning(
            "interception disabled",
            extra={"user": user, "was_engaged": bool(before is not None and before.engaged)},
        )
        if before is not None and before.intercepting:
            self._announce_released(new, f"disabled by {user}")
        self._refresh()
        return new

    async def enable(self, user: str) -> ProtectionState:
        """Turn interception on with the latch cleared, and re-evaluate the detector at once."""
        store = self._require_store()
        at = self.clock()
        detection = self.detection()

        def fn(doc: ProtectionState) -> ProtectionState:
            new = sm.enable(doc, at=at, by=user)
            if detection.engage:
                new = sm.engage(new, at=at, cause=detection.cause, nodes=list(detection.recent))
            return new

        before, new = await self._transition(store, fn)
        log.warning("interception enabled", extra={"user": user, "engaged": new.engaged})
        if before is not None and not before.engaged and new.engaged:
            self._announce_engaged(new, detection)
        self._refresh()
        return new

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """`data` of GET /callback/status: the seed's fields first, then the details."""
        doc = self.state
        snap = self._snapshot
        detection = self.detection()
        redrive = doc.redrive
        data: dict[str, Any] = {
            "intercepting": snap.intercepting,
            "notReadyNodes": list(detection.not_ready),
            "enabled": snap.enabled,
            "engaged": snap.engaged,
            "state": "disabled"
            if not snap.enabled
            else ("engaged" if snap.engaged else "monitoring"),
            "mode": self.settings.mode,
            "engagedAt": doc.engaged_at or None,
            "cause": doc.cause or None,
            "engagedNodes": list(doc.engaged_nodes),
            "releasedAt": doc.released_at or None,
            "releaseReason": doc.release_reason or None,
            "toggledBy": doc.toggled_by or None,
            "toggledAt": doc.toggled_at or None,
            "threshold": str(self.settings.notready_threshold),
            "requiredNodes": detection.required,
            "window": self.settings.notready_window,
            "workerNodes": detection.counted,
            "recentNotReadyNodes": list(detection.recent),
            "protectedNodes": sorted(snap.protected_nodes) if snap.intercepting else [],
            "protectedPods": self._protected_pods,
            "strandedPods": [
                msgspec.to_builtins(p)
                for p in (redrive.pods if redrive is not None else [])
                if p.state != "skipped"
            ],
            "redrive": _redrive_status(redrive),
            "history": [msgspec.to_builtins(h) for h in doc.history[-10:]],
            "replica": self.identity,
            "ready": self.ready,
        }
        if self.store is not None and self.store.error:
            data["stateError"] = self.store.error
        return data

    # ------------------------------------------------------------------ announcements

    def _state_ref(self) -> ObjectReference:
        return ObjectReference("ConfigMap", self.settings.state_name, self.settings.namespace)

    def _notify(self, event: str, title: str, text: str, fields: dict[str, str]) -> None:
        if self.notifier is not None:
            self.notifier.notify(Notification(event, title, text, fields))

    def _announce_engaged(self, doc: ProtectionState, detection: Detection) -> None:
        log.warning(
            "pod eviction protection engaged",
            extra={"cause": doc.cause, "nodes": doc.engaged_nodes, "engaged_at": doc.engaged_at},
        )
        text = (
            f"{doc.cause}. Disruptions of pods on NotReady nodes are "
            f"{'reported (warn mode)' if self.policy_config.warn_only else 'denied'} until an "
            f"operator runs `kubeguard disable` (POST /callback/disable-interception)."
        )
        if self.events is not None:
            self.events.record(self._state_ref(), WARNING, "ProtectionEngaged", text)
        self._notify(
            "protection-engaged",
            "kubeguard: pod eviction protection engaged",
            text,
            {
                "nodes": ", ".join(doc.engaged_nodes),
                "engagedAt": doc.engaged_at,
                "notReady": ", ".join(detection.not_ready),
            },
        )

    def _announce_released(self, doc: ProtectionState, why: str) -> None:
        log.warning("pod eviction protection released", extra={"reason": why})
        stranded = ", ".join(self.monitor.not_ready_workers())
        text = f"Protection released ({why}). Nodes still NotReady: {stranded or 'none'}."
        if doc.redrive is not None and doc.redrive.phase == "pending":
            text += " kubeguard re-drives the evictions of the pods stranded on them."
        if self.events is not None:
            self.events.record(self._state_ref(), NORMAL, "ProtectionReleased", text)
        self._notify(
            "protection-released",
            "kubeguard: pod eviction protection released",
            text,
            {"reason": why, "releasedAt": doc.released_at},
        )

    def _redrive_done(self, r: Redrive) -> None:
        text = (
            f"Re-drive {r.generation} done: {r.evicted} evicted, {r.deleted} deleted, "
            f"{r.blocked} blocked, {r.failed} failed, {r.gone} already gone, of {r.total}."
        )
        if self.events is not None:
            self.events.record(self._state_ref(), NORMAL, "RedriveDone", text)
        self._notify(
            "redrive-done",
            "kubeguard: re-drive done",
            text,
            {"evicted": str(r.evicted), "failed": str(r.failed)},
        )

    def _on_denied(
        self, namespace: str, name: str, node: str, d: Disruption, response: Any
    ) -> None:
        key = f"{namespace}/{name}"
        if key in self._denied_pods or self.events is None:
            return
        self._denied_pods.add(key)
        verb = "would deny" if response.allowed else "denied"
        self.events.record(
            ObjectReference("Pod", name, namespace),
            WARNING,
            "EvictionDenied" if not response.allowed else "EvictionWouldBeDenied",
            f"kubeguard {verb} {d.what} of this pod: node {node} is NotReady and pod eviction "
            f"protection is engaged; {policy.RELEASE_HINT}",
        )


def _redrive_status(r: Redrive | None) -> dict[str, Any] | None:
    if r is None:
        return None
    out = msgspec.to_builtins(r)
    assert isinstance(out, dict)
    out.pop("pods", None)
    out.pop("leaseUntil", None)
    return out
