"""The simulated cluster's object store: plain dicts, a global resourceVersion, watch history.

Objects are stored without `kind`/`apiVersion` (the API layer adds them on output) and are never
mutated once committed: every write stores a new dict, so watch history and readers can hold
references safely. Writes are synchronous, which makes every commit atomic on the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .util import JSON, bad_request, expired

Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """One committed change; `old` is the previous state for MODIFIED and DELETED."""

    type: str  # ADDED | MODIFIED | DELETED
    resource: str
    rv: int
    obj: JSON
    old: JSON | None


@dataclass(eq=False)
class Watcher:
    """A subscription to the changes of one resource (filtering is done by the reader)."""

    resource: str
    queue: asyncio.Queue[StoreEvent] = field(default_factory=asyncio.Queue)


class Store:
    def __init__(self, history_size: int = 10_000) -> None:
        self.rv = 1
        self.history_size = history_size
        self._objs: dict[str, dict[Key, JSON]] = {}
        self._sorted: dict[str, list[Key] | None] = {}
        self._history: dict[str, deque[StoreEvent]] = {}
        self._floor: dict[str, int] = {}
        self._watchers: dict[str, set[Watcher]] = {}
        self._listeners: list[Callable[[StoreEvent], None]] = []
        self.pods_by_node: dict[str, set[Key]] = {}

    # ------------------------------------------------------------------ reads

    def get(self, resource: str, namespace: str, name: str) -> JSON | None:
        return self._objs.get(resource, {}).get((namespace, name))

    def count(self, resource: str) -> int:
        return len(self._objs.get(resource, {}))

    def sorted_keys(self, resource: str) -> list[Key]:
        keys = self._sorted.get(resource)
        if keys is None:
            keys = sorted(self._objs.get(resource, {}))
            self._sorted[resource] = keys
        return keys

    def iter(
        self, resource: str, namespace: str | None = None, start: Key | None = None
    ) -> Iterator[JSON]:
        """Objects in key order, optionally only one namespace and only keys after `start`."""
        keys = self.sorted_keys(resource)
        objs = self._objs.get(resource, {})
        lo = 0
        if namespace is not None:
            lo = bisect.bisect_left(keys, (namespace, ""))
        if start is not None:
            lo = max(lo, bisect.bisect_right(keys, start))
        for i in range(lo, len(keys)):
            key = keys[i]
            if namespace is not None and key[0] != namespace:
                break
            obj = objs.get(key)
            if obj is not None:
                yield obj

    def pods_on_node(self, node: str) -> list[JSON]:
        pods = self._objs.get("pods", {})
        return [pods[k] for k in sorted(self.pods_by_node.get(node, ())) if k in pods]

    # ------------------------------------------------------------------ writes

    def _key(self, obj: JSON) -> Key:
        meta = obj["metadata"]
        return (meta.get("namespace", ""), meta["name"])

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def create(self, resource: str, obj: JSON) -> JSON:
        """Store a new object (the caller checked it does not exist); assigns resourceVersion."""
        rv = self._next_rv()
        meta = obj["metadata"]
        if "resourceVersion" in meta:
            meta["resourceVersion"] = str(rv)
        else:  # keep kube-apiserver's key order: resourceVersion right after uid
            obj["metadata"] = {}
            for k, v in meta.items():
                obj["metadata"][k] = v
                if k == "uid":
                    obj["metadata"]["resourceVersion"] = str(rv)
            obj["metadata"].setdefault("resourceVersion", str(rv))
        key = self._key(obj)
        self._objs.setdefault(resource, {})[key] = obj
        self._sorted[resource] = None
        if resource == "pods":
            node = obj.get("spec", {}).get("nodeName")
            if node:
                self.pods_by_node.setdefault(node, set()).add(key)
        self._emit(StoreEvent("ADDED", resource, rv, obj, None))
        return obj

    def replace(self, resource: str, obj: JSON) -> JSON:
        """Replace an existing object with `obj`; assigns a new resourceVersion."""
        key = self._key(obj)
        old = self._objs[resource][key]
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        self._objs[resource][key] = obj
        if resource == "pods":
            old_node = old.get("spec", {}).get("nodeName")
            node = obj.get("spec", {}).get("nodeName")
            if old_node != node:
                if old_node:
                    self.pods_by_node.get(old_node, set()).discard(key)
                if node:
                    self.pods_by_node.setdefault(node, set()).add(key)
        self._emit(StoreEvent("MODIFIED", resource, rv, obj, old))
        return obj

    def remove(self, resource: str, namespace: str, name: str) -> JSON:
        """Delete an object; the DELETED event carries the deletion's resourceVersion."""
        key = (namespace, name)
        old = self._objs[resource].pop(key)
        self._sorted[resource] = None
        if resource == "pods":
            node = old.get("spec", {}).get("nodeName")
            if node:
                self.pods_by_node.get(node, set()).discard(key)
        rv = self._next_rv()
        gone = dict(old)
        gone["metadata"] = {**old["metadata"], "resourceVersion": str(rv)}
        self._emit(StoreEvent("DELETED", resource, rv, gone, old))
        return gone

    # ------------------------------------------------------------------ watch

    def _emit(self, event: StoreEvent) -> None:
        hist = self._history.get(event.resource)
        if hist is None:
            hist = self._history[event.resource] = deque()
            self._floor.setdefault(event.resource, 0)
        hist.append(event)
        while len(hist) > self.history_size:
            dropped = hist.popleft()
            self._floor[event.resource] = dropped.rv
        for watcher in self._watchers.get(event.resource, ()):
            watcher.queue.put_nowait(event)
        for listener in self._listeners:
            listener(event)

    def add_listener(self, listener: Callable[[StoreEvent], None]) -> None:
        """Call `listener` synchronously after every commit (used by the controllers)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[StoreEvent], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def subscribe(self, resource: str) -> Watcher:
        watcher = Watcher(resource)
        self._watchers.setdefault(resource, set()).add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.get(watcher.resource, set()).discard(watcher)

    def oldest_available(self, resource: str) -> int:
        """The oldest resourceVersion a watch may start from for `resource`."""
        return self._floor.get(resource, 0)

    def history_since(self, resource: str, rv: int) -> list[StoreEvent]:
        """Events with resourceVersion > rv, or the real Expired error if rv is too old."""
        floor = self._floor.get(resource, 0)
        if rv < floor:
            hist = self._history.get(resource)
            oldest = hist[0].rv if hist else self.rv
            raise expired(f"too old resource version: {rv} ({oldest})")
        hist = self._history.get(resource)
        if not hist:
            return []
        lo = bisect.bisect_right(hist, rv, key=lambda e: e.rv)
        return [hist[i] for i in range(lo, len(hist))]


# ---------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present


_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_SET_EXPR = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    cur = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse the `labelSelector` query syntax (=, ==, !=, in, notin, key, !key)."""
    reqs: list[Requirement] = []
    for part in _split_top(text or ""):
        m = _SET_EXPR.match(part)
        if m:
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), m.group(2), values))
            key = m.group(1)
        elif "!=" in part:
            key, value = (s.strip() for s in part.split("!=", 1))
            reqs.append(Requirement(key, "!=", (value,)))
        elif "=" in part:
            key, value = (s.strip() for s in part.replace("==", "=").split("=", 1))
            reqs.append(Requirement(key, "=", (value,)))
        elif part.startswith("!"):
            key = part[1:].strip()
            reqs.append(Requirement(key, "!"))
        else:
            key = part
            reqs.append(Requirement(key, "exists"))
        if not _LABEL_KEY.match(key):
            raise bad_request(f"unable to parse requirement: invalid label key {key!r}")
    return reqs


def labels_match(reqs: Iterable[Requirement], labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in reqs)


def selector_matches(selector: JSON | None, labels: dict[str, str] | None) -> bool:
    """Evaluate a `metav1.LabelSelector` (matchLabels + matchExpressions).

    A null selector matches everything here (webhook selectors); callers that need the
    "null selects nothing" semantics check for None themselves.
    """
    if not selector:
        return True
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key = expr.get("key", "")
        op = expr.get("operator", "")
        values = expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


# field selectors: the fields kube-apiserver supports per resource
_FIELDS: dict[str, set[str]] = {
    "pods": {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "nodes": {"spec.unschedulable"},
    "events": {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    "secrets": {"type"},
    "namespaces": {"status.phase"},
}


@dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    op: str
    value: str

    def matches(self, obj: JSON) -> bool:
        cur: Any = obj
        for part in self.path:
            cur = cur.get(part) if isinstance(cur, dict) else None
        if isinstance(cur, bool):
            actual = "true" if cur else "false"
        elif cur is None:
            actual = ""
        else:
            actual = str(cur)
        return (actual == self.value) if self.op == "=" else (actual != self.value)


def parse_field_selector(resource: str, text: str) -> list[FieldRequirement]:
    reqs: list[FieldRequirement] = []
    allowed = {"metadata.name", "metadata.namespace"} | _FIELDS.get(resource, set())
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        if "!=" in part:
            name, value = part.split("!=", 1)
            op = "!="
        elif "=" in part:
            name, value = part.replace("==", "=").split("=", 1)
            op = "="
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        name = name.strip()
        if name not in allowed:
            raise bad_request(
                f'"{name}" is not a known field selector: only "{", ".join(sorted(allowed))}"'
            )
        path = tuple(name.split("."))
        if resource == "events" and name == "source":
            path = ("source", "component")
        reqs.append(FieldRequirement(path, op, value.strip()))
    return reqs


def node_name_of(reqs: list[FieldRequirement]) -> str | None:
    """The node name of a `spec.nodeName=<n>` requirement (used for the per-node index)."""
    for r in reqs:
        if r.path == ("spec", "nodeName") and r.op == "=" and r.value:
            return r.value
    return None
