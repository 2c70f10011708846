"""REST semantics of the simulated API server, independent of HTTP.

`ApiCore` implements create / update / patch / delete / eviction / list with the behaviour of
kube-apiserver v1.36 that kubeguard depends on: optimistic concurrency, defaulting, validation,
NamespaceLifecycle, admission webhooks (with the quirks in the fixtures README: PATCH reviewed as
UPDATE, two or three review calls for one immediate pod DELETE, Eviction converted to policy/v1),
graceful pod deletion, PodDisruptionBudget checks and the Status errors of the real server.
The HTTP layer and the simulated controllers both call it, so controller writes go through the
same webhook path as client writes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import msgspec

from . import timeline as tl
from .admission import AdmissionRequest, WebhookDispatcher
from .auth import UserInfo, UserTable
from .patch import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)
from .resources import (
    ResourceInfo,
    core,
    default_object,
    from_wire,
    init_metadata,
    list_item,
    normalize,
    order_metadata,
    to_wire,
    validate,
    validate_pod_update,
)
from .store import (
    Store,
    labels_match,
    node_name_of,
    parse_field_selector,
    parse_label_selector,
    selector_matches,
)
from .util import (
    JSON,
    ApiError,
    already_exists,
    bad_request,
    conflict,
    deepcopy,
    expired,
    internal_error,
    invalid,
    not_found,
    now,
    rfc3339,
    status_failure,
    success_status,
    too_large_rv,
)

PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+json": "apply",
}


def unsupported_media_type() -> ApiError:
    """The 415 the API server answers to a PATCH whose Content-Type is not a patch type."""
    return ApiError(
        status_failure(
            415,
            f"the body of the request was in an unknown format - accepted media types "
            f"include: {', '.join(PATCH_TYPES)}",
            "UnsupportedMediaType",
        )
    )


_MAX_RETRIES = 8
PODS = core("pods")
_DELETE_OPTION_KEYS = (
    "gracePeriodSeconds",
    "preconditions",
    "orphanDependents",
    "propagationPolicy",
    "dryRun",
)


def _set_condition(status: JSON, cond: JSON) -> bool:
    """apipod.UpdatePodCondition: replace or append; keeps lastTransitionTime if the status
    did not change. Returns False when nothing changed."""
    conditions: list[JSON] = status.setdefault("conditions", [])
    for i, existing in enumerate(conditions):
        if existing.get("type") != cond["type"]:
            continue
        if existing.get("status") == cond["status"]:
            cond = {**cond, "lastTransitionTime": existing.get("lastTransitionTime")}
        same = all(existing.get(k) == cond.get(k) for k in ("status", "reason", "message"))
        if same:
            return False
        conditions[i] = cond
        return True
    conditions.append(cond)
    return True


def pod_condition(pod: JSON, ctype: str) -> JSON | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            result: JSON = cond
            return result
    return None


def disruption_target(pod: JSON, reason: str, message: str) -> JSON:
    return {
        "type": "DisruptionTarget",
        "observedGeneration": pod["metadata"].get("generation", 1),
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": rfc3339(),
        "reason": reason,
        "message": message,
    }


def with_condition(pod: JSON, cond: JSON) -> JSON | None:
    """A copy of `pod` with the condition set, or None if it was already set."""
    new = deepcopy(pod)
    if not _set_condition(new.setdefault("status", {}), cond):
        return None
    result: JSON = new
    return result


class ApiCore:
    def __init__(
        self,
        store: Store,
        users: UserTable,
        dispatcher: WebhookDispatcher,
        timeline: tl.Timeline,
        default_toleration_seconds: int = 300,
        audiences: Callable[[], list[str]] = lambda: ["https://127.0.0.1:6443"],
    ) -> None:
        self.store = store
        self.users = users
        self.dispatcher = dispatcher
        self.timeline = timeline
        self.default_toleration_seconds = default_toleration_seconds
        self.audiences = audiences

    # ----------------------------------------------------------------- admission

    async def _admit(self, req: AdmissionRequest) -> JSON | None:
        try:
            return await self.dispatcher.admit(req)
        except ApiError as err:
            target = f"{req.namespace}/{req.name}".lstrip("/")
            self.timeline.add(
                tl.DENIAL,
                req.user.username,
                f"{req.operation} {req.resource_path()} {target} refused: {err.code} "
                f"{err.status.get('message', '')}",
                operation=req.operation,
                resource=req.info.resource,
                subresource=req.subresource,
                namespace=req.namespace,
                name=req.name,
                code=err.code,
                message=err.status.get("message", ""),
            )
            raise

    @staticmethod
    def _options(kind: str, dry_run: bool, field_manager: str | None = None) -> JSON:
        out: JSON = {"kind": kind, "apiVersion": "meta.k8s.io/v1"}
        if dry_run:
            out["dryRun"] = ["All"]
        if field_manager:
            out["fieldManager"] = field_manager
        return out

    # ----------------------------------------------------------------- reads

    def get(self, info: ResourceInfo, namespace: str, name: str) -> JSON:
        obj = self.store.get(info.key, namespace, name)
        if obj is None:
            raise not_found(info.group, info.resource, name)
        return obj

    def list(
        self,
        info: ResourceInfo,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int | None = None,
        continue_token: str = "",
        resource_version: str = "",
        resource_version_match: str = "",
    ) -> JSON:
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(info.resource, field_selector)
        current = self.store.rv
        if resource_version_match:
            if resource_version_match not in ("Exact", "NotOlderThan"):
                raise bad_request(
                    f'resourceVersionMatch: Unsupported value: "{resource_version_match}": '
                    'supported values: "Exact", "NotOlderThan"'
                )
            if not resource_version:
                raise bad_request(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided"
                )
        if resource_version and resource_version != "0":
            try:
                rv = int(resource_version)
            except ValueError:
                raise bad_request(
                    f'resourceVersion: Invalid value: "{resource_version}": '
                    "must be a non-negative integer"
                ) from None
            if resource_version_match == "Exact" and rv < self.store.oldest_available(info.key):
                raise expired("The resourceVersion for the provided list is too old.")
            if rv > current:
                raise too_large_rv(rv, current)
        start: tuple[str, str] | None = None
        list_rv = current
        if continue_token:
            start, list_rv = self._decode_continue(continue_token)
            if list_rv < self.store.oldest_available(info.key):
                raise expired(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter, or use "
                    "the continue token in this response to retrieve the remainder of the "
                    "results."
                )
        node = node_name_of(fields) if info.resource == "pods" else None
        if node is not None:
            source: Any = (
                p
                for p in self.store.pods_on_node(node)
                if (namespace is None or p["metadata"].get("namespace") == namespace)
                and (start is None or (p["metadata"]["namespace"], p["metadata"]["name"]) > start)
            )
        else:
            source = self.store.iter(info.key, namespace, start)
        items: list[JSON] = []
        cont = ""
        remaining: int | None = None
        it = iter(source)
        for obj in it:
            if labels and not labels_match(labels, obj["metadata"].get("labels")):
                continue
            if fields and not all(f.matches(obj) for f in fields):
                continue
            if limit and len(items) >= limit:
                last = items[-1]["metadata"]
                cont = self._encode_continue(last.get("namespace", ""), last["name"], list_rv)
                if not labels and not fields:
                    remaining = 1 + sum(1 for _ in it)
                break
            items.append(obj)
        meta: JSON = {"resourceVersion": str(list_rv)}
        if cont:
            meta["continue"] = cont
            if remaining is not None:
                meta["remainingItemCount"] = remaining
        if info.group == "events.k8s.io":
            items = [list_item(info, i) for i in items]
        return {
            "kind": info.list_kind,
            "apiVersion": info.api_version,
            "metadata": meta,
            "items": items,
        }

    @staticmethod
    def _encode_continue(namespace: str, name: str, rv: int) -> str:
        token = {"v": "meta.k8s.io/v1", "rv": rv, "start": f"{namespace}/{name}\u0000"}
        return base64.urlsafe_b64encode(msgspec.json.encode(token)).decode().rstrip("=")

    @staticmethod
    def _decode_continue(token: str) -> tuple[tuple[str, str], int]:
        try:
            data = msgspec.json.decode(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            start = str(data["start"]).rstrip("\u0000")
            namespace, _, name = start.partition("/")
            return (namespace, name), int(data["rv"])
        except (binascii.Error, msgspec.DecodeError, KeyError, TypeError, ValueError):
            raise bad_request(
                "continue key is not valid: incorrect encoded start resourceVersion "
                "(version meta.k8s.io/v1)"
            ) from None

    # ----------------------------------------------------------------- create

    def _check_body(self, info: ResourceInfo, body: Any, namespace: str, name: str | None) -> JSON:
        if not isinstance(body, dict):
            raise bad_request(
                f"the body of the request was in an unknown format - expected a {info.kind} object"
            )
        if "kind" in body and body["kind"] != info.kind:
            raise bad_request(
                f'{body.get("kind")} in version "{body.get("apiVersion", "")}" cannot be '
                f"handled as a {info.kind}: the object kind does not match the request"
            )
        if "apiVersion" in body and body["apiVersion"] != info.api_version:
            raise bad_request(
                f"the API version in the data ({body['apiVersion']}) does not match the "
                f"expected API version ({info.api_version})"
            )
        meta = body.get("metadata")
        if meta is None:
            meta = body["metadata"] = {}
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if info.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and body_ns != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
        if name is not None and meta.get("name") and meta["name"] != name:
            raise bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        return body

    def _check_namespace(self, info: ResourceInfo, namespace: str) -> None:
        if info.namespaced and self.store.get("namespaces", "", namespace) is None:
            raise not_found("", "namespaces", namespace)

    async def create(
        self,
        info: ResourceInfo,
        namespace: str,
        body: Any,
        user: UserInfo,
        *,
        dry_run: bool = False,
        field_manager: str | None = None,
        admit: bool = True,
    ) -> JSON:
        if info.resource in ("tokenreviews", "subjectaccessreviews"):
            return self.review(info, body)
        body = self._check_body(info, body, namespace, None)
        self._check_namespace(info, namespace)
        obj = from_wire(info, deepcopy(body))
        init_metadata(info, obj, namespace)
        default_object(info, obj, self.default_toleration_seconds)
        validate(info, obj)
        name = obj["metadata"]["name"]
        if admit:
            obj = (
                await self._admit(
                    AdmissionRequest(
                        "CREATE",
                        info,
                        name,
                        namespace if info.namespaced else "",
                        user,
                        obj,
                        None,
                        dry_run=dry_run,
                        options=self._options("CreateOptions", dry_run, field_manager),
                    )
                )
                or obj
            )
            self._check_namespace(info, namespace)
        if self.store.get(info.key, obj["metadata"].get("namespace", ""), name) is not None:
            raise already_exists(info.group, info.resource, name)
        if dry_run:
            return obj
        return self.store.create(info.key, obj)

    def review(self, info: ResourceInfo, body: Any) -> JSON:
        """TokenReview / SubjectAccessReview (never stored)."""
        body = self._check_body(info, body, "", None)
        spec = body.get("spec")
        if not isinstance(spec, dict):
            spec = {}
        if info.resource == "tokenreviews":
            if not spec.get("token"):
                raise invalid(
                    info.group,
                    info.kind,
                    "",
                    [("FieldValueRequired", "spec.token", "Required value: token is required")],
                )
            status = self.users.token_review(spec, self.audiences())
        else:
            ra, nra = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
            if (ra is None) == (nra is None):
                raise invalid(
                    info.group,
                    info.kind,
                    "",
                    [
                        (
                            "FieldValueInvalid",
                            "spec.resourceAttributes",
                            "Invalid value: exactly one of nonResourceAttributes or "
                            "resourceAttributes must be specified",
                        )
                    ],
                )
            if not spec.get("user") and not spec.get("groups"):
                raise invalid(
                    info.group,
                    info.kind,
                    "",
                    [
                        (
                            "FieldValueInvalid",
                            "spec.user",
                            'Invalid value: "": at least one of user or group must be specified',
                        )
                    ],
                )
            status = self.users.access_review(spec)
        return {
            "kind": info.kind,
            "apiVersion": info.api_version,
            "metadata": {},
            "spec": spec,
            "status": status,
        }

    # ----------------------------------------------------------------- update / patch

    def _prepare_update(self, info: ResourceInfo, old: JSON, new: JSON, subresource: str) -> JSON:
        if subresource == "status":
            result = deepcopy(old)
            result["status"] = new.get("status") if isinstance(new.get("status"), dict) else {}
            new = result
        elif info.has_status:
            new["status"] = deepcopy(old.get("status", {}))
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        old_meta = old["metadata"]
        for key in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "generateName",
        ):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        new["metadata"] = meta
        if info.has_generation and subresource != "status":
            spec_key = "webhooks" if "webhook" in info.resource else "spec"
            if new.get(spec_key) != old.get(spec_key):
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
        new["metadata"] = order_metadata(meta)
        normalize(info, new)
        return new

    async def _update_loop(
        self,
        info: ResourceInfo,
        namespace: str,
        name: str,
        user: UserInfo,
        make: Callable[[JSON], JSON],
        *,
        subresource: str = "",
        dry_run: bool = False,
        field_manager: str | None = None,
        precondition_rv: str | None = None,
        admit: bool = True,
    ) -> JSON:
        for _ in range(_MAX_RETRIES):
            old = self.get(info, namespace, name)
            if precondition_rv and precondition_rv != old["metadata"]["resourceVersion"]:
                raise conflict(info.group, info.resource, name)
            new = self._prepare_update(info, old, make(old), subresource)
            validate(info, new)
            if info.resource == "pods" and not subresource:
                validate_pod_update(old, new)
            admitted: JSON = new
            if admit:
                admitted = (
                    await self._admit(
                        AdmissionRequest(
                            "UPDATE",
                            info,
                            name,
                            namespace if info.namespaced else "",
                            user,
                            new,
                            old,
                            subresource=subresource,
                            dry_run=dry_run,
                            options=self._options("UpdateOptions", dry_run, field_manager),
                        )
                    )
                    or new
                )
            if self.store.get(info.key, namespace, name) is not old:
                if precondition_rv:
                    raise conflict(info.group, info.resource, name)
                continue  # GuaranteedUpdate: retry on the latest object
            if admitted is not new:
                admitted = self._prepare_update(info, old, admitted, subresource)
            if dry_run:
                return admitted
            committed = self.store.replace(info.key, admitted)
            return self._finalize_if_done(info, committed)
        raise conflict(info.group, info.resource, name)

    def _finalize_if_done(self, info: ResourceInfo, obj: JSON) -> JSON:
        meta = obj["metadata"]
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and (info.resource != "pods" or meta.get("deletionGracePeriodSeconds") == 0)
        ):
            return self.store.remove(info.key, meta.get("namespace", ""), meta["name"])
        return obj

    async def update(
        self,
        info: ResourceInfo,
        namespace: str,
        name: str,
        body: Any,
        user: UserInfo,
        *,
        subresource: str = "",
        dry_run: bool = False,
        field_manager: str | None = None,
        admit: bool = True,
    ) -> JSON:
        body = self._check_body(info, body, namespace, name)
        if not body["metadata"].get("name"):
            raise bad_request("name is required in the object metadata")
        rv = body["metadata"].get("resourceVersion") or None
        stored = from_wire(info, body)
        return await self._update_loop(
            info,
            namespace,
            name,
            user,
            lambda _old: deepcopy(stored),
            subresource=subresource,
            dry_run=dry_run,
            field_manager=field_manager,
            precondition_rv=rv,
            admit=admit,
        )

    async def patch(
        self,
        info: ResourceInfo,
        namespace: str,
        name: str,
        patch_type: str,
        patch: Any,
        user: UserInfo,
        *,
        subresource: str = "",
        dry_run: bool = False,
        field_manager: str | None = None,
        admit: bool = True,
    ) -> JSON:
        kind = PATCH_TYPES.get(patch_type, patch_type)
        if kind not in ("json", "merge", "strategic", "apply"):
            raise unsupported_media_type()
        if kind == "json" and not isinstance(patch, list):
            raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        if kind != "json" and not isinstance(patch, dict):
            raise bad_request("the patch must be a JSON object")
        precondition = None
        if isinstance(patch, dict):
            meta = patch.get("metadata")
            if isinstance(meta, dict) and meta.get("resourceVersion"):
                precondition = str(meta["resourceVersion"])

        def make(old: JSON) -> JSON:
            wire = to_wire(info, old)
            try:
                if kind == "json":
                    patched = apply_json_patch(wire, patch)
                elif kind == "strategic":
                    patched = apply_strategic_merge_patch(wire, patch)
                else:
                    patched = apply_merge_patch(wire, patch)
            except PatchError as exc:
                if kind == "json":
                    raise ApiError(status_failure(422, str(exc), "Invalid")) from None
                raise bad_request(str(exc)) from None
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
                raise bad_request("the patched object is not a valid object")
            if patched.get("kind") != info.kind or patched.get("apiVersion") != info.api_version:
                raise bad_request("the patch may not change kind or apiVersion")
            meta = patched["metadata"]
            if meta.get("name") != name or (info.namespaced and meta.get("namespace") != namespace):
                raise bad_request("the patch may not change the object's name or namespace")
            if meta.get("uid") != old["metadata"].get("uid"):
                raise ApiError(
                    status_failure(
                        409,
                        f"Precondition failed: UID in precondition: {meta.get('uid')}, UID in "
                        f"object meta: {old['metadata'].get('uid')}",
                        "Conflict",
                        {"name": name, "kind": info.resource},
                    )
                )
            return from_wire(info, patched)

        return await self._update_loop(
            info,
            namespace,
            name,
            user,
            make,
            subresource=subresource,
            dry_run=dry_run,
            field_manager=field_manager,
            precondition_rv=precondition,
            admit=admit,
        )

    # ----------------------------------------------------------------- delete

    @staticmethod
    def _parse_delete_options(options: Any) -> JSON:
        if options is None:
            return {}
        if not isinstance(options, dict):
            raise bad_request("DeleteOptions must be an object")
        grace = options.get("gracePeriodSeconds")
        if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
            raise bad_request("gracePeriodSeconds must be an integer")
        pre = options.get("preconditions")
        if pre is not None and not isinstance(pre, dict):
            raise bad_request("preconditions must be an object")
        policy = options.get("propagationPolicy")
        if policy is not None and policy not in ("Orphan", "Background", "Foreground"):
            raise invalid(
                "meta.k8s.io",
                "DeleteOptions",
                "",
                [
                    (
                        "FieldValueNotSupported",
                        "propagationPolicy",
                        f'Unsupported value: "{policy}": supported values: "Foreground", '
                        '"Background", "Orphan", "nil"',
                    )
                ],
            )
        return {k: options[k] for k in _DELETE_OPTION_KEYS if options.get(k) is not None}

    @staticmethod
    def _check_preconditions(info: ResourceInfo, obj: JSON, opts: JSON) -> None:
        pre = opts.get("preconditions") or {}
        meta = obj["metadata"]
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise conflict(
                info.group,
                info.resource,
                meta["name"],
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                f"object meta: {meta.get('uid')}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise conflict(
                info.group,
                info.resource,
                meta["name"],
                "Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{meta.get('resourceVersion')}",
            )

    async def delete(
        self,
        info: ResourceInfo,
        namespace: str,
        name: str,
        options: Any,
        user: UserInfo,
        *,
        dry_run: bool = False,
        admit: bool = True,
    ) -> JSON:
        """Returns the wire response: the pod (pods, namespaces) or a Success Status."""
        opts = self._parse_delete_options(options)
        if dry_run:
            opts["dryRun"] = ["All"]
        if info.resource == "pods":
            return to_wire(
                info,
                await self._delete_pod(namespace, name, opts, user, dry_run=dry_run, admit=admit),
            )
        obj = self.get(info, namespace, name)
        self._check_preconditions(info, obj, opts)
        review_opts = {"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1", **opts}
        if admit:
            await self._admit(
                AdmissionRequest(
                    "DELETE",
                    info,
                    name,
                    namespace if info.namespaced else "",
                    user,
                    None,
                    obj,
                    dry_run=dry_run,
                    options=review_opts,
                )
            )
        obj = self.get(info, namespace, name)
        if dry_run:
            return (
                to_wire(info, obj)
                if info.delete_returns_object
                else self._deleted_status(info, obj)
            )
        if info.resource == "namespaces":
            return to_wire(info, self._delete_namespace(obj))
        meta = obj["metadata"]
        if meta.get("finalizers"):
            new = deepcopy(obj)
            new["metadata"].setdefault("deletionTimestamp", rfc3339())
            new["metadata"].setdefault("deletionGracePeriodSeconds", 0)
            new["metadata"] = order_metadata(new["metadata"])
            return to_wire(info, self.store.replace(info.key, new))
        gone = self.store.remove(info.key, namespace if info.namespaced else "", name)
        self.timeline.add(
            tl.DELETION,
            user.username,
            f"{info.resource} {name} deleted",
            resource=info.resource,
            namespace=namespace,
            name=name,
        )
        return (
            to_wire(info, gone) if info.delete_returns_object else self._deleted_status(info, gone)
        )

    @staticmethod
    def _deleted_status(info: ResourceInfo, obj: JSON) -> JSON:
        details: JSON = {"name": obj["metadata"]["name"]}
        if info.group:
            details["group"] = info.group
        details["kind"] = info.resource
        details["uid"] = obj["metadata"].get("uid", "")
        return success_status(details=details)

    def _delete_namespace(self, ns_obj: JSON) -> JSON:
        name = ns_obj["metadata"]["name"]
        for key in {i.key for i in core_resources() if i.namespaced}:
            for obj in list(self.store.iter(key, name)):
                self.store.remove(key, name, obj["metadata"]["name"])
        gone = self.store.remove("namespaces", "", name)
        result = deepcopy(gone)
        result["metadata"]["deletionTimestamp"] = rfc3339()
        result["status"] = {"phase": "Terminating"}
        out: JSON = result
        return out

    async def _delete_pod(
        self,
        namespace: str,
        name: str,
        opts: JSON,
        user: UserInfo,
        *,
        dry_run: bool = False,
        admit: bool = True,
    ) -> JSON:
        for _ in range(_MAX_RETRIES):
            pod = self.get(PODS, namespace, name)
            self._check_preconditions(PODS, pod, opts)
            spec, meta = pod.get("spec", {}), pod["metadata"]
            grace = opts.get("gracePeriodSeconds")
            if grace is None:
                grace = int(spec.get("terminationGracePeriodSeconds", 30))
            grace = max(int(grace), 0)
            phase = (pod.get("status") or {}).get("phase")
            if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
                grace = 0  # the pod strategy deletes unscheduled and terminal pods at once
            review_opts: JSON = {"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}
            for key in _DELETE_OPTION_KEYS:
                if key == "gracePeriodSeconds":
                    review_opts[key] = grace
                elif key in opts:
                    review_opts[key] = opts[key]
            terminating = bool(meta.get("deletionTimestamp"))
            current_grace = meta.get("deletionGracePeriodSeconds")
            if terminating and current_grace is not None and grace >= int(current_grace):
                return pod  # graceful deletion already pending: nothing to do

            def review(old: JSON, review_opts: JSON = review_opts) -> AdmissionRequest:
                return AdmissionRequest(
                    "DELETE",
                    PODS,
                    name,
                    namespace,
                    user,
                    None,
                    old,
                    dry_run=dry_run,
                    options=review_opts,
                )

            if admit:
                await self._admit(review(pod))
                if terminating and grace == 0:
                    await self._admit(review(pod))  # the real server reviews this one twice
            if self.store.get("pods", namespace, name) is not pod:
                continue
            marked = deepcopy(pod)
            mmeta = marked["metadata"]
            mmeta["deletionTimestamp"] = rfc3339(now() + dt.timedelta(seconds=grace))
            if not terminating:
                mmeta["generation"] = int(mmeta.get("generation", 1)) + 1
            mmeta["deletionGracePeriodSeconds"] = grace
            marked["metadata"] = order_metadata(mmeta)
            if dry_run:
                result: JSON = marked
                return result
            marked = self.store.replace("pods", marked)
            if grace > 0 or meta.get("finalizers"):
                self.timeline.add(
                    tl.DELETION,
                    user.username,
                    f"pod {namespace}/{name} Terminating (grace {grace}s)",
                    resource="pods",
                    namespace=namespace,
                    name=name,
                    grace=grace,
                    terminating=True,
                )
                return marked
            if admit:
                await self._admit(review(marked))
            if self.store.get("pods", namespace, name) is None:
                raise not_found("", "pods", name)
            gone = self.store.remove("pods", namespace, name)
            self.timeline.add(
                tl.DELETION,
                user.username,
                f"pod {namespace}/{name} deleted",
                resource="pods",
                namespace=namespace,
                name=name,
                grace=0,
                node=spec.get("nodeName", ""),
            )
            return gone
        raise conflict("", "pods", name)

    # ----------------------------------------------------------------- eviction

    async def evict(
        self,
        namespace: str,
        name: str,
        body: Any,
        user: UserInfo,
        *,
        dry_run: bool = False,
    ) -> JSON:
        """POST pods/<name>/eviction; returns the 201 Status or raises ApiError."""
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be an Eviction object")
        if body.get("kind", "Eviction") != "Eviction" or body.get("apiVersion") not in (
            "policy/v1",
            "policy/v1beta1",
        ):
            raise bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                "expected API version (policy/v1)"
            )
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict) or meta.get("name") != name:
            raise bad_request("name in URL does not match name in Eviction object")
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        delete_options = body.get("deleteOptions")
        opts = self._parse_delete_options(delete_options)
        pod = self.get(PODS, namespace, name)
        eviction: JSON = {
            "kind": "Eviction",
            "apiVersion": "policy/v1",
            "metadata": {"name": name, "namespace": namespace},
        }
        if delete_options is not None:
            eviction["deleteOptions"] = delete_options
        target = f"{namespace}/{name}"
        await self._admit(
            AdmissionRequest(
                "CREATE",
                PODS,
                name,
                namespace,
                user,
                eviction,
                None,
                subresource="eviction",
                dry_run=dry_run,
                options=self._options("CreateOptions", dry_run),
                kind={"group": "policy", "version": "v1", "kind": "Eviction"},
                obj_is_wire=True,
            )
        )
        pod = self.get(PODS, namespace, name)
        self._check_preconditions(PODS, pod, opts)
        try:
            self._check_disruption_budget(pod)
        except ApiError as err:
            self.timeline.add(
                tl.EVICTION,
                user.username,
                f"eviction of {target} blocked: {err.status.get('message')}",
                namespace=namespace,
                name=name,
                allowed=False,
                code=err.code,
            )
            raise
        if dry_run:
            return success_status(201)
        cond = disruption_target(pod, "EvictionByEvictionAPI", "Eviction API: evicting")
        marked = with_condition(pod, cond)
        phase = (pod.get("status") or {}).get("phase")
        if marked is not None and phase not in ("Succeeded", "Failed"):
            self.store.replace("pods", marked)
        self.timeline.add(
            tl.EVICTION,
            user.username,
            f"eviction of {target} allowed",
            namespace=namespace,
            name=name,
            allowed=True,
            code=201,
        )
        await self._delete_pod(namespace, name, opts, user, admit=False)
        return success_status(201)

    def _check_disruption_budget(self, pod: JSON) -> None:
        meta = pod["metadata"]
        status = pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") in (
            "Succeeded",
            "Failed",
            "Pending",
        ):
            return
        namespace = meta["namespace"]
        labels = meta.get("labels") or {}
        pdbs = [
            p
            for p in self.store.iter("poddisruptionbudgets", namespace)
            if isinstance((p.get("spec") or {}).get("selector"), dict)
            and selector_matches(p["spec"]["selector"], labels)
        ]
        if not pdbs:
            return
        if len(pdbs) > 1:
            raise internal_error(
                "This pod has more than one PodDisruptionBudget, which the eviction "
                "subresource does not support."
            )
        pdb = pdbs[0]
        healthy, desired, _expected = pdb_budget(self.store, pdb)
        ready = (pod_condition(pod, "Ready") or {}).get("status") == "True"
        if not ready:
            policy = (pdb.get("spec") or {}).get("unhealthyPodEvictionPolicy", "IfHealthyBudget")
            if policy == "AlwaysAllow" or healthy >= desired:
                return
        if healthy - desired <= 0 or not ready:
            raise ApiError(
                status_failure(
                    429,
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    "TooManyRequests",
                    {
                        "causes": [
                            {
                                "reason": "DisruptionBudget",
                                "message": f"The disruption budget {pdb['metadata']['name']} "
                                "does not allow evicting pods currently",
                            }
                        ]
                    },
                )
            )


def _int_or_percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = int(value[:-1])
        except ValueError:
            return 0
        raw = pct * total / 100
        return math.ceil(raw) if round_up else math.floor(raw)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def pdb_budget(store: Store, pdb: JSON) -> tuple[int, int, int]:
    """(currentHealthy, desiredHealthy, expectedPods) of a PodDisruptionBudget, computed from
    the pods it selects (the simulator has no workload controllers: expected = selected)."""
    spec = pdb.get("spec") or {}
    selector = spec.get("selector")
    namespace = pdb["metadata"]["namespace"]
    expected = healthy = 0
    for pod in store.iter("pods", namespace):
        if not isinstance(selector, dict) or not selector_matches(
            selector, pod["metadata"].get("labels")
        ):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        expected += 1
        if (
            not pod["metadata"].get("deletionTimestamp")
            and (pod_condition(pod, "Ready") or {}).get("status") == "True"
        ):
            healthy += 1
    if spec.get("minAvailable") is not None:
        desired = _int_or_percent(spec["minAvailable"], expected, True)
    elif spec.get("maxUnavailable") is not None:
        desired = max(expected - _int_or_percent(spec["maxUnavailable"], expected, True), 0)
    else:
        desired = expected
    return healthy, desired, expected


def core_resources() -> list[ResourceInfo]:
    from .resources import RESOURCES

    return list(RESOURCES.values())
