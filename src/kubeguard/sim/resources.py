"""The resources the simulated API server serves: names, kinds, scope, defaulting, validation
and the wire conversions (kind/apiVersion, key order, events.k8s.io/v1 <-> core/v1 events)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from .util import JSON, invalid, new_uid, rfc3339


@dataclass(frozen=True)
class ResourceInfo:
    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool
    store_key: str = ""
    subresources: frozenset[str] = frozenset()
    verbs: frozenset[str] = frozenset(
        {"get", "list", "watch", "create", "update", "patch", "delete"}
    )
    has_generation: bool = False
    has_status: bool = False
    delete_returns_object: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return self.store_key or self.resource

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def gvk(self) -> JSON:
        return {"group": self.group, "version": self.version, "kind": self.kind}

    def gvr(self) -> JSON:
        return {"group": self.group, "version": self.version, "resource": self.resource}


_CRUD = frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})
_REVIEW = frozenset({"create"})

RESOURCES: dict[tuple[str, str, str], ResourceInfo] = {
    (r.group, r.version, r.resource): r
    for r in [
        ResourceInfo(
            "", "v1", "nodes", "Node", False, subresources=frozenset({"status"}), has_status=True
        ),
        ResourceInfo(
            "",
            "v1",
            "pods",
            "Pod",
            True,
            subresources=frozenset({"status", "eviction"}),
            has_generation=True,
            has_status=True,
            delete_returns_object=True,
        ),
        ResourceInfo(
            "",
            "v1",
            "namespaces",
            "Namespace",
            False,
            subresources=frozenset({"status"}),
            has_status=True,
            verbs=_CRUD,
            delete_returns_object=True,
        ),
        ResourceInfo("", "v1", "configmaps", "ConfigMap", True),
        ResourceInfo("", "v1", "secrets", "Secret", True),
        ResourceInfo("", "v1", "events", "Event", True),
        ResourceInfo("events.k8s.io", "v1", "events", "Event", True, store_key="events"),
        ResourceInfo("coordination.k8s.io", "v1", "leases", "Lease", True),
        ResourceInfo(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            True,
            subresources=frozenset({"status"}),
            has_generation=True,
            has_status=True,
        ),
        ResourceInfo(
            "admissionregistration.k8s.io",
            "v1",
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            False,
            has_generation=True,
        ),
        ResourceInfo(
            "admissionregistration.k8s.io",
            "v1",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            False,
            has_generation=True,
        ),
        ResourceInfo(
            "authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, verbs=_REVIEW
        ),
        ResourceInfo(
            "authorization.k8s.io",
            "v1",
            "subjectaccessreviews",
            "SubjectAccessReview",
            False,
            verbs=_REVIEW,
        ),
    ]
}


def lookup(group: str, version: str, resource: str) -> ResourceInfo | None:
    return RESOURCES.get((group, version, resource))


def core(resource: str) -> ResourceInfo:
    """The core/v1 (or first matching) ResourceInfo for a plain resource name."""
    for info in RESOURCES.values():
        if info.resource == resource and not info.store_key:
            return info
    raise KeyError(resource)


# -------------------------------------------------------------------- wire conversion

_META_ORDER = (
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)
_META_INDEX = {k: i for i, k in enumerate(_META_ORDER)}


def order_metadata(meta: JSON) -> JSON:
    return dict(sorted(meta.items(), key=lambda kv: _META_INDEX.get(kv[0], 99)))


def to_wire(info: ResourceInfo, obj: JSON) -> JSON:
    """The object as the client receives it from GET/watch (kind and apiVersion first)."""
    if info.group == "events.k8s.io":
        obj = core_event_to_events_v1(obj)
    return {"kind": info.kind, "apiVersion": info.api_version, **obj}


def list_item(info: ResourceInfo, obj: JSON) -> JSON:
    """An item inside a List (no kind/apiVersion, like the real server)."""
    if info.group == "events.k8s.io":
        return core_event_to_events_v1(obj)
    return obj


def from_wire(info: ResourceInfo, body: JSON) -> JSON:
    """The storage form of a client body: kind/apiVersion dropped, events stored as core/v1."""
    out = {k: v for k, v in body.items() if k not in ("kind", "apiVersion")}
    if info.group == "events.k8s.io":
        out = events_v1_to_core_event(out)
    if info.resource == "events":
        out = normalize_core_event(out)
    return out


_CORE_EVENT_ORDER = (
    "metadata",
    "involvedObject",
    "reason",
    "message",
    "source",
    "firstTimestamp",
    "lastTimestamp",
    "count",
    "type",
    "eventTime",
    "series",
    "action",
    "related",
    "reportingComponent",
    "reportingInstance",
)


def normalize_core_event(ev: JSON) -> JSON:
    out: JSON = {}
    defaults: JSON = {
        "involvedObject": {},
        "source": {},
        "firstTimestamp": None,
        "lastTimestamp": None,
        "eventTime": None,
        "reportingComponent": "",
        "reportingInstance": "",
    }
    for key in _CORE_EVENT_ORDER:
        if key in ev:
            out[key] = ev[key]
        elif key in defaults:
            out[key] = defaults[key]
    for key, value in ev.items():
        out.setdefault(key, value)
    return out


_V1_TO_CORE = {
    "regarding": "involvedObject",
    "note": "message",
    "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp",
    "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
    "reportingController": "reportingComponent",
}
_CORE_TO_V1 = {v: k for k, v in _V1_TO_CORE.items()}
_V1_ORDER = (
    "metadata",
    "eventTime",
    "series",
    "reportingController",
    "reportingInstance",
    "action",
    "reason",
    "regarding",
    "related",
    "note",
    "type",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "deprecatedCount",
)


def events_v1_to_core_event(ev: JSON) -> JSON:
    return {_V1_TO_CORE.get(k, k): v for k, v in ev.items()}


def core_event_to_events_v1(ev: JSON) -> JSON:
    renamed = {_CORE_TO_V1.get(k, k): v for k, v in ev.items()}
    defaults: JSON = {
        "eventTime": None,
        "deprecatedSource": {},
        "deprecatedFirstTimestamp": None,
        "deprecatedLastTimestamp": None,
    }
    out: JSON = {}
    for key in _V1_ORDER:
        value = renamed.get(key, defaults.get(key, ...))
        if value is ... or (key in ("reportingController", "reportingInstance") and value == ""):
            continue
        if key == "deprecatedCount" and not value:
            continue
        out[key] = value
    return out


# -------------------------------------------------------------------- bookmarks

_NODE_INFO_ZERO = {
    "machineID": "",
    "systemUUID": "",
    "bootID": "",
    "kernelVersion": "",
    "osImage": "",
    "containerRuntimeVersion": "",
    "kubeletVersion": "",
    "kubeProxyVersion": "",
    "operatingSystem": "",
    "architecture": "",
}


def bookmark_object(info: ResourceInfo, rv: int) -> JSON:
    """A BOOKMARK event object: only metadata.resourceVersion plus the zero-valued fields
    that Go's encoding emits for the kind (`api/watch-nodes.jsonl`)."""
    obj: JSON = {
        "kind": info.kind,
        "apiVersion": info.api_version,
        "metadata": {"resourceVersion": str(rv)},
    }
    if info.resource == "nodes":
        obj["spec"] = {}
        obj["status"] = {
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": dict(_NODE_INFO_ZERO),
        }
    elif info.resource == "pods":
        obj["spec"] = {"containers": None}
        obj["status"] = {}
    elif info.resource in ("leases", "namespaces", "poddisruptionbudgets"):
        obj["spec"] = {}
        if info.resource != "leases":
            obj["status"] = {}
    elif info.resource == "events" and info.group == "":
        obj.update(
            {
                "involvedObject": {},
                "source": {},
                "firstTimestamp": None,
                "lastTimestamp": None,
                "eventTime": None,
                "reportingComponent": "",
                "reportingInstance": "",
            }
        )
    elif info.resource == "events":
        obj.update(
            {
                "eventTime": None,
                "deprecatedSource": {},
                "deprecatedFirstTimestamp": None,
                "deprecatedLastTimestamp": None,
            }
        )
    return obj


# -------------------------------------------------------------------- defaulting

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


def tolerates(toleration: JSON, taint: JSON) -> bool:
    """Whether a pod toleration tolerates a node taint (v1 `Toleration.ToleratesTaint`)."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    if not key:
        return operator == "Exists"
    if key != taint.get("key"):
        return False
    if operator == "Exists":
        return True
    return (toleration.get("value") or "") == (taint.get("value") or "")


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def init_metadata(info: ResourceInfo, obj: JSON, namespace: str) -> None:
    """Server-set metadata of a new object (resourceVersion is set by the store)."""
    meta = obj.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + random_suffix()
    if info.namespaced:
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    meta["uid"] = new_uid()
    meta.pop("resourceVersion", None)
    meta.pop("deletionTimestamp", None)
    meta.pop("deletionGracePeriodSeconds", None)
    if info.has_generation:
        meta["generation"] = 1
    else:
        meta.pop("generation", None)
    meta["creationTimestamp"] = rfc3339()
    obj["metadata"] = order_metadata(meta)


def default_object(info: ResourceInfo, obj: JSON, default_toleration_seconds: int) -> None:
    """Apply the defaulting and the mutating admission plugins that run before webhooks."""
    if info.resource == "pods":
        _default_pod(obj, default_toleration_seconds)
    elif info.resource == "namespaces":
        meta = obj["metadata"]
        meta["labels"] = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": meta["name"]}
        obj["metadata"] = order_metadata(meta)
        obj["spec"] = {"finalizers": ["kubernetes"], **(obj.get("spec") or {})}
        obj["status"] = {"phase": "Active"}
    elif info.resource == "nodes":
        obj.setdefault("spec", {})
        obj.setdefault("status", {})
    elif info.resource == "poddisruptionbudgets":
        obj.setdefault("spec", {})
        obj["status"] = {
            "disruptionsAllowed": 0,
            "currentHealthy": 0,
            "desiredHealthy": 0,
            "expectedPods": 0,
        }
    elif info.resource in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        for hook in obj.get("webhooks") or []:
            if not isinstance(hook, dict):
                continue
            hook.setdefault("failurePolicy", "Fail")
            hook.setdefault("matchPolicy", "Equivalent")
            hook.setdefault("namespaceSelector", {})
            hook.setdefault("objectSelector", {})
            hook.setdefault("timeoutSeconds", 10)
            for rule in hook.get("rules") or []:
                if isinstance(rule, dict):
                    rule.setdefault("scope", "*")
            if info.resource == "mutatingwebhookconfigurations":
                hook.setdefault("reinvocationPolicy", "Never")
    elif info.resource == "secrets":
        obj.setdefault("type", "Opaque")


def _default_pod(pod: JSON, toleration_seconds: int) -> None:
    spec = pod.setdefault("spec", {})
    meta = pod["metadata"]
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    volume_name = f"kube-api-access-{random_suffix()}"
    volumes = list(spec.get("volumes") or [])
    if spec.get("automountServiceAccountToken", True):
        volumes.append(
            {
                "name": volume_name,
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {
                                            "apiVersion": "v1",
                                            "fieldPath": "metadata.namespace",
                                        },
                                    }
                                ]
                            }
                        },
                    ],
                    "defaultMode": 420,
                },
            }
        )
    containers = []
    qos = "BestEffort"
    for c in spec.get("containers") or []:
        if not isinstance(c, dict):
            containers.append(c)
            continue
        image = str(c.get("image", ""))
        tag_latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
        out = {"name": c.get("name"), "image": image, **c}
        out.setdefault("resources", {})
        if out["resources"]:
            qos = "Burstable"
        if spec.get("automountServiceAccountToken", True):
            out["volumeMounts"] = [
                *(c.get("volumeMounts") or []),
                {
                    "name": volume_name,
                    "readOnly": True,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                },
            ]
        out.setdefault("terminationMessagePath", "/dev/termination-log")
        out.setdefault("terminationMessagePolicy", "File")
        out.setdefault("imagePullPolicy", "Always" if tag_latest else "IfNotPresent")
        containers.append(out)
    tolerations = list(spec.get("tolerations") or [])
    for key in (NOT_READY_TAINT, UNREACHABLE_TAINT):
        taint = {"key": key, "effect": "NoExecute"}
        if not any(tolerates(t, taint) for t in tolerations if isinstance(t, dict)):
            tolerations.append(
                {
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": toleration_seconds,
                }
            )
    ordered: JSON = {}
    if volumes:
        ordered["volumes"] = volumes
    ordered["containers"] = containers
    ordered["restartPolicy"] = spec.get("restartPolicy", "Always")
    ordered["terminationGracePeriodSeconds"] = spec.get("terminationGracePeriodSeconds", 30)
    ordered["dnsPolicy"] = spec.get("dnsPolicy", "ClusterFirst")
    ordered["serviceAccountName"] = sa
    ordered["serviceAccount"] = sa
    for key, value in spec.items():
        if key not in ordered and key not in (
            "tolerations",
            "securityContext",
            "schedulerName",
            "priority",
            "enableServiceLinks",
            "preemptionPolicy",
        ):
            ordered[key] = value
    ordered["securityContext"] = spec.get("securityContext", {})
    ordered["schedulerName"] = spec.get("schedulerName", "default-scheduler")
    ordered["tolerations"] = tolerations
    ordered["priority"] = spec.get("priority", 0)
    ordered["enableServiceLinks"] = spec.get("enableServiceLinks", True)
    ordered["preemptionPolicy"] = spec.get("preemptionPolicy", "PreemptLowerPriority")
    pod["spec"] = ordered
    status = pod.get("status") or {}
    if not status.get("phase"):
        status = {"phase": "Pending", "qosClass": qos}
    pod["status"] = status
    meta.setdefault("generation", 1)


# -------------------------------------------------------------------- validation

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _check_one_of(
    causes: list[tuple[str, str, str]],
    obj: JSON,
    prefix: str,
    field: str,
    allowed: tuple[str, ...],
) -> None:
    """Record a FieldValueNotSupported cause when `obj[field]` is not one of `allowed`."""
    if obj.get(field) not in allowed:
        choices = ", ".join(f'"{value}"' for value in allowed)
        causes.append(
            (
                "FieldValueNotSupported",
                f"{prefix}.{field}",
                f"Unsupported value: must be one of {choices}",
            )
        )


def validate(info: ResourceInfo, obj: JSON) -> None:
    """Raise the real 422 Invalid error for the mistakes the simulator checks."""
    meta = obj.get("metadata")
    name = meta.get("name", "") if isinstance(meta, dict) else ""
    causes: list[tuple[str, str, str]] = []
    if not isinstance(meta, dict):
        causes.append(("FieldValueRequired", "metadata", "Required value"))
        raise invalid(info.group, info.kind, "", causes)
    if not name:
        causes.append(
            (
                "FieldValueRequired",
                "metadata.name",
                "Required value: name or generateName is required",
            )
        )
    elif info.resource != "events" and (
        not isinstance(name, str)
        or len(name) > 253
        or not (_DNS_LABEL if info.resource == "namespaces" else _DNS_SUBDOMAIN).match(name)
    ):
        causes.append(
            (
                "FieldValueInvalid",
                "metadata.name",
                f"Invalid value: {name!r}: a lowercase RFC 1123 subdomain must "
                "consist of lower case alphanumeric characters, '-' or '.', and "
                "must start and end with an alphanumeric character",
            )
        )
    for field in ("labels", "annotations"):
        values = meta.get(field)
        if values is None:
            continue
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()
        ):
            causes.append(
                (
                    "FieldValueInvalid",
                    f"metadata.{field}",
                    "Invalid value: must be a map of strings",
                )
            )
        elif field == "labels":
            for v in values.values():
                if len(v) > 63 or not _LABEL_VALUE.match(v):
                    causes.append(
                        (
                            "FieldValueInvalid",
                            "metadata.labels",
                            f"Invalid value: {v!r}: a valid label must be an empty "
                            "string or consist of alphanumeric characters, '-', '_' "
                            "or '.'",
                        )
                    )
    if info.resource == "pods":
        spec = obj.get("spec")
        containers = spec.get("containers") if isinstance(spec, dict) else None
        if not containers or not isinstance(containers, list):
            causes.append(("FieldValueRequired", "spec.containers", "Required value"))
        else:
            for i, c in enumerate(containers):
                if not isinstance(c, dict) or not c.get("name"):
                    causes.append(
                        ("FieldValueRequired", f"spec.containers[{i}].name", "Required value")
                    )
                elif not c.get("image"):
                    causes.append(
                        ("FieldValueRequired", f"spec.containers[{i}].image", "Required value")
                    )
    elif info.resource in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        for i, hook in enumerate(obj.get("webhooks") or []):
            prefix = f"webhooks[{i}]"
            if not isinstance(hook, dict):
                causes.append(("FieldValueInvalid", prefix, "Invalid value: must be an object"))
                continue
            if not hook.get("name"):
                causes.append(("FieldValueRequired", f"{prefix}.name", "Required value"))
            cc = hook.get("clientConfig")
            if not isinstance(cc, dict) or (not cc.get("url") and not cc.get("service")):
                causes.append(
                    (
                        "FieldValueRequired",
                        f"{prefix}.clientConfig",
                        "Required value: exactly one of url or service is required",
                    )
                )
            _check_one_of(causes, hook, prefix, "sideEffects", ("None", "NoneOnDryRun"))
            versions = hook.get("admissionReviewVersions")
            if not isinstance(versions, list) or "v1" not in versions:
                causes.append(
                    (
                        "FieldValueInvalid",
                        f"{prefix}.admissionReviewVersions",
                        "Invalid value: must include at least one of v1",
                    )
                )
            _check_one_of(causes, hook, prefix, "failurePolicy", ("Fail", "Ignore"))
            timeout = hook.get("timeoutSeconds")
            if not isinstance(timeout, int) or not 1 <= timeout <= 30:
                causes.append(
                    (
                        "FieldValueInvalid",
                        f"{prefix}.timeoutSeconds",
                        "Invalid value: the timeout value must be between 1 and 30 seconds",
                    )
                )
    if causes:
        raise invalid(info.group, info.kind, str(name), causes)


_MUTABLE_POD_SPEC = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")


def validate_pod_update(old: JSON, new: JSON) -> None:
    """Pod specs are immutable except images, tolerations (additions) and a few fields."""

    def strip(spec: Any) -> Any:
        if not isinstance(spec, dict):
            return spec
        out = {k: v for k, v in spec.items() if k not in _MUTABLE_POD_SPEC}
        out["containers"] = [
            {k: v for k, v in c.items() if k != "image"} if isinstance(c, dict) else c
            for c in spec.get("containers") or []
        ]
        return out

    if strip(old.get("spec")) != strip(new.get("spec")):
        name = new["metadata"].get("name", "")
        raise invalid(
            "",
            "Pod",
            name,
            [
                (
                    "FieldValueForbidden",
                    "spec",
                    "Forbidden: pod updates may not change fields other than "
                    "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                    "`spec.activeDeadlineSeconds`,`spec.tolerations` "
                    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                    "(allow it to be set to 1 if it was previously negative)",
                )
            ],
        )


_POD_CONDITION_ORDER = (
    "type",
    "observedGeneration",
    "status",
    "lastProbeTime",
    "lastTransitionTime",
    "reason",
    "message",
)


def normalize(info: ResourceInfo, obj: JSON) -> None:
    """Re-create what Go's encoding of the typed object always emits (e.g. a pod condition's
    `lastProbeTime: null`, which a JSON/strategic merge patch with null would have dropped)."""
    if info.resource != "pods":
        return
    status = obj.get("status")
    if not isinstance(status, dict) or not isinstance(status.get("conditions"), list):
        return
    fixed = []
    for cond in status["conditions"]:
        if isinstance(cond, dict):
            cond = {**cond}
            cond.setdefault("lastProbeTime", None)
            cond = {k: cond[k] for k in _POD_CONDITION_ORDER if k in cond} | cond
        fixed.append(cond)
    status["conditions"] = fixed
