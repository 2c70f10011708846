"""Deletion protection (seed 002, chapter 8).

An object of a protected resource (`--delete-protection-resources`) that carries the label or
the annotation `kubeguard.io/delete-protection=true` cannot be deleted; the denial names the
object and the command that lifts the protection.

Deleting a **namespace** that still contains protected objects is denied as well, at DELETE
time. Allowing it would be worse than useless: the namespace controller would delete the
contents one by one, this webhook would deny the protected ones, and the namespace would stay
Terminating (with its unprotected contents already gone) until someone removed the markers.
The check lists, live, every protected namespaced resource type in that namespace.

Webhook entries:
* `objects.delete-protection.kubeguard.io`: DELETE of the protected resources (namespaces
  excluded), with a `matchConditions` CEL expression so the API server only calls kubeguard for
  objects that carry the marker. failurePolicy Fail costs nothing for other objects, and a
  protected object stays protected while kubeguard is down.
* `namespaces.delete-protection.kubeguard.io`: every namespace DELETE (a namespace's contents
  are invisible to CEL). failurePolicy Fail and timeoutSeconds 15; the handler gives the live
  listing 10 s (`NAMESPACE_CHECK_TIMEOUT`) and, when it cannot complete it (API error, missing
  RBAC, timeout, no API access), denies with a 503 that says why. Deleting a namespace is
  irreversible and rare, refusing it is retryable: fail closed. While kubeguard is down, namespace
  deletions are refused by the API server ("failed calling webhook"); disable the gate or the
  webhook entry to delete namespaces without kubeguard.

Race: an object protected after the namespace check passed still blocks the namespace's
termination; removing its marker lets the namespace finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpx2
import msgspec

from kubeguard.admission.handler import Response, allowed, denied
from kubeguard.admission.registry import Plugin
from kubeguard.admission.review import Request
from kubeguard.admission.webhook import HandlerSpec, Rule, WebhookEntry
from kubeguard.kube.objects import View
from kubeguard.notify import events
from kubeguard.plugins.notice import send_notice
from kubeguard.runtime import Runtime

log = logging.getLogger("kubeguard.plugins.deletion_protection")

GATE = "DeletionProtection"
PATH = "/validate-deletion-protection"
HANDLER_NAME = "deletion-protection"
MARKER = "kubeguard.io/delete-protection"
NAMESPACE_CHECK_TIMEOUT = 10.0  # < the entry's timeoutSeconds, so kubeguard explains itself
NAMESPACE_ENTRY_TIMEOUT = 15
LIST_PAGE_SIZE = 500
# Ask for metadata only (kube-apiserver's server-side conversion); fall back to plain JSON.
METADATA_ACCEPT = (
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)
SHOWN_OBJECTS = 10


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool

    @property
    def kubectl_name(self) -> str:
        """The name kubectl resolves unambiguously (`deployments.apps`)."""
        return f"{self.resource}.{self.group}" if self.group else self.resource

    def collection_path(self, namespace: str) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{root}/namespaces/{namespace}/{self.resource}"


def _types() -> dict[str, ResourceType]:
    table: list[tuple[str, str, str, str, bool]] = [
        ("", "v1", "namespaces", "Namespace", False),
        ("", "v1", "configmaps", "ConfigMap", True),
        ("", "v1", "secrets", "Secret", True),
        ("", "v1", "services", "Service", True),
        ("", "v1", "serviceaccounts", "ServiceAccount", True),
        ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("", "v1", "persistentvolumes", "PersistentVolume", False),
        ("", "v1", "pods", "Pod", True),
        ("apps", "v1", "deployments", "Deployment", True),
        ("apps", "v1", "statefulsets", "StatefulSet", True),
        ("apps", "v1", "daemonsets", "DaemonSet", True),
        ("apps", "v1", "replicasets", "ReplicaSet", True),
        ("batch", "v1", "jobs", "Job", True),
        ("batch", "v1", "cronjobs", "CronJob", True),
        ("networking.k8s.io", "v1", "ingresses", "Ingress", True),
        ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True),
        ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
        ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True),
        ("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
        ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
        ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
        ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
        ("storage.k8s.io", "v1", "storageclasses", "StorageClass", False),
        (
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            False,
        ),
    ]
    return {r: ResourceType(g, v, r, k, n) for g, v, r, k, n in table}


KNOWN_RESOURCES = _types()


def parse_resources(names: Iterable[str]) -> list[ResourceType]:
    """Resolve `--delete-protection-resources`: a known plural name (`deployments`) or, for
    other (custom) resources, `group/version/resource` (treated as namespaced)."""
    out: dict[str, ResourceType] = {}
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in KNOWN_RESOURCES:
            rtype = KNOWN_RESOURCES[name]
        else:
            parts = name.split("/")
            if len(parts) != 3 or not all(parts) or parts[0] == "core":
                known = ", ".join(sorted(KNOWN_RESOURCES))
                raise ValueError(
                    f"delete protection: unknown resource {name!r}; use one of {known}, or "
                    "group/version/resource for other resources (e.g. example.com/v1/widgets)"
                )
            group, version, resource = parts
            rtype = ResourceType(group, version, resource, resource, True)
        out[rtype.kubectl_name] = rtype
    return list(out.values())


# ---------------------------------------------------------------------------- views


class Meta(View, frozen=True):
    name: str = ""
    namespace: str = ""
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class ObjectView(View, frozen=True):
    kind: str = ""
    metadata: Meta = Meta()


class _ListMeta(View, frozen=True):
    continue_: str = msgspec.field(default="", name="continue")


class _ObjectList(View, frozen=True):
    metadata: _ListMeta = _ListMeta()
    items: list[ObjectView] | None = None


_list_decoder = msgspec.json.Decoder(_ObjectList)


def marker_of(meta: Meta) -> str | None:
    """ "label" or "annotation" when the object is protected, else None."""
    if (meta.labels or {}).get(MARKER) == "true":
        return "label"
    if (meta.annotations or {}).get(MARKER) == "true":
        return "annotation"
    return None


def lift_command(rtype_name: str, name: str, namespace: str, marker: str) -> str:
    verb = "label" if marker == "label" else "annotate"
    ns = f" -n {namespace}" if namespace else ""
    return f"kubectl {verb} {rtype_name} {name}{ns} {MARKER}-"


class ContentCheckError(RuntimeError):
    """The namespace's contents could not be listed; the message says why."""


@dataclass(frozen=True)
class ProtectedObject:
    rtype: ResourceType
    name: str
    marker: str


class DeletionProtection:
    def __init__(self, runtime: Runtime, resources: Sequence[ResourceType]) -> None:
        self.runtime = runtime
        self.by_name = {(r.group, r.resource): r for r in resources}
        self.namespaced = [r for r in resources if r.namespaced]
        self.check_timeout = NAMESPACE_CHECK_TIMEOUT

    async def handle(self, request: Request) -> Response:
        if request.operation != "DELETE" or request.sub_resource:
            return allowed(reason="not-a-delete")
        obj = request.old_object_as(ObjectView)
        if obj is None:
            return allowed(reason="no-old-object")
        group = request.raw.resource.group
        rtype = self.by_name.get((group, request.resource))
        marker = marker_of(obj.metadata)
        if marker is not None and rtype is not None:
            return self._deny_object(request, obj, rtype, marker)
        if request.resource == "namespaces" and group == "" and self.namespaced:
            return await self._check_namespace(request, obj.metadata.name or request.name)
        return allowed(reason="not-protected")

    def _deny_object(
        self, request: Request, obj: ObjectView, rtype: ResourceType, marker: str
    ) -> Response:
        name = obj.metadata.name or request.name
        namespace = obj.metadata.namespace or request.namespace
        kind = obj.kind or request.kind.kind or rtype.kind
        target = f"{namespace}/{name}" if namespace else name
        message = (
            f"{kind} {target} is protected from deletion by kubeguard ({marker} "
            f"{MARKER}=true). To delete it, first remove the protection: "
            f"{lift_command(rtype.kubectl_name, name, namespace, marker)}"
        )
        send_notice(
            self.runtime,
            request,
            events.PLUGIN_DENIAL,
            "Protected object not deleted",
            message,
            kind=kind,
            object=target,
        )
        return denied(message, code=403, reason="delete-protected")

    async def _check_namespace(self, request: Request, namespace: str) -> Response:
        try:
            async with asyncio.timeout(self.check_timeout):
                found = await self.protected_in_namespace(namespace)
        except TimeoutError:
            return self._check_failed(
                request, namespace, f"listing its contents took longer than {self.check_timeout:g}s"
            )
        except ContentCheckError as exc:
            return self._check_failed(request, namespace, str(exc))
        if not found:
            return allowed(reason="namespace-unprotected")
        shown = ", ".join(f"{p.rtype.kubectl_name}/{p.name}" for p in found[:SHOWN_OBJECTS])
        more = f" and {len(found) - SHOWN_OBJECTS} more" if len(found) > SHOWN_OBJECTS else ""
        first = found[0]
        message = (
            f"namespace {namespace} still contains {len(found)} object(s) protected from "
            f"deletion by kubeguard ({MARKER}=true): {shown}{more}. Deleting the namespace now "
            "would leave it stuck Terminating. Remove their protection first, e.g. "
            f"{lift_command(first.rtype.kubectl_name, first.name, namespace, first.marker)}"
        )
        send_notice(
            self.runtime,
            request,
            events.PLUGIN_DENIAL,
            "Namespace with protected objects not deleted",
            message,
            namespace=namespace,
        )
        return denied(message, code=403, reason="namespace-has-protected-objects")

    def _check_failed(self, request: Request, namespace: str, why: str) -> Response:
        message = (
            f"kubeguard could not verify that namespace {namespace} holds no objects protected "
            f"from deletion ({why}); the deletion is refused to be safe. Retry; if this "
            f"persists, check kubeguard's API access (it needs list on "
            f"{', '.join(r.kubectl_name for r in self.namespaced)})"
        )
        log.warning(
            "namespace deletion check failed",
            extra={"namespace": namespace, "error": why, "uid": request.uid},
        )
        return denied(message, code=503, reason="namespace-check-failed")

    async def protected_in_namespace(self, namespace: str) -> list[ProtectedObject]:
        """Every protected object in `namespace`, over all protected namespaced types.

        One paginated, metadata-only LIST per type, filtered here: an annotation cannot be
        selected server-side, and one list answers for label and annotation at once.
        """
        kube = self.runtime.kube
        if kube is None:
            raise ContentCheckError("kubeguard has no Kubernetes API access configured")
        results = await asyncio.gather(
            *(self._list_protected(kube.http, r, namespace) for r in self.namespaced)
        )
        return [p for group in results for p in group]

    async def _list_protected(
        self, http: httpx2.AsyncClient, rtype: ResourceType, namespace: str
    ) -> list[ProtectedObject]:
        found: list[ProtectedObject] = []
        params = {"limit": str(LIST_PAGE_SIZE)}
        while True:
            try:
                resp = await http.get(
                    rtype.collection_path(namespace),
                    params=params,
                    headers={"Accept": METADATA_ACCEPT},
                )
            except httpx2.HTTPError as exc:
                raise ContentCheckError(
                    f"listing {rtype.kubectl_name}: {type(exc).__name__}: {exc}"
                ) from None
            if resp.status_code == 404:
                # The resource type is not served (e.g. a CRD that is not installed).
                return found
            if resp.status_code != 200:
                raise ContentCheckError(
                    f"listing {rtype.kubectl_name} returned HTTP {resp.status_code}: "
                    + resp.text[:200]
                )
            try:
                page = _list_decoder.decode(resp.content)
            except msgspec.DecodeError as exc:
                raise ContentCheckError(
                    f"listing {rtype.kubectl_name}: bad answer: {exc}"
                ) from None
            for item in page.items or []:
                marker = marker_of(item.metadata)
                if marker is not None:
                    found.append(ProtectedObject(rtype, item.metadata.name, marker))
            if not page.metadata.continue_:
                return found
            params = {"limit": str(LIST_PAGE_SIZE), "continue": page.metadata.continue_}


def _protected_expression() -> str:
    def has(field: str) -> str:
        return (
            f"(has(oldObject.metadata.{field}) && '{MARKER}' in oldObject.metadata.{field} "
            f"&& oldObject.metadata.{field}['{MARKER}'] == 'true')"
        )

    return f"{has('labels')} || {has('annotations')}"


def entries(resources: Sequence[ResourceType]) -> tuple[WebhookEntry, ...]:
    by_gv: dict[tuple[str, str], list[str]] = {}
    for r in resources:
        if r.resource != "namespaces":
            by_gv.setdefault((r.group, r.version), []).append(r.resource)
    out: list[WebhookEntry] = []
    if by_gv:
        out.append(
            WebhookEntry(
                name="objects.delete-protection.kubeguard.io",
                rules=tuple(
                    Rule(
                        operations=("DELETE",),
                        resources=tuple(names),
                        api_groups=(group,),
                        api_versions=(version,),
                    )
                    for (group, version), names in by_gv.items()
                ),
                failure_policy="Fail",
                match_conditions=(("marked-protected", _protected_expression()),),
                timeout_seconds=5,
                side_effects="NoneOnDryRun",
            )
        )
    if any(r.namespaced or r.resource == "namespaces" for r in resources):
        out.append(
            WebhookEntry(
                name="namespaces.delete-protection.kubeguard.io",
                rules=(Rule(operations=("DELETE",), resources=("namespaces",), scope="Cluster"),),
                failure_policy="Fail",
                timeout_seconds=NAMESPACE_ENTRY_TIMEOUT,
                side_effects="NoneOnDryRun",
            )
        )
    return tuple(out)


def build(runtime: Runtime) -> list[HandlerSpec]:
    resources = parse_resources(runtime.settings.delete_protection_resources)
    if not resources:
        raise ValueError(
            "delete protection is enabled but --delete-protection-resources lists no resource"
        )
    return [
        HandlerSpec(
            name=HANDLER_NAME,
            path=PATH,
            kind="validating",
            handler=DeletionProtection(runtime, resources),
            failure_policy="Fail",
            entries=entries(resources),
        )
    ]


PLUGIN: Plugin[Runtime] = Plugin(
    gate=GATE,
    description="Deny deleting objects (and namespaces holding objects) marked "
    f"{MARKER}=true (seed 002).",
    build=build,
)
