"""Narrow views of a Pod for the pod-mutating plugins, StatefulSet identity and label syntax.

The views declare only what the plugins read: msgspec skips every other field of the pod, so
the hot path never builds a full pod model (`req.object_as(PodView)` is decoded once per
request and shared by every handler on the path that uses the same view).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubeguard.admission.review import Request
from kubeguard.kube.objects import View

# The StatefulSet controller sets this label on every pod since Kubernetes 1.28 (PodIndexLabel,
# GA in 1.32); it is the ordinal the controller assigned, independent of the pod's name.
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


class OwnerRef(View, frozen=True):
    api_version: str = ""
    kind: str = ""
    name: str = ""
    controller: bool = False


class PodMeta(View, frozen=True):
    name: str = ""
    generate_name: str = ""
    namespace: str = ""
    # `| None`: kubectl and client libraries may send an explicit null for an empty map.
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    owner_references: list[OwnerRef] | None = None


class EnvVar(View, frozen=True):
    name: str = ""
    value: str | None = None  # None also when the variable uses valueFrom


class ContainerView(View, frozen=True):
    name: str = ""
    env: list[EnvVar] | None = None


class VolumeView(View, frozen=True):
    name: str = ""


class PodSpecView(View, frozen=True):
    node_selector: dict[str, str] | None = None
    containers: list[ContainerView] | None = None
    init_containers: list[ContainerView] | None = None
    volumes: list[VolumeView] | None = None


class PodView(View, frozen=True):
    metadata: PodMeta = PodMeta()
    spec: PodSpecView = PodSpecView()

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels or {}

    @property
    def annotations(self) -> dict[str, str]:
        return self.metadata.annotations or {}


def pod_of(request: Request) -> PodView:
    """The request's pod; raises ValueError when the object is missing (CREATE always has it)."""
    pod = request.object_as(PodView)
    if pod is None:
        raise ValueError(f"{request.describe()}: the request carries no pod object")
    return pod


def pod_display_name(request: Request, pod: PodView) -> str:
    """`namespace/name` for messages; falls back to generateName on CREATE without a name."""
    name = pod.metadata.name or request.name
    if not name and pod.metadata.generate_name:
        name = pod.metadata.generate_name + "<generated>"
    namespace = pod.metadata.namespace or request.namespace
    return f"{namespace}/{name}" if namespace else name


# ---------------------------------------------------------------------------- StatefulSet


@dataclass(frozen=True)
class StatefulSetIdentity:
    """The owning StatefulSet and the pod's ordinal, and where the ordinal came from."""

    statefulset: str
    ordinal: int
    source: str  # "label" (apps.kubernetes.io/pod-index) or "name"


class IdentityError(ValueError):
    """The pod is not a StatefulSet pod, or its ordinal cannot be determined. The message
    says which and why."""


def statefulset_owner(pod: PodView) -> str | None:
    """Name of the apps/v1 StatefulSet that owns the pod (the controller reference first)."""
    refs = [
        r
        for r in pod.metadata.owner_references or []
        if r.kind == "StatefulSet" and r.api_version == "apps/v1" and r.name
    ]
    if not refs:
        return None
    for ref in refs:
        if ref.controller:
            return ref.name
    return refs[0].name


def _parse_ordinal(text: str) -> int | None:
    # Decimal digits only: int() would also accept "+1", " 1", "1_0" and non-ASCII digits.
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text) > 1 and text[0] == "0":
        return None  # the controller never writes leading zeros
    return int(text)


def statefulset_identity(request: Request, pod: PodView) -> StatefulSetIdentity:
    """The StatefulSet and ordinal of a pod, or IdentityError.

    The `apps.kubernetes.io/pod-index` label is authoritative when present (it also covers
    `spec.ordinals.start`); otherwise the ordinal is the suffix of `<statefulset>-<ordinal>`.
    The StatefulSet controller always sets the pod's name on CREATE (and `generateName`, see
    the fixture `pod-create-by-statefulset-controller-web-2.json`), so the name is available.
    """
    owner = statefulset_owner(pod)
    if owner is None:
        kinds = ", ".join(
            f"{r.api_version} {r.kind} {r.name}" for r in pod.metadata.owner_references or []
        )
        raise IdentityError(
            "it is not owned by a StatefulSet (ownerReferences: "
            + (kinds or "none")
            + "); only pods created by an apps/v1 StatefulSet have an ordinal"
        )
    label = pod.labels.get(POD_INDEX_LABEL)
    if label is not None:
        ordinal = _parse_ordinal(label)
        if ordinal is None:
            raise IdentityError(
                f"its label {POD_INDEX_LABEL}={label!r} is not a non-negative integer"
            )
        return StatefulSetIdentity(owner, ordinal, "label")
    name = pod.metadata.name or request.name
    if not name:
        raise IdentityError(
            f"it has no name and no {POD_INDEX_LABEL} label, so its ordinal is unknown"
        )
    prefix = owner + "-"
    ordinal = _parse_ordinal(name[len(prefix) :]) if name.startswith(prefix) else None
    if ordinal is None:
        raise IdentityError(
            f"its name {name!r} is not <statefulset>-<ordinal> for StatefulSet {owner!r} "
            f"and it has no {POD_INDEX_LABEL} label"
        )
    return StatefulSetIdentity(owner, ordinal, "name")


# ---------------------------------------------------------------------------- label syntax

_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS1123_SUBDOMAIN_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def label_key_error(key: str) -> str | None:
    """Why `key` is not a valid label key (Kubernetes qualified name), or None."""
    if not key:
        return "must not be empty"
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return "has an empty prefix before '/'"
        if len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix):
            return (
                f"prefix {prefix!r} must be a DNS subdomain (lower-case alphanumerics, '-', '.', "
                "at most 253 characters)"
            )
    if not name:
        return "has an empty name part"
    if len(name) > 63:
        return f"name part {name!r} is longer than 63 characters"
    if not _NAME_RE.match(name):
        return (
            f"name part {name!r} must consist of alphanumerics, '-', '_' or '.', and start "
            "and end with an alphanumeric"
        )
    return None


def label_value_error(value: str) -> str | None:
    """Why `value` is not a valid label value, or None (the empty value is valid)."""
    if len(value) > 63:
        return "is longer than 63 characters"
    if value and not _NAME_RE.match(value):
        return (
            "must consist of alphanumerics, '-', '_' or '.', and start and end with an alphanumeric"
        )
    return None


def dns1123_label_error(name: str) -> str | None:
    """Why `name` is not a valid container/volume name (RFC 1123 label), or None."""
    if not name:
        return "must not be empty"
    if len(name) > 63:
        return "is longer than 63 characters"
    if not _DNS1123_LABEL_RE.match(name):
        return "must consist of lower-case alphanumerics or '-', and start and end with one"
    return None
