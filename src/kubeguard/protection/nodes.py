"""Worker-node health as protection sees it, and the node monitor fed by the node reflector.

`classify` turns one Node into a `NodeState`: is it a worker (`--worker-selector`), is it
NotReady (`Ready` is `False` or `Unknown`) and since when (the condition's
`lastTransitionTime`, so every replica and every restart reaches the same answer), and does it
count toward engagement (cordoned and `node.kubernetes.io/exclude-disruption` nodes do not, by
default: they are planned maintenance). A node that has never been Ready (just registered,
e.g. an autoscaler scale-up) is not a failure.

`NodeMonitor` keeps the current `NodeState` of every node from the reflector's events and
tells its listeners (the pod index, the detector loop) when the set of NotReady nodes changes.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kubeguard.kube.objects import LabelSelector, NodeView, node_ready_condition

log = logging.getLogger("kubeguard.protection.nodes")

EXCLUDE_DISRUPTION_LABEL = "node.kubernetes.io/exclude-disruption"
# Set by an operator on a node that is known to be shut down (non-graceful node shutdown,
# KEP-2268): its pods are meant to go, so kubeguard does not protect them.
OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"
# Reason the node-lifecycle controller gives a node whose kubelet never posted a status.
NEVER_UPDATED_REASON = "NodeStatusNeverUpdated"
# A kubelet registers its node before the runtime is up and may report Ready=False at once;
# a NotReady transition this close to creation is part of registration, not a failure.
REGISTRATION_GRACE = 5.0


def epoch(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass(frozen=True, slots=True)
class NodeState:
    """What protection needs to know about one node."""

    name: str
    ready: str  # "True", "False", "Unknown", or "" when the node has no Ready condition
    since: float | None  # Ready lastTransitionTime (epoch seconds)
    reason: str = ""
    worker: bool = True
    cordoned: bool = False
    excluded: bool = False
    never_ready: bool = False
    out_of_service: bool = False

    @property
    def not_ready(self) -> bool:
        """A failure: Ready is False or Unknown on a node that has been Ready before."""
        return self.ready in ("False", "Unknown") and not self.never_ready

    def counted(self, *, count_cordoned: bool = False, count_excluded: bool = False) -> bool:
        """Does this node take part in detection (numerator and denominator)?"""
        return (
            self.worker
            and not self.never_ready
            and (count_cordoned or not self.cordoned)
            and (count_excluded or not self.excluded)
        )

    @property
    def protected(self) -> bool:
        """Are disruptions of pods bound to this node intercepted while engaged?"""
        return self.worker and self.not_ready and not self.out_of_service


def classify(node: NodeView, workers: LabelSelector) -> NodeState:
    """The `NodeState` of one Node object."""
    meta = node.metadata
    cond = node_ready_condition(node)
    ready = cond.status if cond is not None else ""
    since = epoch(cond.last_transition_time) if cond is not None else None
    reason = cond.reason if cond is not None else ""
    never_ready = cond is None or (ready != "True" and reason == NEVER_UPDATED_REASON)
    created = epoch(meta.creation_timestamp)
    if (
        not never_ready
        and ready == "False"
        and since is not None
        and created is not None
        and since - created <= REGISTRATION_GRACE
    ):
        never_ready = True
    return NodeState(
        name=meta.name,
        ready=ready,
        since=since,
        reason=reason,
        worker=workers.matches(meta.labels),
        cordoned=node.spec.unschedulable,
        excluded=EXCLUDE_DISRUPTION_LABEL in meta.labels,
        never_ready=never_ready,
        out_of_service=any(t.key == OUT_OF_SERVICE_TAINT for t in node.spec.taints),
    )


Listener = Callable[[], None]


class NodeMonitor:
    """The current `NodeState` of every node, fed by the node reflector's events.

    Listeners are plain callables run synchronously after every change (they must be cheap,
    e.g. set an asyncio.Event); `protected_nodes` is what the admission path reads.
    """

    def __init__(self, workers: LabelSelector) -> None:
        self.workers = workers
        self._nodes: dict[str, NodeState] = {}
        self._protected: frozenset[str] = frozenset()
        self._listeners: list[Listener] = []
        self.synced = False

    # --- feeding ---------------------------------------------------------------------------

    def on_upsert(self, node: NodeView) -> None:
        state = classify(node, self.workers)
        old = self._nodes.get(state.name)
        self._nodes[state.name] = state
        if old is None or old.not_ready != state.not_ready:
            if state.not_ready:
                log.info(
                    "node is NotReady",
                    extra={
                        "node": state.name,
                        "ready": state.ready,
                        "reason": state.reason,
                        "worker": state.worker,
                    },
                )
            elif old is not None:
                log.info("node is Ready again", extra={"node": state.name})
        self._changed()

    def on_delete(self, name: str) -> None:
        if self._nodes.pop(name, None) is not None:
            self._changed()

    def replace(self, nodes: Iterable[NodeView]) -> None:
        """A full (re-)list: the given nodes are all that exist."""
        self._nodes = {s.name: s for s in (classify(n, self.workers) for n in nodes)}
        self.synced = True
        self._changed()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        self._protected = frozenset(s.name for s in self._nodes.values() if s.protected)
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener bug must not stop the node view
                log.exception("node monitor listener failed")

    # --- reading -----------------------------------------------------------------------------

    @property
    def nodes(self) -> Mapping[str, NodeState]:
        return self._nodes

    def states(self) -> list[NodeState]:
        return list(self._nodes.values())

    @property
    def protected_nodes(self) -> frozenset[str]:
        """NotReady worker nodes whose pods are protected while engaged."""
        return self._protected

    def not_ready_workers(self) -> list[str]:
        return sorted(s.name for s in self._nodes.values() if s.worker and s.not_ready)
