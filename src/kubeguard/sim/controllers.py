"""Simulated kubelets and kube-controller-manager loops.

* Kubelets (`system:node:<n>`): register nodes, renew Leases in `kube-node-lease`, set new pods
  Running/Ready through `pods/status`, finalize Terminating pods with a grace-0 DELETE carrying
  a uid precondition, and report Ready again when their heartbeat resumes.
* Node lifecycle controller (`system:serviceaccount:kube-system:node-controller`): a node whose
  Lease is not renewed for the grace period gets all conditions Unknown (NodeStatusUnknown),
  its pods are marked not ready (Ready=False only), it gets the unreachable NoSchedule taint and,
  rate-limited to one node per `eviction_rate_interval`, the NoExecute taint. Full disruption
  (every node not Ready) stops NoExecute tainting and removes those taints. Ready nodes lose
  the taints again; cordoned nodes get the unschedulable taint.
* Taint eviction controller (same identity): when a pod's toleration of a NoExecute taint
  expires it patches `DisruptionTarget` (DeletionByTaintManager) into `pods/status` and DELETEs
  the pod, 5 attempts ~60 ms apart, then gives up until the node's NoExecute taints (or the
  pod's tolerations) change.
* Pod GC (`pod-garbage-collector`): pods bound to a deleted node get phase Failed plus
  DisruptionTarget (DeletionByPodGC) and a grace-0 DELETE after the quarantine.
* Disruption controller: resets a stale DisruptionTarget condition to False after a delay.

All writes go through `ApiCore`, hence through the admission webhooks, with the identities the
real components use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from . import timeline as tl
from .api import PODS, ApiCore, disruption_target, pod_condition, with_condition
from .auth import DISRUPTION_CONTROLLER, NODE_CONTROLLER, POD_GC, UserInfo, kubelet
from .config import Timings
from .resources import (
    NOT_READY_TAINT,
    RESOURCES,
    UNREACHABLE_TAINT,
    UNSCHEDULABLE_TAINT,
    core,
    to_wire,
    tolerates,
)
from .store import Key, Store, StoreEvent
from .util import JSON, ApiError, deepcopy, micro_time, rfc3339

log = logging.getLogger(__name__)

NODES = core("nodes")
LEASES = RESOURCES[("coordination.k8s.io", "v1", "leases")]
EVENTS = core("events")
LEASE_NS = "kube-node-lease"
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"

_NODE_CONDITIONS = (
    (
        "MemoryPressure",
        "False",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)


def node_condition(node: JSON, ctype: str = "Ready") -> str:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("status", "Unknown"))
    return "Unknown"


def no_execute_taints(node: JSON | None) -> list[JSON]:
    if node is None:
        return []
    return [
        t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") == "NoExecute"
    ]


def _taint_set(node: JSON | None) -> frozenset[tuple[str, str, str]]:
    return frozenset(
        (str(t.get("key")), str(t.get("value", "")), str(t.get("effect")))
        for t in no_execute_taints(node)
    )


def node_object(
    name: str, labels: dict[str, str] | None = None, *, control_plane: bool = False
) -> JSON:
    """A Node as a kubelet registers it, already reporting Ready (see `api/nodes-list.json`)."""
    ts = rfc3339()
    all_labels = {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
    }
    if control_plane:
        all_labels["node-role.kubernetes.io/control-plane"] = ""
    all_labels.update(labels or {})
    spec: JSON = {}
    if control_plane:
        spec["taints"] = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    return {
        "metadata": {
            "name": name,
            "labels": all_labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": spec,
        "status": {
            "capacity": {
                "cpu": "4",
                "ephemeral-storage": "61202244Ki",
                "memory": "8148012Ki",
                "pods": "110",
            },
            "allocatable": {
                "cpu": "4",
                "ephemeral-storage": "56403987978",
                "memory": "8045612Ki",
                "pods": "110",
            },
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "lastHeartbeatTime": ts,
                    "lastTransitionTime": ts,
                    "reason": r,
                    "message": m,
                }
                for t, s, r, m in _NODE_CONDITIONS
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "6.1.0",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.36.2",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


class Controllers:
    def __init__(self, core_api: ApiCore, timings: Timings, timeline: tl.Timeline) -> None:
        self.api = core_api
        self.store: Store = core_api.store
        self.t = timings
        self.timeline = timeline
        self.alive: dict[str, bool] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._running = False
        # node lifecycle
        self._lease_seen: dict[str, float] = {}
        self._mark_pending: set[str] = set()
        self._noexecute_queue: list[str] = []
        self._last_noexecute = float("-inf")
        self.full_disruption = False
        # taint eviction
        self._taints_seen: dict[str, tuple[frozenset[tuple[str, str, str]], float]] = {}
        self._scheduled: dict[Key, tuple[asyncio.Task[None], float]] = {}
        # podgc, disruption controller, kubelet
        self._orphans: dict[Key, float] = {}
        self._dt_seen: dict[Key, float] = {}
        self._finalizing: set[Key] = set()
        self._ip_counter = 0
        self.node_controller = NODE_CONTROLLER.info()
        self.podgc = POD_GC.info()
        self.disruption = DISRUPTION_CONTROLLER.info()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._running = True
        self.store.add_listener(self._on_event)
        for node in self.store.iter("nodes"):
            name = node["metadata"]["name"]
            self.alive.setdefault(name, True)
            self._taints_seen[name] = (_taint_set(node), time.monotonic())
        self._loops = [
            asyncio.create_task(self._loop(self.t.lease_renew_interval, self._renew_leases)),
            asyncio.create_task(self._loop(self.t.node_monitor_period, self._monitor_nodes)),
            asyncio.create_task(self._loop(self.t.podgc_period, self._podgc)),
            asyncio.create_task(
                self._loop(
                    max(min(self.t.disruption_reset_delay / 4, 1.0), 0.05), self._reset_stale
                )
            ),
        ]

    async def stop(self) -> None:
        self._running = False
        self.store.remove_listener(self._on_event)
        tasks = [*self._loops, *self._tasks, *(t for t, _ in self._scheduled.values())]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops.clear()
        self._tasks.clear()
        self._scheduled.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if not self._running:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _loop(self, period: float, fn: Any) -> None:
        period = max(period, 0.01)
        while self._running:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("simulated controller loop %s failed", fn.__name__)
            await asyncio.sleep(period)

    # ----------------------------------------------------------------- store events

    def _on_event(self, ev: StoreEvent) -> None:
        if ev.resource == "leases":
            if ev.obj["metadata"].get("namespace") == LEASE_NS and ev.type != "DELETED":
                self._lease_seen[ev.obj["metadata"]["name"]] = time.monotonic()
        elif ev.resource == "nodes":
            self._on_node(ev)
        elif ev.resource == "pods":
            self._on_pod(ev)

    def _on_node(self, ev: StoreEvent) -> None:
        name = ev.obj["metadata"]["name"]
        if ev.type == "DELETED":
            self.alive.pop(name, None)
            self._taints_seen.pop(name, None)
            for key in list(self.store.pods_by_node.get(name, ())):
                self._cancel(key)
            return
        if ev.type == "ADDED":
            self.alive.setdefault(name, True)
        taints = _taint_set(ev.obj)
        previous = self._taints_seen.get(name)
        if previous is None or previous[0] != taints:
            self._taints_seen[name] = (taints, time.monotonic())
            for pod in self.store.pods_on_node(name):
                self._process_pod(pod, ev.obj)
        old_unsched = bool(((ev.old or {}).get("spec") or {}).get("unschedulable"))
        new_unsched = bool((ev.obj.get("spec") or {}).get("unschedulable"))
        if ev.type == "MODIFIED" and old_unsched != new_unsched:
            self._spawn(self._sync_unschedulable_taint(name))

    def _on_pod(self, ev: StoreEvent) -> None:
        meta = ev.obj["metadata"]
        key = (meta["namespace"], meta["name"])
        node = (ev.obj.get("spec") or {}).get("nodeName", "")
        if ev.type == "DELETED":
            self._cancel(key)
            self._dt_seen.pop(key, None)
            self._orphans.pop(key, None)
            return
        dt_cond = pod_condition(ev.obj, "DisruptionTarget")
        if dt_cond is not None and dt_cond.get("status") == "True":
            self._dt_seen.setdefault(key, time.monotonic())
        else:
            self._dt_seen.pop(key, None)
        if ev.type == "ADDED":
            if (
                node
                and self.alive.get(node)
                and (ev.obj.get("status") or {}).get("phase", "Pending") == "Pending"
            ):
                self._spawn(self._start_pod(key))
            if node:
                self._process_pod(ev.obj, self.store.get("nodes", "", node))
            return
        old_spec = (ev.old or {}).get("spec") or {}
        new_spec = ev.obj.get("spec") or {}
        if (
            old_spec.get("tolerations") != new_spec.get("tolerations")
            or old_spec.get("nodeName") != node
        ):
            self._cancel(key)
            if node:
                self._process_pod(ev.obj, self.store.get("nodes", "", node))
        grace = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp") and grace and node and self.alive.get(node):
            self._spawn(self._finalize_pod(key, node))

    # ----------------------------------------------------------------- kubelet

    async def register_node(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        *,
        control_plane: bool = False,
        heartbeat: bool = True,
    ) -> JSON:
        """Create a Ready node and its Lease as the node's kubelet."""
        user = kubelet(name)
        self.alive[name] = heartbeat
        node = await self.api.create(
            NODES, "", node_object(name, labels, control_plane=control_plane), user
        )
        await self._write_lease(name, node["metadata"]["uid"], user)
        return node

    async def _write_lease(self, name: str, node_uid: str, user: UserInfo) -> None:
        lease = self.store.get("leases", LEASE_NS, name)
        spec = {
            "holderIdentity": name,
            "leaseDurationSeconds": self.t.lease_duration_seconds,
            "renewTime": micro_time(),
        }
        if lease is None:
            await self.api.create(
                LEASES,
                LEASE_NS,
                {
                    "metadata": {
                        "name": name,
                        "namespace": LEASE_NS,
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}
                        ],
                    },
                    "spec": spec,
                },
                user,
            )
        else:
            body = deepcopy(lease)
            body["spec"] = spec
            await self.api.update(LEASES, LEASE_NS, name, body, user)

    async def _renew_leases(self) -> None:
        for i, (name, alive) in enumerate(list(self.alive.items())):
            if i % 200 == 199:
                await asyncio.sleep(0)  # thousands of kubelets must not stall the API server
            if not alive:
                continue
            node = self.store.get("nodes", "", name)
            if node is None:
                continue
            try:
                await self._write_lease(name, node["metadata"]["uid"], kubelet(name))
            except ApiError as err:
                log.debug("lease renewal of %s failed: %s", name, err)

    def stop_heartbeat(self, name: str) -> None:
        self.alive[name] = False
        self.timeline.add(
            tl.NODE,
            f"system:node:{name}",
            f"node {name} stops heartbeating",
            node=name,
            event="heartbeat-stopped",
        )

    def resume_heartbeat(self, name: str) -> None:
        was = self.alive.get(name)
        self.alive[name] = True
        self.timeline.add(
            tl.NODE,
            f"system:node:{name}",
            f"node {name} resumes heartbeating",
            node=name,
            event="heartbeat-resumed",
        )
        if not was:
            self._spawn(self._kubelet_resumed(name))

    async def _kubelet_resumed(self, name: str) -> None:
        user = kubelet(name)
        node = self.store.get("nodes", "", name)
        if node is None:
            return
        with contextlib.suppress(ApiError):
            await self._write_lease(name, node["metadata"]["uid"], user)
        if node_condition(node) != "True":
            ts = rfc3339()
            conditions = []
            for ctype, status, reason, message in _NODE_CONDITIONS:
                conditions.append(
                    {
                        "type": ctype,
                        "status": status,
                        "lastHeartbeatTime": ts,
                        "lastTransitionTime": ts,
                        "reason": reason,
                        "message": message,
                    }
                )
            with contextlib.suppress(ApiError):
                await self.api.patch(
                    NODES,
                    "",
                    name,
                    SMP,
                    {"status": {"conditions": conditions}},
                    user,
                    subresource="status",
                )
        for pod in self.store.pods_on_node(name):
            meta = pod["metadata"]
            key = (meta["namespace"], meta["name"])
            if meta.get("deletionTimestamp"):
                self._spawn(self._finalize_pod(key, name))
            elif (pod_condition(pod, "Ready") or {}).get("status") != "True" and (
                pod.get("status") or {}
            ).get("phase") == "Running":
                cond = {
                    **(pod_condition(pod, "Ready") or {}),
                    "status": "True",
                    "lastTransitionTime": rfc3339(),
                }
                with contextlib.suppress(ApiError):
                    await self.api.patch(
                        PODS,
                        meta["namespace"],
                        meta["name"],
                        SMP,
                        {"status": {"conditions": [cond]}},
                        user,
                        subresource="status",
                    )

    def running_status(self, pod: JSON, node: str) -> JSON:
        """The status a kubelet reports for a started pod (`pod-status-update-by-kubelet`)."""
        ts = rfc3339()
        gen = pod["metadata"].get("generation", 1)
        self._ip_counter += 1
        ip = f"10.244.{(self._ip_counter // 250) % 250}.{self._ip_counter % 250 + 2}"
        conditions = [
            {
                "type": ctype,
                "observedGeneration": gen,
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": ts,
            }
            for ctype in (
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
            )
        ]
        containers = (pod.get("spec") or {}).get("containers") or []
        return {
            "observedGeneration": gen,
            "phase": "Running",
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": ts,
            "containerStatuses": [
                {
                    "name": c.get("name", ""),
                    "state": {"running": {"startedAt": ts}},
                    "lastState": {},
                    "ready": True,
                    "restartCount": 0,
                    "image": c.get("image", ""),
                    "imageID": f"{str(c.get('image', '')).split(':')[0]}@sha256:"
                    "ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a",
                    "containerID": f"containerd://{self._ip_counter:064x}",
                    "started": True,
                }
                for c in containers
            ],
            "qosClass": (pod.get("status") or {}).get("qosClass", "BestEffort"),
        }

    async def _start_pod(self, key: Key) -> None:
        if self.t.pod_start_delay > 0:
            await asyncio.sleep(self.t.pod_start_delay)
        pod = self.store.get("pods", *key)
        if pod is None or (pod.get("status") or {}).get("phase") != "Pending":
            return
        node = pod["spec"].get("nodeName", "")
        if not self.alive.get(node):
            return
        status = self.running_status(pod, node)
        try:
            await self.api.patch(
                PODS, key[0], key[1], SMP, {"status": status}, kubelet(node), subresource="status"
            )
        except ApiError as err:
            log.debug("kubelet could not start %s/%s: %s", key[0], key[1], err)

    async def _finalize_pod(self, key: Key, node: str) -> None:
        """Kubelet: stop the containers of a Terminating pod, then DELETE it (grace 0, uid)."""
        if key in self._finalizing:
            return
        self._finalizing.add(key)
        try:
            attempts = 0
            while self._running and attempts < 100:
                attempts += 1
                pod = self.store.get("pods", *key)
                if pod is None or not pod["metadata"].get("deletionTimestamp"):
                    return
                grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
                delay = (
                    min(grace, self.t.pod_termination_delay)
                    if attempts == 1
                    else max(self.t.lease_renew_interval * 5, 0.5)
                )
                await asyncio.sleep(delay)
                pod = self.store.get("pods", *key)
                if pod is None or not self.alive.get(node):
                    return
                try:
                    await self.api.delete(
                        PODS,
                        key[0],
                        key[1],
                        {"gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}},
                        kubelet(node),
                    )
                    return
                except ApiError as err:
                    if err.code in (404, 409):
                        return
        finally:
            self._finalizing.discard(key)

    # ----------------------------------------------------------------- node lifecycle

    async def _monitor_nodes(self) -> None:
        now = time.monotonic()
        nodes = list(self.store.iter("nodes"))
        for i, node in enumerate(nodes):
            if i % 500 == 499:
                await asyncio.sleep(0)
            name = node["metadata"]["name"]
            last = self._lease_seen.setdefault(name, now)
            ready = node_condition(node)
            if now - last > self.t.node_monitor_grace_period:
                if ready != "Unknown":
                    await self._mark_unknown(node)
                    continue
            elif ready == "True":
                await self._remove_taints(
                    name, {UNREACHABLE_TAINT, NOT_READY_TAINT}, effects={"NoSchedule", "NoExecute"}
                )
            if name in self._mark_pending and ready != "True":
                await self._mark_pods_not_ready(name)
            if ready == "Unknown" and not any(
                t.get("key") == UNREACHABLE_TAINT and t.get("effect") == "NoSchedule"
                for t in (node.get("spec") or {}).get("taints") or []
            ):
                await self._add_taint(name, UNREACHABLE_TAINT, "NoSchedule")  # retry a lost one
            if (
                ready != "True"
                and not self.full_disruption
                and not no_execute_taints(node)
                and name not in self._noexecute_queue
            ):
                self._noexecute_queue.append(name)
        nodes = list(self.store.iter("nodes"))
        all_down = bool(nodes) and all(node_condition(n) != "True" for n in nodes)
        if all_down and not self.full_disruption:
            self.full_disruption = True
            self._noexecute_queue.clear()
            self.timeline.add(
                tl.NODE,
                self.node_controller.username,
                "all nodes are not Ready: entering full-disruption mode (no NoExecute tainting)",
                event="full-disruption",
            )
            for node in nodes:
                await self._remove_taints(
                    node["metadata"]["name"],
                    {UNREACHABLE_TAINT, NOT_READY_TAINT},
                    effects={"NoExecute"},
                )
        elif not all_down and self.full_disruption:
            self.full_disruption = False
            self.timeline.add(
                tl.NODE,
                self.node_controller.username,
                "a node is Ready again: leaving full-disruption mode",
                event="full-disruption-end",
            )
        if not self.full_disruption:
            await self._taint_next()

    async def _mark_unknown(self, node: JSON) -> None:
        name = node["metadata"]["name"]
        body = to_wire(NODES, deepcopy(node))
        ts = rfc3339()
        for cond in body["status"].get("conditions") or []:
            if cond.get("status") != "Unknown":
                cond["lastTransitionTime"] = ts
            cond["status"] = "Unknown"
            cond["reason"] = "NodeStatusUnknown"
            cond["message"] = "Kubelet stopped posting node status."
        try:
            await self.api.update(NODES, "", name, body, self.node_controller, subresource="status")
        except ApiError as err:
            log.debug("node status update of %s failed: %s", name, err)
            return
        self._node_event(name, f"node {name} Ready=Unknown (NodeStatusUnknown)", "not-ready")
        await self._mark_pods_not_ready(name)
        await self._add_taint(name, UNREACHABLE_TAINT, "NoSchedule")
        if name not in self._noexecute_queue:
            self._noexecute_queue.append(name)

    async def _mark_pods_not_ready(self, name: str) -> None:
        """MarkPodsNotReady: Ready -> False through pods/status (full UpdateStatus)."""
        failed = False
        for pod in self.store.pods_on_node(name):
            ready = pod_condition(pod, "Ready")
            if ready is None or ready.get("status") == "False":
                continue
            meta = pod["metadata"]
            body = to_wire(PODS, deepcopy(pod))
            for cond in body["status"]["conditions"]:
                if cond.get("type") == "Ready":
                    cond["status"] = "False"
                    cond["lastTransitionTime"] = rfc3339()
            try:
                await self.api.update(
                    PODS,
                    meta["namespace"],
                    meta["name"],
                    body,
                    self.node_controller,
                    subresource="status",
                )
            except ApiError as err:
                if err.code != 404:
                    failed = True
                continue
            self.timeline.add(
                tl.POD_STATUS,
                self.node_controller.username,
                f"pod {meta['namespace']}/{meta['name']} Ready=False (MarkPodsNotReady)",
                namespace=meta["namespace"],
                name=meta["name"],
                event="mark-not-ready",
            )
            await self._record_event(
                pod, "Warning", "NodeNotReady", "Node is not ready", "node-controller"
            )
        if failed:
            self._mark_pending.add(name)
        else:
            self._mark_pending.discard(name)

    async def _add_taint(self, name: str, key: str, effect: str) -> bool:
        node = self.store.get("nodes", "", name)
        if node is None:
            return False
        taints = list((node.get("spec") or {}).get("taints") or [])
        if any(t.get("key") == key and t.get("effect") == effect for t in taints):
            return True
        taints.append({"key": key, "effect": effect, "timeAdded": rfc3339()})
        if not await self._patch_taints(node, taints, f"adding taint {key}:{effect} to"):
            return False
        self._node_event(
            name, f"node {name} tainted {key}:{effect}", "taint-added", taint=key, effect=effect
        )
        return True

    async def _remove_taints(self, name: str, keys: set[str], effects: set[str]) -> None:
        node = self.store.get("nodes", "", name)
        if node is None:
            return
        taints = list((node.get("spec") or {}).get("taints") or [])
        keep = [t for t in taints if not (t.get("key") in keys and t.get("effect") in effects)]
        if len(keep) == len(taints):
            return
        if not await self._patch_taints(node, keep or None, "removing taints from"):
            return
        self._node_event(
            name,
            f"node {name} taints {sorted(keys)} ({'/'.join(sorted(effects))}) removed",
            "taint-removed",
        )

    async def _patch_taints(self, node: JSON, taints: list[JSON] | None, doing: str) -> bool:
        """Merge-patch the node's taint list, guarded by its resourceVersion.

        Returns False (logged at debug) when the API server refuses, e.g. on a conflict;
        the node monitor retries on its next pass.
        """
        name = node["metadata"]["name"]
        try:
            await self.api.patch(
                NODES,
                "",
                name,
                MERGE,
                {
                    "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                    "spec": {"taints": taints},
                },
                self.node_controller,
            )
        except ApiError as err:
            log.debug("%s %s failed: %s", doing, name, err)
            return False
        return True

    def _node_event(self, name: str, text: str, event: str, **details: Any) -> None:
        """Timeline entry for a node change made by the node lifecycle controller."""
        self.timeline.add(
            tl.NODE, self.node_controller.username, text, node=name, event=event, **details
        )

    async def _taint_next(self) -> None:
        """Add the NoExecute taint to the next queued node, at most one per interval."""
        while self._noexecute_queue:
            if time.monotonic() - self._last_noexecute < self.t.eviction_rate_interval:
                return
            name = self._noexecute_queue.pop(0)
            node = self.store.get("nodes", "", name)
            if node is None or no_execute_taints(node):
                continue
            ready = node_condition(node)
            if ready == "True":
                continue
            key = UNREACHABLE_TAINT if ready == "Unknown" else NOT_READY_TAINT
            if await self._add_taint(name, key, "NoExecute"):
                self._last_noexecute = time.monotonic()
            else:
                self._noexecute_queue.insert(0, name)
            return

    async def _sync_unschedulable_taint(self, name: str) -> None:
        node = self.store.get("nodes", "", name)
        if node is None:
            return
        if (node.get("spec") or {}).get("unschedulable"):
            await self._add_taint(name, UNSCHEDULABLE_TAINT, "NoSchedule")
        else:
            await self._remove_taints(name, {UNSCHEDULABLE_TAINT}, {"NoSchedule"})

    # ----------------------------------------------------------------- taint eviction

    def _cancel(self, key: Key) -> None:
        entry = self._scheduled.pop(key, None)
        if entry is not None:
            entry[0].cancel()

    def _process_pod(self, pod: JSON, node: JSON | None) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        taints = no_execute_taints(node)
        if not taints or node is None:
            self._cancel(key)
            return
        tolerations = [
            t for t in (pod.get("spec") or {}).get("tolerations") or [] if isinstance(t, dict)
        ]
        min_seconds: float | None = None
        forever = True
        for taint in taints:
            matching = [t for t in tolerations if tolerates(t, taint)]
            if not matching:
                min_seconds, forever = 0.0, False
                break
            for tol in matching:
                seconds = tol.get("tolerationSeconds")
                if seconds is None:
                    continue
                forever = False
                value = max(float(seconds), 0.0)
                min_seconds = value if min_seconds is None else min(min_seconds, value)
        if forever or min_seconds is None:
            self._cancel(key)
            return
        name = node["metadata"]["name"]
        start = self._taints_seen.get(name, (frozenset(), time.monotonic()))[1]
        fire_at = start + min_seconds
        existing = self._scheduled.get(key)
        if existing is not None:
            if existing[1] <= fire_at:
                return
            self._cancel(key)
        if not self._running:
            return
        task = asyncio.create_task(self._evict_at(key, fire_at))
        self._scheduled[key] = (task, fire_at)

    async def _evict_at(self, key: Key, fire_at: float) -> None:
        delay = fire_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        ns, name = key
        user = self.node_controller
        pod = self.store.get("pods", ns, name)
        if pod is not None:
            await self._record_event(
                pod,
                "Normal",
                "TaintManagerEviction",
                f"Marking for deletion Pod {ns}/{name}",
                "taint-eviction-controller",
            )
        last: ApiError | None = None
        for attempt in range(max(self.t.taint_eviction_retries, 1)):
            if attempt:
                await asyncio.sleep(self.t.taint_eviction_retry_interval)
            pod = self.store.get("pods", ns, name)
            if pod is None:
                last = None
                break
            try:
                cond = disruption_target(
                    pod, "DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint"
                )
                if with_condition(pod, cond) is not None:
                    await self.api.patch(
                        PODS,
                        ns,
                        name,
                        SMP,
                        {
                            "metadata": {"uid": pod["metadata"]["uid"]},
                            "status": {"conditions": [cond]},
                        },
                        user,
                        subresource="status",
                    )
                await self.api.delete(PODS, ns, name, {}, user)
                self.timeline.add(
                    tl.EVICTION,
                    user.username,
                    f"taint eviction of {ns}/{name} done",
                    namespace=ns,
                    name=name,
                    allowed=True,
                    source="taint-eviction",
                )
                last = None
                break
            except ApiError as err:
                if err.code == 404:
                    last = None
                    break
                last = err
        if self._scheduled.get(key, (None, 0.0))[0] is asyncio.current_task():
            self._scheduled.pop(key, None)
        if last is not None:
            self.timeline.add(
                tl.EVICTION,
                user.username,
                f"taint eviction of {ns}/{name} gave up after "
                f"{self.t.taint_eviction_retries} attempts: {last.status.get('message')}",
                namespace=ns,
                name=name,
                allowed=False,
                source="taint-eviction",
                gave_up=True,
            )

    # ----------------------------------------------------------------- podgc

    async def _podgc(self) -> None:
        now = time.monotonic()
        for node_name, keys in list(self.store.pods_by_node.items()):
            if not keys or self.store.get("nodes", "", node_name) is not None:
                continue
            for key in sorted(keys):
                first = self._orphans.setdefault(key, now)
                if now - first >= self.t.podgc_quarantine:
                    await self._gc_pod(key)

    async def _gc_pod(self, key: Key) -> None:
        ns, name = key
        pod = self.store.get("pods", ns, name)
        if pod is None:
            return
        try:
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                cond = disruption_target(pod, "DeletionByPodGC", "PodGC: node no longer exists")
                await self.api.patch(
                    PODS,
                    ns,
                    name,
                    SMP,
                    {"status": {"phase": "Failed", "conditions": [cond]}},
                    self.podgc,
                    subresource="status",
                )
            await self.api.delete(PODS, ns, name, {"gracePeriodSeconds": 0}, self.podgc)
        except ApiError as err:
            log.debug("podgc of %s/%s failed: %s", ns, name, err)
            return
        self._orphans.pop(key, None)

    # ----------------------------------------------------------------- disruption controller

    async def _reset_stale(self) -> None:
        now = time.monotonic()
        for key, since in list(self._dt_seen.items()):
            if now - since < self.t.disruption_reset_delay:
                continue
            pod = self.store.get("pods", *key)
            cond = pod_condition(pod, "DisruptionTarget") if pod else None
            if pod is None or cond is None or cond.get("status") != "True":
                self._dt_seen.pop(key, None)
                continue
            if pod["metadata"].get("deletionTimestamp"):
                continue
            body = to_wire(PODS, deepcopy(pod))
            conditions = body["status"]["conditions"]
            for i, c in enumerate(conditions):
                if c.get("type") == "DisruptionTarget":
                    conditions[i] = {
                        "type": "DisruptionTarget",
                        "observedGeneration": c.get("observedGeneration", 1),
                        "status": "False",
                        "lastProbeTime": None,
                        "lastTransitionTime": rfc3339(),
                    }
            try:
                await self.api.update(
                    PODS, key[0], key[1], body, self.disruption, subresource="status"
                )
            except ApiError as err:
                log.debug("stale DisruptionTarget reset of %s failed: %s", key, err)
                continue
            self.timeline.add(
                tl.POD_STATUS,
                self.disruption.username,
                f"pod {key[0]}/{key[1]} DisruptionTarget reset to False (stale)",
                namespace=key[0],
                name=key[1],
                event="disruption-target-reset",
            )

    # ----------------------------------------------------------------- events

    async def _record_event(
        self, pod: JSON, etype: str, reason: str, message: str, component: str
    ) -> None:
        meta = pod["metadata"]
        ts = rfc3339()
        event = {
            "metadata": {
                "name": f"{meta['name']}.{time.time_ns():x}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "kind": "Pod",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta.get("uid", ""),
                "apiVersion": "v1",
            },
            "reason": reason,
            "message": message,
            "source": {"component": component},
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
            "type": etype,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": "",
        }
        with contextlib.suppress(ApiError):
            await self.api.create(
                EVENTS, meta["namespace"], event, self.node_controller, admit=False
            )
