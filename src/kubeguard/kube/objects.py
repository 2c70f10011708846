"""Narrow msgspec views of the Kubernetes objects kubeguard reads often, plus selector and time
helpers.

A view declares only the fields kubeguard reads; msgspec skips everything else while decoding,
so a 30 KB Node costs a fraction of a full model. Views are frozen: one decoded object is shared
by a reflector's store and every event handler, and nobody may change it under the others.
Field names follow the wire (camelCase) through `rename="camel"`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec


class View(msgspec.Struct, frozen=True, rename="camel", kw_only=True):
    """Base of every view: immutable, camelCase on the wire, unknown fields ignored.

    Subclasses declare only the fields they read; msgspec skips the rest while decoding.
    """


# ---------------------------------------------------------------------------------- metadata


class OwnerReference(View, frozen=True):
    api_version: str = ""
    kind: str = ""
    name: str = ""
    uid: str = ""
    controller: bool = False
    block_owner_deletion: bool = False


class ObjectMeta(View, frozen=True):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resource_version: str = ""
    generation: int = 0
    creation_timestamp: dt.datetime | None = None
    deletion_timestamp: dt.datetime | None = None
    deletion_grace_period_seconds: int | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    owner_references: list[OwnerReference] = []

    @property
    def key(self) -> str:
        """The store key: `namespace/name`, or `name` for cluster-scoped objects."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


class ListMeta(View, frozen=True):
    resource_version: str = ""
    # `continue` is a Python keyword; the wire name is set explicitly.
    continue_: str = msgspec.field(default="", name="continue")
    remaining_item_count: int | None = None


T = TypeVar("T")


class ObjectList(View, Generic[T], frozen=True):
    """Any `<Kind>List`; items carry no kind/apiVersion on the wire."""

    metadata: ListMeta = ListMeta()
    items: list[T] = []


class WatchEvent(View, Generic[T], frozen=True):
    """One line of a watch stream. `type` is ADDED, MODIFIED, DELETED, BOOKMARK or ERROR; an
    ERROR's object is a `Status`, so streams are decoded as `WatchEvent[View]` first and an
    ERROR line falls back to `RawWatchEvent` (see `reflector.WatchDecoder`)."""

    type: str
    object: T


class RawWatchEvent(View, frozen=True):
    type: str
    object: msgspec.Raw


# ---------------------------------------------------------------------------------- Status


class StatusCause(View, frozen=True):
    reason: str = ""
    message: str = ""
    field: str = ""


class StatusDetails(View, frozen=True):
    name: str = ""
    group: str = ""
    kind: str = ""
    uid: str = ""
    causes: list[StatusCause] = []
    retry_after_seconds: int | None = None


class Status(View, frozen=True):
    """metav1.Status, the body of every API error (and of some successes: a 201 eviction)."""

    status: str = ""  # Success | Failure
    message: str = ""
    reason: str = ""  # e.g. Expired, Conflict, AlreadyExists, NotFound, TooManyRequests
    code: int = 0
    details: StatusDetails | None = None

    def has_cause(self, reason: str) -> bool:
        return self.details is not None and any(c.reason == reason for c in self.details.causes)


# ---------------------------------------------------------------------------------- Node


class Taint(View, frozen=True):
    key: str
    value: str = ""
    effect: str = ""
    time_added: dt.datetime | None = None


class NodeCondition(View, frozen=True):
    type: str
    status: str = ""  # True | False | Unknown
    last_transition_time: dt.datetime | None = None
    reason: str = ""
    message: str = ""


class NodeSpec(View, frozen=True):
    unschedulable: bool = False
    taints: list[Taint] = []


class NodeStatus(View, frozen=True):
    conditions: list[NodeCondition] = []


class NodeView(View, frozen=True):
    metadata: ObjectMeta = ObjectMeta()
    spec: NodeSpec = NodeSpec()
    status: NodeStatus = NodeStatus()


def node_ready_condition(node: NodeView) -> NodeCondition | None:
    """The node's `Ready` condition; None for a node that never reported one (just
    registered), which is not a failure."""
    for cond in node.status.conditions:
        if cond.type == "Ready":
            return cond
    return None


def node_is_not_ready(node: NodeView) -> bool:
    """NotReady means `Ready` is `False` or `Unknown` (the node-controller sets Unknown when
    heartbeats stop); a node without a Ready condition is not NotReady."""
    cond = node_ready_condition(node)
    return cond is not None and cond.status in ("False", "Unknown")


# ---------------------------------------------------------------------------------- Pod


class Toleration(View, frozen=True):
    key: str = ""
    operator: str = ""
    value: str = ""
    effect: str = ""
    toleration_seconds: int | None = None


class PodCondition(View, frozen=True):
    type: str
    status: str = ""
    last_transition_time: dt.datetime | None = None
    reason: str = ""
    message: str = ""


class PodSpec(View, frozen=True):
    node_name: str = ""
    termination_grace_period_seconds: int | None = None
    tolerations: list[Toleration] = []


class PodStatus(View, frozen=True):
    phase: str = ""
    conditions: list[PodCondition] = []


class PodView(View, frozen=True):
    metadata: ObjectMeta = ObjectMeta()
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()


def pod_condition(pod: PodView, type_: str) -> PodCondition | None:
    for cond in pod.status.conditions:
        if cond.type == type_:
            return cond
    return None


# ---------------------------------------------------------------------------------- ConfigMap


class ConfigMapView(View, frozen=True):
    metadata: ObjectMeta = ObjectMeta()
    data: dict[str, str] = {}


# ---------------------------------------------------------------------------------- time

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def parse_time(value: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp as Kubernetes writes it (`2026-11-22T02:07:14Z`, or with
    up to nanosecond fractional seconds, or a numeric offset) into an aware datetime.
    Fractions beyond microseconds are truncated. Raises ValueError naming the bad value."""
    m = _RFC3339.match(value)
    if m is None:
        raise ValueError(f"invalid RFC 3339 timestamp {value!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7) or ""
    micro = int((frac + "000000")[:6])
    if m.group(8):
        tz = dt.UTC
    else:
        offset = dt.timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        tz = dt.timezone(offset if m.group(9) == "+" else -offset)
    try:
        return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"invalid RFC 3339 timestamp {value!r}: {exc}") from None


def format_time(value: dt.datetime) -> str:
    """metav1.Time wire form: UTC, second precision, `Z`."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------- selectors


class SelectorError(ValueError):
    """A label selector that does not parse; the message names the offending part."""


_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_KEY_RE = re.compile(rf"^(({_PREFIX})/)?{_NAME}$")
_VALUE_RE = re.compile(rf"^({_NAME})?$")
_OPS = ("in", "notin")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects without the label too (Kubernetes semantics).
        return not present or labels[self.key] not in self.values

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed label selector; an empty selector matches everything. `str()` gives the
    canonical form to send as the `labelSelector` query parameter."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        lbl = labels or {}
        return all(r.matches(lbl) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _check_key(key: str, term: str) -> str:
    if not key:
        raise SelectorError(f"label selector term {term!r}: missing label key")
    if len(key) > 317 or not _KEY_RE.match(key):
        raise SelectorError(
            f"label selector term {term!r}: invalid label key {key!r} (a qualified name: "
            "optional DNS-subdomain prefix and '/', then up to 63 characters of "
            "[A-Za-z0-9-_.] starting and ending with an alphanumeric)"
        )
    return key


def _check_value(value: str, term: str) -> str:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise SelectorError(
            f"label selector term {term!r}: invalid label value {value!r} (up to 63 "
            "characters of [A-Za-z0-9-_.] starting and ending with an alphanumeric)"
        )
    return value


def _split_terms(text: str) -> list[str]:
    terms: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            if depth:
                raise SelectorError(f"label selector {text!r}: nested '(' at position {i}")
            depth = 1
        elif ch == ")":
            if not depth:
                raise SelectorError(f"label selector {text!r}: unmatched ')' at position {i}")
            depth = 0
        elif ch == "," and not depth:
            terms.append(text[start:i])
            start = i + 1
    if depth:
        raise SelectorError(f"label selector {text!r}: missing ')'")
    terms.append(text[start:])
    return terms


_SET_TERM = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def _parse_term(raw: str) -> Requirement:
    term = raw.strip()
    if not term:
        raise SelectorError("label selector: empty term (stray ',')")
    m = _SET_TERM.match(term)
    if m is not None:
        key = _check_key(m.group("key"), term)
        values = tuple(_check_value(v.strip(), term) for v in m.group("values").split(","))
        if m.group("values").strip() == "":
            raise SelectorError(f"label selector term {term!r}: empty value set")
        return Requirement(key, m.group("op"), tuple(sorted(set(values))))
    if term.startswith("!"):
        key = term[1:].strip()
        if any(c in key for c in "=!() "):
            raise SelectorError(f"label selector term {term!r}: '!' takes only a label key")
        return Requirement(_check_key(key, term), "!")
    for op in ("!=", "==", "="):
        if op in term:
            key, _, value = term.partition(op)
            value = value.strip()
            if value.startswith("="):
                raise SelectorError(f"label selector term {term!r}: unexpected '='")
            return Requirement(
                _check_key(key.strip(), term),
                "!=" if op == "!=" else "=",
                (_check_value(value, term),),
            )
    if "(" in term or ")" in term or " " in term:
        raise SelectorError(
            f"label selector term {term!r}: expected 'key', '!key', 'key=value', "
            "'key!=value', 'key in (a,b)' or 'key notin (a,b)'"
        )
    return Requirement(_check_key(term, term), "exists")


def parse_label_selector(text: str) -> LabelSelector:
    """Parse Kubernetes label-selector syntax: `a=b`, `a==b`, `a!=b`, `a`, `!a`,
    `a in (x,y)`, `a notin (x)`, comma-separated (AND). Raises SelectorError."""
    if not text.strip():
        return LabelSelector()
    return LabelSelector(tuple(_parse_term(t) for t in _split_terms(text)))
