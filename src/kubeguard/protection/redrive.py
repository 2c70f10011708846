"""Re-drive: after a release, evict the pods that protection stranded on still-NotReady nodes.

The taint-eviction controller gives up on a pod after 5 denied attempts (its DisruptionTarget
patch or its DELETE) and does not come back until the node's taints or the pod's tolerations
change, so once interception is lifted nothing in the control plane evicts those pods again.
kubeguard does it itself, the way the controller would have:

* only pods on nodes that are still NotReady and carry a NoExecute taint, whose tolerations of
  those taints have expired (`taint.timeAdded + tolerationSeconds`; a pod tolerating them
  forever, a DaemonSet pod or a mirror pod is left alone, and a pod whose toleration has not
  expired yet is left to the controller's own timer);
* through the Eviction API with a uid precondition, so PodDisruptionBudgets and grace periods
  are honoured; a PDB's 429 is retried with backoff and reported, never bypassed unless
  `--redrive-force-delete-after` allows a DELETE after that long;
* at `--redrive-rate` evictions per second overall;
* by one replica at a time: the replica that claims the re-drive in the shared state holds a
  lease there (holder + expiry, renewed with every progress write); another replica takes over
  only after the lease expired, and re-listing makes a takeover idempotent.

Progress (counts and the stranded pods) is written to the shared state, so every replica's
`/callback/status` and `kubeguard status` show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from kubeguard.kube.client import KubeClient
from kubeguard.kube.evict import (
    BlockedByPDB,
    Deleted,
    DeniedByWebhook,
    Evicted,
    NotFound,
    delete_pod,
    evict,
)
from kubeguard.kube.objects import NodeView, ObjectList, PodView, Taint, Toleration
from kubeguard.kube.rest import call
from kubeguard.kube.state import StateStore
from kubeguard.protection import state as sm
from kubeguard.protection.metrics import ProtectionMetrics
from kubeguard.protection.state import ProtectionState, Redrive, StrandedPod, now_iso

log = logging.getLogger("kubeguard.protection.redrive")

NOEXECUTE = "NoExecute"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
FINAL = ("evicted", "deleted", "gone", "failed", "skipped")
MAX_FAILURES = 5  # non-PDB errors before a pod is reported failed

_pods_decoder = msgspec.json.Decoder(ObjectList[PodView])


@dataclass(frozen=True)
class RedriveConfig:
    rate: float = 10.0  # evictions per second, overall
    force_delete_after: float | None = None
    lease_duration: float = 15.0
    retry_initial: float = 1.0
    retry_max: float = 30.0
    progress_interval: float = 1.0
    enabled: bool = True


def tolerates(tol: Toleration, taint: Taint) -> bool:
    """corev1 Toleration.ToleratesTaint."""
    if tol.effect and tol.effect != taint.effect:
        return False
    if tol.key and tol.key != taint.key:
        return False
    if tol.operator == "Exists":
        return True
    if tol.operator in ("", "Equal"):
        return bool(tol.key) and tol.value == taint.value
    return False


def eviction_due(pod: PodView, taints: list[Taint], now: float) -> float | None:
    """When the taint-eviction controller would evict `pod` from a node with `taints`
    (epoch seconds), or None when it never would (no NoExecute taint, or tolerated forever)."""
    due: float | None = None
    noexec = [t for t in taints if t.effect == NOEXECUTE]
    if not noexec:
        return None
    for taint in noexec:
        matching = [t for t in pod.spec.tolerations if tolerates(t, taint)]
        if not matching:
            return now  # an untolerated NoExecute taint: immediate eviction
        seconds = [t.toleration_seconds for t in matching]
        if any(s is None for s in seconds):
            continue  # tolerated forever
        added = taint.time_added.timestamp() if taint.time_added else now
        when = added + max(0, min(s for s in seconds if s is not None))
        due = when if due is None else min(due, when)
    return due


def _skip_reason(pod: PodView) -> str:
    if pod.metadata.deletion_timestamp is not None:
        return "already terminating"
    if any(o.kind == "DaemonSet" and o.controller for o in pod.metadata.owner_references):
        return "DaemonSet pod"
    if MIRROR_ANNOTATION in pod.metadata.annotations:
        return "mirror (static) pod"
    if pod.status.phase in ("Succeeded", "Failed"):
        return f"pod already {pod.status.phase}"
    return ""


@dataclass
class _Work:
    pod: StrandedPod
    next_try: float = 0.0
    delay: float = 0.0
    blocked_since: float | None = None
    failures: int = 0


@dataclass
class Redriver:
    """The re-drive loop of one replica (see the module docstring)."""

    kube: KubeClient
    store: StateStore[ProtectionState]
    identity: str
    config: RedriveConfig
    protected_nodes: Callable[[], frozenset[str]]
    node_view: Callable[[str], NodeView | None]
    metrics: ProtectionMetrics | None = None
    on_done: Callable[[Redrive], None] | None = None
    clock: Callable[[], float] = time.time
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    running_generation: int = 0

    async def run(self) -> None:
        """Background task: wait for a pending re-drive, claim it, drive it."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.config.lease_duration / 3)
            self.wake.clear()
            doc = self.store.current
            r = doc.redrive
            if r is None or not r.active or doc.intercepting or not self.store.ready:
                continue
            now = self.clock()
            if r.holder and r.holder != self.identity and r.lease_until > now:
                continue
            claimed = await self._claim(r.generation)
            if claimed:
                await self._drive(r.generation)

    async def _update(self, fn: Callable[[ProtectionState], ProtectionState]) -> ProtectionState:
        try:
            return await self.store.update(fn)
        except Exception:
            if self.metrics is not None:
                self.metrics.state_errors.labels("redrive-write").inc()
            raise

    async def _claim(self, generation: int) -> bool:
        now = self.clock()
        me = self.identity

        def claim(doc: ProtectionState) -> ProtectionState:
            r = doc.redrive
            if r is None or r.generation != generation or not r.active or doc.intercepting:
                return doc
            if r.holder and r.holder != me and r.lease_until > now:
                return doc
            return sm.set_redrive(
                doc,
                msgspec.structs.replace(
                    r,
                    holder=me,
                    lease_until=now + self.config.lease_duration,
                    phase="running",
                    started_at=r.started_at or now_iso(now),
                ),
            )

        try:
            doc = await self._update(claim)
        except Exception as exc:
            log.warning("could not claim the re-drive: %s", exc)
            return False
        r = doc.redrive
        return r is not None and r.generation == generation and r.holder == me and r.active

    def _still_mine(self, generation: int) -> bool:
        doc = self.store.current
        r = doc.redrive
        return (
            not doc.intercepting
            and r is not None
            and r.generation == generation
            and r.active
            and r.holder == self.identity
        )

    async def _list_stranded(self) -> tuple[list[_Work], list[StrandedPod]]:
        now = self.clock()
        work: list[_Work] = []
        skipped: list[StrandedPod] = []
        for node in sorted(self.protected_nodes()):
            view = self.node_view(node)
            taints = list(view.spec.taints) if view is not None else []
            body = await call(
                self.kube.http,
                "GET",
                "/api/v1/pods",
                params={"fieldSelector": f"spec.nodeName={node}"},
            )
            for pod in _pods_decoder.decode(body).items:
                meta = pod.metadata
                entry = StrandedPod(meta.namespace, meta.name, node, uid=meta.uid)
                reason = _skip_reason(pod)
                due = eviction_due(pod, taints, now)
                if not reason and due is None:
                    reason = "tolerates the node's taints (or the node has no NoExecute taint)"
                elif not reason and due is not None and due > now:
                    reason = "toleration not expired yet: left to the taint-eviction controller"
                if reason:
                    entry.state, entry.detail = "skipped", reason
                    skipped.append(entry)
                else:
                    work.append(_Work(entry))
        return work, skipped

    async def _drive(self, generation: int) -> None:
        self.running_generation = generation
        if self.metrics is not None:
            self.metrics.redrive_active.set(1)
        try:
            await self._drive_inner(generation)
        finally:
            self.running_generation = 0
            if self.metrics is not None:
                self.metrics.redrive_active.set(0)
                self.metrics.redrive_pending.set(0)

    async def _drive_inner(self, generation: int) -> None:
        try:
            work, skipped = await self._list_stranded()
        except Exception as exc:
            log.warning("re-drive: listing the stranded pods failed (%s); will retry", exc)
            await asyncio.sleep(self.config.retry_initial)
            self.wake.set()
            return
        log.info(
            "re-drive started",
            extra={"generation": generation, "pods": len(work), "skipped": len(skipped)},
        )
        interval = 1.0 / self.config.rate
        last_write = 0.0
        while True:
            if not self._still_mine(generation):
                log.info(
                    "re-drive %d stopped: released by another holder or re-engaged", generation
                )
                return
            now = self.clock()
            pending = [w for w in work if w.pod.state not in FINAL]
            if self.metrics is not None:
                self.metrics.redrive_pending.set(len(pending))
            finished = not pending
            if finished or now - last_write >= self.config.progress_interval:
                await self._write_progress(generation, work, skipped, finished)
                last_write = now
            if finished:
                return
            ready = [w for w in pending if w.next_try <= now]
            if not ready:
                soonest = min(w.next_try for w in pending)
                await asyncio.sleep(min(max(0.0, soonest - now), self.config.progress_interval))
                continue
            for w in ready:
                if not self._still_mine(generation):
                    break
                if w.pod.node not in self.protected_nodes():
                    self._finish(w, "skipped", "node is Ready again")
                    continue
                await self._attempt(w)
                await asyncio.sleep(interval)

    def _finish(self, w: _Work, state: str, detail: str) -> None:
        w.pod.state, w.pod.detail = state, detail
        if self.metrics is not None:
            self.metrics.redrive_pods.labels(state).inc()
        log.info(
            "re-drive: pod %s/%s %s",
            w.pod.namespace,
            w.pod.name,
            state,
            extra={
                "pod": f"{w.pod.namespace}/{w.pod.name}",
                "node": w.pod.node,
                "result": state,
                "detail": detail,
            },
        )

    def _retry(self, w: _Work, state: str, detail: str) -> None:
        now = self.clock()
        w.pod.state, w.pod.detail = state, detail
        w.delay = min(self.config.retry_max, (w.delay * 2) or self.config.retry_initial)
        w.next_try = now + w.delay

    def _failed_attempt(self, w: _Work, message: str, state: str = "pending") -> None:
        w.failures += 1
        if w.failures >= MAX_FAILURES:
            self._finish(w, "failed", message)
        else:
            self._retry(w, state, f"retrying: {message}")

    async def _attempt(self, w: _Work) -> None:
        p = w.pod
        p.attempts += 1
        now = self.clock()
        after = self.config.force_delete_after
        if w.blocked_since is not None and after is not None and now - w.blocked_since >= after:
            await self._force_delete(w)
            return
        outcome = await evict(self.kube, p.namespace, p.name, uid=p.uid or None)
        if isinstance(outcome, Evicted):
            self._finish(w, "evicted", "evicted through the Eviction API")
        elif isinstance(outcome, NotFound):
            self._finish(w, "gone", "pod no longer exists (or was replaced)")
        elif isinstance(outcome, BlockedByPDB):
            if w.blocked_since is None:
                w.blocked_since = now
                if self.metrics is not None:
                    self.metrics.redrive_pods.labels("blocked").inc()
            self._retry(w, "blocked", f"PodDisruptionBudget: {outcome.message}")
        elif isinstance(outcome, DeniedByWebhook):
            # Another admission webhook (kubeguard's own requests are always allowed by it).
            self._failed_attempt(w, outcome.message)
        else:
            self._failed_attempt(w, outcome.message)

    async def _force_delete(self, w: _Work) -> None:
        p = w.pod
        outcome = await delete_pod(self.kube, p.namespace, p.name, p.uid or None, None)
        if isinstance(outcome, Deleted):
            self._finish(
                w,
                "deleted",
                "deleted after a PodDisruptionBudget blocked its eviction for "
                f"{self.config.force_delete_after:g}s (--redrive-force-delete-after)",
            )
        elif isinstance(outcome, NotFound):
            self._finish(w, "gone", "pod no longer exists (or was replaced)")
        else:
            self._failed_attempt(w, f"force delete failed: {outcome.message}", "blocked")

    async def _write_progress(
        self, generation: int, work: list[_Work], skipped: list[StrandedPod], finished: bool
    ) -> None:
        now = self.clock()
        pods = [w.pod for w in work]
        counts = {
            s: sum(1 for p in pods if p.state == s)
            for s in ("evicted", "deleted", "blocked", "failed", "gone")
        }
        listed = sorted(pods, key=lambda p: (p.state in FINAL, p.namespace, p.name))
        listed = (listed + skipped)[: sm.POD_LIST_LIMIT]
        me = self.identity
        lease = self.config.lease_duration

        def progress(doc: ProtectionState) -> ProtectionState:
            r = doc.redrive
            if r is None or r.generation != generation or r.holder != me or not r.active:
                return doc
            new = msgspec.structs.replace(
                r,
                phase="done" if finished else "running",
                lease_until=now + lease,
                finished_at=now_iso(now) if finished else "",
                total=len(pods),
                pending=sum(1 for p in pods if p.state not in FINAL),
                pods=[msgspec.structs.replace(p) for p in listed],
                **counts,
            )
            return sm.set_redrive(doc, new)

        try:
            doc = await self._update(progress)
        except Exception as exc:
            log.warning("re-drive: writing progress failed: %s", exc)
            return
        if finished and doc.redrive is not None and doc.redrive.phase == "done":
            log.info("re-drive done", extra={"generation": generation, **counts})
            if self.on_done is not None:
                self.on_done(doc.redrive)
