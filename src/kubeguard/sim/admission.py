"""Dynamic admission: calling validating and mutating webhooks as kube-apiserver does.

The dispatcher reads the ValidatingWebhookConfiguration / MutatingWebhookConfiguration objects
from the store on every request, matches `rules`, `namespaceSelector`, `objectSelector` and
`matchConditions` (CEL, evaluated with `celpy`), sends an `admission.k8s.io/v1` AdmissionReview
over HTTPS verified against the `caBundle` to the URL with `?timeout=<n>s` appended, applies
mutating webhooks' JSON patches (mutating first, in order; validating ones concurrently) and
turns denials and failures into the real `Status` errors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import msgspec

from . import timeline as tl
from .auth import UserInfo
from .patch import PatchError, apply_json_patch
from .resources import ResourceInfo, from_wire, to_wire
from .store import Store, selector_matches
from .util import JSON, ApiError, internal_error, new_uid, status_failure

VALIDATING = "validatingwebhookconfigurations"
MUTATING = "mutatingwebhookconfigurations"


@dataclass
class AdmissionRequest:
    operation: str  # CREATE | UPDATE | DELETE | CONNECT
    info: ResourceInfo  # the resource (pods for pods/status and pods/eviction)
    name: str
    namespace: str
    user: UserInfo
    obj: JSON | None  # storage form (no kind/apiVersion)
    old_obj: JSON | None
    subresource: str = ""
    dry_run: bool = False
    options: JSON = field(default_factory=dict)
    kind: JSON | None = None  # overrides info.gvk() (Eviction)
    obj_is_wire: bool = False  # obj already carries kind/apiVersion (Eviction)

    def resource_path(self) -> str:
        return (
            f"{self.info.resource}/{self.subresource}" if self.subresource else (self.info.resource)
        )


@dataclass
class WebhookCallRecord:
    webhook: str
    configuration: str
    mutating: bool
    request: JSON
    allowed: bool | None
    code: int | None
    message: str
    error: str
    duration: float


class _Cel:
    """matchConditions evaluation with cel-python (`celpy`); compiled programs are cached."""

    def __init__(self) -> None:
        self._programs: dict[str, Any] = {}
        try:
            import celpy

            self._celpy: Any = celpy
            self._env: Any = celpy.Environment()
        except ImportError:  # pragma: no cover - cel-python is a dependency
            self._celpy = None

    @property
    def available(self) -> bool:
        return self._celpy is not None

    def evaluate(self, expression: str, variables: JSON) -> bool:
        program = self._programs.get(expression)
        if program is None:
            program = self._env.program(self._env.compile(expression))
            self._programs[expression] = program
        activation = {k: self._celpy.json_to_cel(v) for k, v in variables.items()}
        result = program.evaluate(activation)
        if isinstance(result, Exception):
            raise ValueError(str(result))
        if not isinstance(result, bool) and type(result).__name__ != "BoolType":
            raise ValueError(f"expression {expression!r} did not evaluate to a bool")
        return bool(result)


def _rule_matches(rule: JSON, req: AdmissionRequest) -> bool:
    operations = rule.get("operations") or []
    if "*" not in operations and req.operation not in operations:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and req.info.group not in groups:
        return False
    versions = rule.get("apiVersions") or []
    if "*" not in versions and req.info.version not in versions:
        return False
    scope = rule.get("scope") or "*"
    if scope == "Cluster" and req.info.namespaced:
        return False
    if scope == "Namespaced" and not req.info.namespaced:
        return False
    resource, sub = req.info.resource, req.subresource
    for pattern in rule.get("resources") or []:
        p_res, _, p_sub = str(pattern).partition("/")
        if p_res not in ("*", resource):
            continue
        if (p_sub == "" and sub == "") or p_sub == "*" or (p_sub and p_sub == sub):
            return True
    return False


class WebhookDispatcher:
    def __init__(
        self,
        store: Store,
        timeline: tl.Timeline,
        service_urls: dict[str, str] | None = None,
        on_call: Callable[[WebhookCallRecord], None] | None = None,
    ) -> None:
        self.store = store
        self.timeline = timeline
        self.service_urls = dict(service_urls or {})
        self.on_call = on_call
        self._clients: dict[tuple[str, str], httpx2.AsyncClient] = {}
        self._cel = _Cel()

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()

    # ----------------------------------------------------------------- matching

    def _hooks(self, resource: str) -> list[tuple[str, JSON]]:
        out: list[tuple[str, JSON]] = []
        for config in self.store.iter(resource):
            for hook in config.get("webhooks") or []:
                if isinstance(hook, dict):
                    out.append((config["metadata"]["name"], hook))
        return out

    def _namespace_labels(self, req: AdmissionRequest) -> dict[str, str] | None:
        if req.info.resource == "namespaces" and not req.subresource:
            obj = req.obj or req.old_obj or {}
            labels: dict[str, str] = obj.get("metadata", {}).get("labels") or {}
            return labels
        if not req.info.namespaced:
            return None
        ns = self.store.get("namespaces", "", req.namespace)
        return (ns or {}).get("metadata", {}).get("labels") or {}

    def _matches(self, hook: JSON, req: AdmissionRequest) -> bool:
        if not any(_rule_matches(r, req) for r in hook.get("rules") or [] if isinstance(r, dict)):
            return False
        ns_labels = self._namespace_labels(req)
        if ns_labels is not None and not selector_matches(hook.get("namespaceSelector"), ns_labels):
            return False
        selector = hook.get("objectSelector")
        if selector:
            if req.kind is not None:  # subresource objects (Eviction) carry no pod labels
                return selector_matches(selector, {})
            labels_new = ((req.obj or {}).get("metadata") or {}).get("labels")
            labels_old = ((req.old_obj or {}).get("metadata") or {}).get("labels")
            if not (
                (req.obj is not None and selector_matches(selector, labels_new))
                or (req.old_obj is not None and selector_matches(selector, labels_old))
            ):
                return False
        return True

    def _conditions_pass(self, name: str, hook: JSON, review_request: JSON) -> bool:
        """Evaluate matchConditions: False skips the webhook; errors follow failurePolicy."""
        conditions = hook.get("matchConditions") or []
        if not conditions or not self._cel.available:
            return True
        variables = {
            "object": review_request.get("object"),
            "oldObject": review_request.get("oldObject"),
            "request": review_request,
        }
        for cond in conditions:
            expr = str(cond.get("expression", "")) if isinstance(cond, dict) else ""
            try:
                if not self._cel.evaluate(expr, variables):
                    return False
            except Exception as exc:
                if hook.get("failurePolicy", "Fail") == "Ignore":
                    return False
                raise internal_error(
                    f'failed calling webhook "{name}": failed to evaluate match condition '
                    f'"{cond.get("name", "")}": {exc}'
                ) from None
        return True

    # ----------------------------------------------------------------- review

    def _review_request(self, req: AdmissionRequest) -> JSON:
        kind = req.kind or req.info.gvk()
        out: JSON = {"uid": new_uid(), "kind": kind, "resource": req.info.gvr()}
        if req.subresource:
            out["subResource"] = req.subresource
        out["requestKind"] = kind
        out["requestResource"] = req.info.gvr()
        if req.subresource:
            out["requestSubResource"] = req.subresource
        if req.name:
            out["name"] = req.name
        if req.namespace:
            out["namespace"] = req.namespace
        out["operation"] = req.operation
        out["userInfo"] = req.user.to_json()

        def wire(obj: JSON | None) -> JSON | None:
            if obj is None:
                return None
            return obj if req.obj_is_wire else to_wire(req.info, obj)

        out["object"] = wire(req.obj)
        out["oldObject"] = wire(req.old_obj)
        out["dryRun"] = req.dry_run
        out["options"] = req.options
        return out

    def _url(self, hook: JSON) -> tuple[str, str | None]:
        """(URL with ?timeout appended, TLS server name override for service references)."""
        cc = hook.get("clientConfig") or {}
        server_name: str | None = None
        if cc.get("url"):
            url = str(cc["url"])
        else:
            svc = cc.get("service") or {}
            ns, name = svc.get("namespace", ""), svc.get("name", "")
            port = int(svc.get("port", 443))
            base = self.service_urls.get(f"{ns}/{name}:{port}") or self.service_urls.get(
                f"{ns}/{name}"
            )
            if base is None:
                raise RuntimeError(
                    f'service "{ns}/{name}" has no URL in the simulator\'s service map'
                )
            url = base.rstrip("/") + str(svc.get("path") or "")
            server_name = f"{name}.{ns}.svc"
        timeout = int(hook.get("timeoutSeconds", 10))
        url += ("&" if "?" in url else "?") + f"timeout={timeout}s"
        return url, server_name

    def _client(self, url: str, ca_bundle: str) -> httpx2.AsyncClient:
        key = (url.split("?", 1)[0], ca_bundle)
        client = self._clients.get(key)
        if client is None:
            ctx = ssl.create_default_context()
            if ca_bundle:
                try:
                    pem = base64.b64decode(ca_bundle).decode()
                except (binascii.Error, UnicodeDecodeError):
                    raise RuntimeError("clientConfig.caBundle is not base64 PEM") from None
                ctx = ssl.create_default_context(cadata=pem)
            client = httpx2.AsyncClient(verify=ctx, http2=False)
            self._clients[key] = client
        return client

    async def _call(self, config: str, hook: JSON, request: JSON, mutating: bool) -> JSON:
        """Send one review; returns the `response` dict or raises RuntimeError describing
        why the call failed (a transport error, a non-200 answer or a malformed review)."""
        url, server_name = self._url(hook)
        ca_bundle = str((hook.get("clientConfig") or {}).get("caBundle") or "")
        client = self._client(url, ca_bundle)
        timeout = float(hook.get("timeoutSeconds", 10))
        body = msgspec.json.encode(
            {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request}
        )
        extensions = {"sni_hostname": server_name} if server_name else None
        try:
            resp = await client.post(
                url,
                content=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=timeout,
                extensions=extensions,
            )
        except httpx2.TimeoutException:
            raise RuntimeError(
                f'failed to call webhook: Post "{url}": context deadline exceeded'
            ) from None
        except httpx2.HTTPError as exc:
            raise RuntimeError(f'failed to call webhook: Post "{url}": {exc}') from None
        if resp.status_code != 200:
            raise RuntimeError(
                f"failed to call webhook: an error on the server ({resp.text[:200]!r}) has "
                f"prevented the request from succeeding (status {resp.status_code})"
            )
        try:
            review = msgspec.json.decode(resp.content)
        except msgspec.DecodeError as exc:
            raise RuntimeError(f"failed to call webhook: invalid JSON in response: {exc}") from None
        response = review.get("response") if isinstance(review, dict) else None
        if not isinstance(response, dict):
            raise RuntimeError("failed to call webhook: response is not an AdmissionReview")
        if review.get("apiVersion") != "admission.k8s.io/v1" or review.get("kind") != (
            "AdmissionReview"
        ):
            raise RuntimeError(
                "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got "
                f"{review.get('apiVersion')}, Kind={review.get('kind')}"
            )
        if response.get("uid") != request["uid"]:
            raise RuntimeError(
                f'expected response.uid="{request["uid"]}", got "{response.get("uid")}"'
            )
        if not isinstance(response.get("allowed"), bool):
            raise RuntimeError("webhook response is missing the 'allowed' field")
        return response

    # ----------------------------------------------------------------- entry point

    async def admit(self, req: AdmissionRequest) -> JSON | None:
        """Run mutating then validating webhooks; returns the (possibly mutated) object in
        storage form, or raises ApiError with the status the client must receive."""
        obj = req.obj
        for config, hook in self._hooks(MUTATING):
            if not self._matches(hook, req):
                continue
            req.obj = obj
            review = self._review_request(req)
            if not self._conditions_pass(hook.get("name", ""), hook, review):
                continue
            response = await self._invoke(config, hook, review, True)
            if response is None:
                continue
            patch = response.get("patch")
            if patch and obj is not None:
                obj = self._apply_patch(hook.get("name", ""), req, obj, response, patch)
        req.obj = obj
        matching: list[tuple[str, JSON, JSON]] = []
        for config, hook in self._hooks(VALIDATING):
            if not self._matches(hook, req):
                continue
            review = self._review_request(req)
            if self._conditions_pass(hook.get("name", ""), hook, review):
                matching.append((config, hook, review))
        if matching:
            results = await asyncio.gather(
                *(self._invoke(c, h, r, False) for c, h, r in matching),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return obj

    def _apply_patch(
        self, name: str, req: AdmissionRequest, obj: JSON, response: JSON, patch: Any
    ) -> JSON:
        if response.get("patchType") not in (None, "JSONPatch"):
            raise internal_error(
                f'failed calling webhook "{name}": unsupported patch type '
                f"{response.get('patchType')!r}"
            )
        try:
            ops = msgspec.json.decode(base64.b64decode(str(patch)))
            wire = obj if req.obj_is_wire else to_wire(req.info, obj)
            patched = apply_json_patch(wire, ops)
        except (PatchError, msgspec.DecodeError, binascii.Error, ValueError) as exc:
            raise internal_error(f'failed calling webhook "{name}": JSON Patch: {exc}') from None
        if not isinstance(patched, dict):
            raise internal_error(f'failed calling webhook "{name}": patch result is not an object')
        result: JSON = patched if req.obj_is_wire else from_wire(req.info, patched)
        return result

    async def _invoke(self, config: str, hook: JSON, review: JSON, mutating: bool) -> JSON | None:
        """Call one webhook. Returns its response when allowed, None when a failure was
        ignored (failurePolicy Ignore); raises ApiError on denial or on failure with Fail."""
        name = str(hook.get("name", ""))
        started = time.monotonic()
        response: JSON | None = None
        error = ""
        try:
            response = await self._call(config, hook, review, mutating)
        except RuntimeError as exc:
            error = str(exc)
        duration = time.monotonic() - started
        allowed = response.get("allowed") if response else None
        result = (response or {}).get("status") or {}
        code: int | None = None
        message = ""
        if response is not None and not allowed:
            code = int(result.get("code") or 403)
            message = str(result.get("message") or "")
        self._record(config, name, mutating, review, allowed, code, message, error, duration)
        if error:
            if hook.get("failurePolicy", "Fail") == "Ignore":
                return None
            raise internal_error(f'failed calling webhook "{name}": {error}')
        assert response is not None
        if not allowed:
            denied = f'admission webhook "{name}" denied the request'
            text = f"{denied}: {message}" if message else f"{denied} without explanation"
            details = result.get("details") if isinstance(result.get("details"), dict) else None
            raise ApiError(status_failure(code or 403, text, result.get("reason") or None, details))
        return response

    def _record(
        self,
        config: str,
        name: str,
        mutating: bool,
        review: JSON,
        allowed: bool | None,
        code: int | None,
        message: str,
        error: str,
        duration: float,
    ) -> None:
        record = WebhookCallRecord(
            name, config, mutating, review, allowed, code, message, error, duration
        )
        if self.on_call is not None:
            self.on_call(record)
        res = review["resource"]["resource"]
        if review.get("subResource"):
            res += "/" + review["subResource"]
        target = f"{review.get('namespace', '')}/{review.get('name', '')}".lstrip("/")
        if error:
            outcome = f"ERROR ({error})"
        elif allowed:
            outcome = "allowed"
        else:
            outcome = f"DENIED {code} {message!r}"
        self.timeline.add(
            tl.WEBHOOK,
            review["userInfo"]["username"],
            f'"{name}" {review["operation"]} {res} {target}'
            f"{' (dryRun)' if review['dryRun'] else ''} -> {outcome}",
            webhook=name,
            configuration=config,
            mutating=mutating,
            uid=review["uid"],
            operation=review["operation"],
            resource=review["resource"]["resource"],
            subresource=review.get("subResource", ""),
            namespace=review.get("namespace", ""),
            name=review.get("name", ""),
            allowed=allowed,
            code=code,
            message=message,
            error=error,
            dry_run=review["dryRun"],
            duration=duration,
        )
