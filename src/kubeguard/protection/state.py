"""The protection state machine and its encoding in the shared ConfigMap.

Two independent inputs decide whether kubeguard intercepts:

* the **operator switch** (`enabled`), flipped only by the callback API / `kubeguard
  disable|enable`;
* **engagement** (`engaged`), set when the detector proposes it and the switch is on, and
  latched: it stays set however long the nodes stay down, until the operator disables
  interception (or the optional auto-release fires).

Interception is active when both hold. `disable` releases (clears the latch and starts a
re-drive of the stranded pods); `enable` turns the switch on with the latch cleared, and the
caller re-evaluates the detector at once, so protection re-engages immediately if the window
condition still holds (seed 000: "重新启用拦截后，系统会重新开始监控节点状态").

    enabled+idle --detector proposes--> enabled+engaged  (intercepting)
    enabled+engaged --disable--> disabled (release; re-drive)
    enabled+engaged --auto-release--> enabled+idle (release; re-drive)
    disabled --enable--> enabled+idle --(detector: window still holds)--> enabled+engaged

Every transition is a pure function `ProtectionState -> ProtectionState` so that the store can
re-apply it on a fresh copy after an optimistic-concurrency conflict.

The document lives under key `state.json` of one ConfigMap (`kubeguard.kube.state.StateStore`:
optimistic concurrency, watched by every replica). A stored document that does not decode is
never overwritten; `Protector` keeps using the last good one, and a replica that never saw a
good one reads the switch as *disabled*, so an operator's disable is never lost.
"""

from __future__ import annotations

import datetime as dt
import logging

import msgspec

from kubeguard.kube.objects import parse_time

log = logging.getLogger("kubeguard.protection.state")

STATE_KEY = "state.json"
HISTORY_LIMIT = 50
POD_LIST_LIMIT = 200  # stranded pods listed in the state document (the counts are exact)


def now_iso(t: float) -> str:
    return (
        dt.datetime.fromtimestamp(t, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def iso_epoch(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parse_time(value).timestamp()
    except ValueError:
        return None


class _Doc(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    pass


class HistoryEntry(_Doc):
    at: str
    event: str  # engaged | released | disabled | enabled | auto-released | redrive-done
    by: str = ""
    detail: str = ""


class StrandedPod(_Doc):
    namespace: str
    name: str
    node: str
    uid: str = ""
    state: str = "pending"  # pending | evicted | deleted | blocked | failed | gone | skipped
    detail: str = ""
    attempts: int = 0


class Redrive(_Doc):
    """Progress of the re-drive that follows one release (generation = release number)."""

    generation: int
    phase: str = "pending"  # pending | running | done | aborted | off
    holder: str = ""
    lease_until: float = 0.0
    started_at: str = ""
    finished_at: str = ""
    total: int = 0
    evicted: int = 0
    deleted: int = 0
    blocked: int = 0
    failed: int = 0
    gone: int = 0
    pending: int = 0
    pods: list[StrandedPod] = []

    @property
    def active(self) -> bool:
        return self.phase in ("pending", "running")


class ProtectionState(_Doc):
    enabled: bool = True
    engaged: bool = False
    engaged_at: str = ""
    cause: str = ""
    engaged_nodes: list[str] = []
    released_at: str = ""
    release_reason: str = ""
    toggled_by: str = ""
    toggled_at: str = ""
    releases: int = 0
    history: list[HistoryEntry] = []
    redrive: Redrive | None = None

    @property
    def intercepting(self) -> bool:
        return self.enabled and self.engaged


def _log(state: ProtectionState, at: float, event: str, by: str = "", detail: str = "") -> None:
    state.history = [*state.history, HistoryEntry(now_iso(at), event, by, detail)][-HISTORY_LIMIT:]


def _copy(state: ProtectionState) -> ProtectionState:
    return msgspec.structs.replace(state)


# --- transitions (pure: each returns a new object, the input is never modified) -------------


def engage(state: ProtectionState, *, at: float, cause: str, nodes: list[str]) -> ProtectionState:
    """The detector proposes engagement: accepted only with the switch on and not yet engaged."""
    if not state.enabled or state.engaged:
        return state
    new = _copy(state)
    new.engaged = True
    new.engaged_at = now_iso(at)
    new.cause = cause
    new.engaged_nodes = list(nodes)
    if new.redrive is not None and new.redrive.active:
        redrive = msgspec.structs.replace(new.redrive, phase="aborted", finished_at=now_iso(at))
        new.redrive = redrive
    _log(new, at, "engaged", "detector", cause)
    return new


def _release(new: ProtectionState, at: float, reason: str, redrive: bool) -> None:
    new.engaged = False
    new.released_at = now_iso(at)
    new.release_reason = reason
    new.releases += 1
    new.redrive = Redrive(generation=new.releases, phase="pending" if redrive else "off")


def disable(state: ProtectionState, *, at: float, by: str, redrive: bool) -> ProtectionState:
    """The operator turns interception off: every request is allowed from now on. If
    protection was engaged, this is a release and the stranded pods are re-driven."""
    if not state.enabled:
        return state
    new = _copy(state)
    new.enabled = False
    new.toggled_by = by
    new.toggled_at = now_iso(at)
    was_engaged = new.engaged
    if was_engaged:
        _release(new, at, f"disabled by {by}", redrive)
    _log(new, at, "disabled", by, "released protection" if was_engaged else "")
    return new


def enable(state: ProtectionState, *, at: float, by: str) -> ProtectionState:
    """The operator turns interception on again, with the latch cleared: the caller
    re-evaluates the detector at once (`engage`)."""
    if state.enabled:
        return state
    new = _copy(state)
    new.enabled = True
    new.engaged = False
    new.toggled_by = by
    new.toggled_at = now_iso(at)
    _log(new, at, "enabled", by)
    return new


def auto_release(
    state: ProtectionState, *, at: float, detail: str, redrive: bool
) -> ProtectionState:
    if not state.intercepting:
        return state
    new = _copy(state)
    _release(new, at, "auto-release: " + detail, redrive)
    _log(new, at, "auto-released", "detector", detail)
    return new


def set_redrive(state: ProtectionState, redrive: Redrive) -> ProtectionState:
    new = _copy(state)
    new.redrive = redrive
    if redrive.phase == "done" and (state.redrive is None or state.redrive.phase != "done"):
        at = iso_epoch(redrive.finished_at) or 0.0
        _log(
            new,
            at,
            "redrive-done",
            redrive.holder,
            f"evicted {redrive.evicted}, deleted {redrive.deleted}, blocked {redrive.blocked}, "
            f"failed {redrive.failed}, gone {redrive.gone} of {redrive.total}",
        )
    return new
