"""The decision for one admission request: a pure function of the request and the current
protection state. Everything a newcomer needs to know about what is intercepted is here.

While protection is engaged, a request is denied when it would disrupt a pod bound to a
protected (NotReady worker) node:

* `pods` DELETE (taint eviction, PodGC, users), except the API server's follow-up calls of a
  deletion that is already committed with grace 0 (one grace-0 DELETE reaches a webhook twice,
  a kubelet DELETE three times; the later calls' oldObject has deletionGracePeriodSeconds 0);
* `pods/status` UPDATE (PATCH arrives as UPDATE) that adds `DisruptionTarget=True` (the
  taint-eviction controller's pre-delete patch: denying it is what stops a taint eviction, the
  controller retries it 5 times then gives up for good), sets `phase: Failed` (PodGC), or turns
  `Ready` from True to False (MarkPodsNotReady; `--protect-ready-condition`);
* `pods` UPDATE that adds `deletionTimestamp` / `deletionGracePeriodSeconds` (seed 000 item 3;
  real graceful deletion arrives as DELETE, the check is kept anyway);
* `pods/eviction` CREATE (policy/v1 and v1beta1 bodies; dry runs decided like real ones).

Never denied: the kubelet (`system:node:*`), requests that do not newly disrupt (an update whose
oldObject already had DisruptionTarget=True, Ready=False or phase Failed, e.g. the disruption
controller resetting a stale DisruptionTarget to False: kubeguard never fights to restore a
condition that already changed), pods on Ready nodes or unbound pods. kubeguard's own service
account (its re-drive) and break-glass identities are allowed and audit-logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from kubeguard.admission.handler import Response, allowed, denied
from kubeguard.admission.review import UserInfo

KUBELET_PREFIX = "system:node:"
RELEASE_HINT = "to release: `kubeguard disable` or POST /callback/disable-interception on kubeguard"

# Actions (also the `operation` label of the seed's counters).
DELETE = "delete"
EVICTION = "eviction"
STATUS = "status-update"
MARK_DELETION = "mark-deletion"

# Reasons (the `reason` label; `node-not-ready` is the denial).
R_DENIED = "node-not-ready"
R_WARN = "warn-mode"
R_DISABLED = "interception-disabled"
R_IDLE = "not-engaged"
R_KUBELET = "kubelet"
R_SELF = "kubeguard"
R_BREAK_GLASS = "break-glass"
R_NODE_READY = "node-not-protected"
R_UNBOUND = "unbound-pod"
R_NO_DISRUPTION = "no-disruption"
R_COMMITTED = "deletion-committed"
R_UNKNOWN_POD = "pod-not-found"


# --- narrow views of the pod fields read ---------------------------------------------------


class _Condition(msgspec.Struct):
    type: str = ""
    status: str = ""


class _Meta(msgspec.Struct, rename="camel"):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None


class _Spec(msgspec.Struct, rename="camel"):
    node_name: str = ""


class _Status(msgspec.Struct):
    phase: str = ""
    conditions: list[_Condition] = []


class PodFacts(msgspec.Struct):
    """The pod fields protection reads from `object` / `oldObject`."""

    metadata: _Meta = msgspec.field(default_factory=_Meta)
    spec: _Spec = msgspec.field(default_factory=_Spec)
    status: _Status = msgspec.field(default_factory=_Status)

    def condition(self, type_: str) -> str:
        for cond in self.status.conditions:
            if cond.type == type_:
                return cond.status
        return ""


# --- what a request would do --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Disruption:
    action: str  # DELETE | EVICTION | STATUS | MARK_DELETION
    what: str  # human description, e.g. "adding DisruptionTarget"


def status_disruption(old: PodFacts, new: PodFacts, *, protect_ready: bool) -> Disruption | None:
    """A pods/status update that newly marks the pod as disrupted, or None."""
    if new.condition("DisruptionTarget") == "True" and old.condition("DisruptionTarget") != "True":
        return Disruption(STATUS, "adding the DisruptionTarget condition")
    if new.status.phase == "Failed" and old.status.phase != "Failed":
        return Disruption(STATUS, "setting phase Failed")
    if protect_ready and new.condition("Ready") == "False" and old.condition("Ready") == "True":
        return Disruption(STATUS, "turning the Ready condition to False")
    return None


def update_disruption(old: PodFacts, new: PodFacts) -> Disruption | None:
    """A pods UPDATE that would mark the pod for deletion, or None."""
    if new.metadata.deletion_timestamp and not old.metadata.deletion_timestamp:
        return Disruption(MARK_DELETION, "setting deletionTimestamp")
    if (
        new.metadata.deletion_grace_period_seconds is not None
        and old.metadata.deletion_grace_period_seconds is None
    ):
        return Disruption(MARK_DELETION, "setting deletionGracePeriodSeconds")
    return None


def delete_disruption(old: PodFacts) -> Disruption | None:
    """A DELETE, unless the deletion is already committed with grace 0 (the API server's
    second/third admission call of one DELETE request)."""
    if old.metadata.deletion_timestamp and old.metadata.deletion_grace_period_seconds == 0:
        return None
    return Disruption(DELETE, "deletion")


# --- the decision -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    warn_only: bool = False
    eviction_code: int = 429
    deny_code: int = 403
    protect_ready: bool = True
    self_username: str = ""
    break_glass_users: frozenset[str] = frozenset()
    break_glass_groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The protection state the hot path reads: one attribute load per request."""

    enabled: bool
    engaged: bool
    protected_nodes: frozenset[str]
    cause: str = ""

    @property
    def intercepting(self) -> bool:
        return self.enabled and self.engaged


IDLE = Snapshot(enabled=True, engaged=False, protected_nodes=frozenset())


def exemption(user: UserInfo, config: PolicyConfig) -> str:
    """Why this identity is never denied, or "" (the kubelet is handled before this)."""
    if config.self_username and user.username == config.self_username:
        return R_SELF
    if user.username in config.break_glass_users:
        return R_BREAK_GLASS
    if config.break_glass_groups and not config.break_glass_groups.isdisjoint(user.groups):
        return R_BREAK_GLASS
    return ""


def decide(
    disruption: Disruption | None,
    *,
    node: str,
    pod: str,
    user: UserInfo,
    snapshot: Snapshot,
    config: PolicyConfig,
) -> Response:
    """Allow or deny one request. `pod` is `namespace/name`, `node` its spec.nodeName ("" when
    unbound). Called only with the facts already extracted (see `handler`)."""
    if disruption is None:
        return allowed(reason=R_NO_DISRUPTION)
    if not snapshot.enabled:
        return allowed(reason=R_DISABLED)
    if not snapshot.engaged:
        return allowed(reason=R_IDLE)
    if user.username.startswith(KUBELET_PREFIX):
        return allowed(reason=R_KUBELET)
    if not node:
        return allowed(reason=R_UNBOUND)
    if node not in snapshot.protected_nodes:
        return allowed(reason=R_NODE_READY)
    exempt = exemption(user, config)
    if exempt:
        return allowed(reason=exempt).with_audit(
            "pod-eviction-protection", f"{exempt}: allowed {disruption.what} of {pod}"
        )
    message = (
        f"kubeguard: {disruption.what} of pod {pod} denied: its node {node} is NotReady and "
        f"pod eviction protection is engaged ({snapshot.cause or 'correlated node failures'}); "
        f"{RELEASE_HINT}"
    )
    if config.warn_only:
        return allowed(reason=R_WARN).with_warnings("(warn mode, allowed) " + message)
    code = config.eviction_code if disruption.action == EVICTION else config.deny_code
    return denied(message, code=code, reason=R_DENIED)
