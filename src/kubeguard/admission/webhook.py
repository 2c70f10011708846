"""A Webhook: the handlers served on one path, turning request bodies into response bodies.

It is transport-agnostic (the ASGI app in `kubeguard.server` does HTTP), and it owns
everything between the bytes: decoding, dispatch, failure policy, metrics, the decision log.
"""

from __future__ import annotations

import base64
import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from kubeguard.admission.handler import (
    Handler,
    MultiMutatingHandler,
    MultiValidatingHandler,
    Response,
)
from kubeguard.admission.review import (
    AdmissionResponse,
    Request,
    ReviewDecodeError,
    ReviewDecoder,
    Status,
    encode_response,
)
from kubeguard.log import log_fields
from kubeguard.metrics import AdmissionMetrics, LabelledChildren

log = logging.getLogger("kubeguard.admission")

WebhookKind = Literal["validating", "mutating"]
FailurePolicy = Literal["Fail", "Ignore"]


@dataclass(frozen=True)
class Rule:
    """One `rules` entry of a webhook configuration."""

    operations: tuple[str, ...]
    resources: tuple[str, ...]
    api_groups: tuple[str, ...] = ("",)
    api_versions: tuple[str, ...] = ("v1",)
    scope: str = "*"


@dataclass(frozen=True)
class WebhookEntry:
    """One entry of a (Validating|Mutating)WebhookConfiguration that calls a handler's path.

    A handler may need several entries on one path, e.g. to give pod DELETEs and evictions
    different failure policies or match conditions.
    """

    name: str  # DNS-style, e.g. "pods.pod-eviction-protection.kubeguard.io"
    rules: tuple[Rule, ...]
    failure_policy: FailurePolicy = "Fail"
    match_conditions: tuple[tuple[str, str], ...] = ()  # (name, CEL expression)
    object_selector: dict[str, object] | None = None
    namespace_selector: dict[str, object] | None = None
    timeout_seconds: int = 5
    side_effects: str = "None"
    reinvocation_policy: str | None = None  # mutating only


@dataclass(frozen=True)
class HandlerSpec:
    """What a plugin registers: a handler on a path, and how the API server should call it.

    `failure_policy` decides the answer when the handler itself raises: "Fail" denies with a
    500-coded message, "Ignore" allows with a warning. It is independent of the API server's
    failurePolicy in `entries`, which covers kubeguard being unreachable.
    """

    name: str
    path: str
    kind: WebhookKind
    handler: Handler
    failure_policy: FailurePolicy = "Fail"
    entries: tuple[WebhookEntry, ...] = ()
    ready: Callable[[], bool] | None = None
    # The msgspec Struct the handler reads `object`/`oldObject` as (`Request.object_as`). When
    # every handler on a path names the same one, reviews are decoded in one pass into it.
    object_view: type[Any] | None = None


class _Instrumented:
    """Wraps one handler: times it, counts its decision and applies its failure policy."""

    def __init__(self, webhook: str, spec: HandlerSpec, metrics: AdmissionMetrics) -> None:
        self.spec = spec
        self.inner = spec.handler
        self._count = LabelledChildren(metrics.requests)
        self._timer = metrics.duration.labels(webhook, spec.name)
        self._webhook = webhook

    async def handle(self, request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await self.inner.handle(request)
        except Exception as exc:  # a handler bug must never crash the server
            log.exception(
                "admission handler failed",
                extra={
                    "uid": request.uid,
                    "handler": self.spec.name,
                    "request": request.describe(),
                },
            )
            message = f"kubeguard handler {self.spec.name} failed: {type(exc).__name__}: {exc}"
            if self.spec.failure_policy == "Ignore":
                response = Response(
                    allowed=True,
                    code=500,
                    message=message,
                    reason="handler-error",
                    warnings=(message + " (failure policy Ignore: allowed)",),
                )
            else:
                response = Response(
                    allowed=False, code=500, message=message, reason="handler-error"
                )
        self._timer.observe(time.perf_counter() - start)
        self._count(self._webhook, self.spec.name, response.decision).inc()
        return response

    def __repr__(self) -> str:
        return self.spec.name


@dataclass
class Webhook:
    """All handlers registered on one path, composed by kind."""

    path: str
    kind: WebhookKind
    specs: Sequence[HandlerSpec]
    metrics: AdmissionMetrics
    handler: Handler = field(init=False)
    decoder: ReviewDecoder = field(init=False)

    def __post_init__(self) -> None:
        if not self.specs:
            raise ValueError(f"webhook {self.path} has no handlers")
        kinds = {s.kind for s in self.specs}
        if kinds != {self.kind}:
            raise ValueError(f"path {self.path} mixes validating and mutating handlers")
        views = {s.object_view for s in self.specs}
        self.decoder = ReviewDecoder(views.pop() if len(views) == 1 else None)
        wrapped = [_Instrumented(self.path, s, self.metrics) for s in self.specs]
        self.handler = (
            MultiMutatingHandler(wrapped)
            if self.kind == "mutating"
            else MultiValidatingHandler(wrapped)
        )

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def is_ready(self) -> bool:
        return all(s.ready is None or s.ready() for s in self.specs)

    async def review(self, body: bytes) -> tuple[int, bytes]:
        """Decide one AdmissionReview body. Returns (HTTP status, response body).

        A body that is not an AdmissionReview gets 400 with a plain-text reason; every decided
        request, including handler failures, gets 200 with an AdmissionReview.
        """
        try:
            request = self.decoder.decode(body)
        except ReviewDecodeError as exc:
            self.metrics.bad_requests.labels(self.path, "400").inc()
            return 400, str(exc).encode()
        response = await self.handler.handle(request)
        _log_decision(self.path, request, response)
        return 200, encode_response(to_wire(request.uid, response))


def to_wire(uid: str, response: Response) -> AdmissionResponse:
    """Convert a Response into the AdmissionResponse the API server reads."""
    status: Status | None = None
    if not response.allowed or response.message:
        status = Status(
            code=response.code,
            message=response.message,
            reason="" if response.allowed else _status_reason(response.code),
        )
    patch: bytes | None = None
    patch_type: str | None = None
    if response.patch:
        patch = msgspec.json.encode(list(response.patch))
        patch_type = "JSONPatch"
    return AdmissionResponse(
        uid=uid,
        allowed=response.allowed,
        status=status,
        patch=patch,
        patch_type=patch_type,
        warnings=list(response.warnings) or None,
        audit_annotations=dict(response.audit_annotations) or None,
    )


def _status_reason(code: int) -> str:
    # The API server does not forward a webhook's reason (see fixtures/responses), but audit
    # logs record it; keep the standard metav1.StatusReason for the code.
    return {
        400: "BadRequest",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        422: "Invalid",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
    }.get(code, "")


def _log_decision(path: str, request: Request, response: Response) -> None:
    """One line per decision: at info for denials, patches, errors and allowed requests that
    carry a message or warnings (what an operator looks for); at debug for plain allows, the
    bulk of the traffic (`--log-level debug` logs every decision). Written with `log_fields`,
    which skips the LogRecord machinery when it can (a denial storm logs a line per request)."""
    decision = response.decision
    plain = decision == "allowed" and not response.message and not response.warnings
    level = logging.DEBUG if plain else logging.INFO
    if not log.isEnabledFor(level):  # before building the fields: plain allows at info
        return
    raw = request.raw
    log_fields(
        log,
        level,
        "admission decision",
        {
            "uid": raw.uid,
            "path": path,
            "operation": raw.operation,
            "resource": raw.resource.resource
            + (f"/{raw.sub_resource}" if raw.sub_resource else ""),
            "namespace": raw.namespace,
            # "name" and "message" are reserved LogRecord attributes (logging raises KeyError)
            "object_name": raw.name,
            "user": raw.user_info.username,
            "decision": decision,
            "reason": response.reason,
            "status_message": response.message,
            "dry_run": raw.dry_run,
        },
    )


def decode_patch(b64: str) -> list[dict[str, object]]:
    """Decode the base64 `patch` of an AdmissionResponse (for tests and tools)."""
    decoded: list[dict[str, object]] = msgspec.json.decode(base64.b64decode(b64))
    return decoded


def entry_to_wire(
    entry: WebhookEntry, kind: WebhookKind, client_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One `webhooks[]` item of a (Validating|Mutating)WebhookConfiguration.

    Without `client_config` only the plugin-defined fields are rendered (what the Helm chart's
    generated data holds); with it, the item is complete.
    """
    hook: dict[str, Any] = {
        "name": entry.name,
        "failurePolicy": entry.failure_policy,
        "rules": [
            {
                "apiGroups": list(r.api_groups),
                "apiVersions": list(r.api_versions),
                "operations": list(r.operations),
                "resources": list(r.resources),
                "scope": r.scope,
            }
            for r in entry.rules
        ],
        "sideEffects": entry.side_effects,
        "timeoutSeconds": entry.timeout_seconds,
    }
    if entry.match_conditions:
        hook["matchConditions"] = [
            {"name": name, "expression": expr} for name, expr in entry.match_conditions
        ]
    if entry.object_selector:
        hook["objectSelector"] = copy.deepcopy(entry.object_selector)
    if entry.namespace_selector:
        hook["namespaceSelector"] = copy.deepcopy(entry.namespace_selector)
    if kind == "mutating":
        hook["reinvocationPolicy"] = entry.reinvocation_policy or "Never"
    if client_config is not None:
        hook["clientConfig"] = copy.deepcopy(client_config)
        hook["admissionReviewVersions"] = ["v1"]
        hook["matchPolicy"] = "Equivalent"
    return hook


def url_client_config(base_url: str, path: str, ca_pem: bytes) -> dict[str, Any]:
    """`clientConfig` calling `path` of a kubeguard reached at `base_url` by URL."""
    return {"url": base_url.rstrip("/") + path, "caBundle": base64.b64encode(ca_pem).decode()}


def configuration(kind: WebhookKind, name: str, webhooks: list[dict[str, Any]]) -> dict[str, Any]:
    """A (Validating|Mutating)WebhookConfiguration object holding `webhooks`."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": f"{kind.capitalize()}WebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "kubeguard"}},
        "webhooks": webhooks,
    }


def url_configurations(
    specs: Sequence[HandlerSpec], base_url: str, ca_pem: bytes, *, name: str = "kubeguard"
) -> list[dict[str, Any]]:
    """Webhook configurations that call a kubeguard reached at `base_url` (running outside the
    cluster, or in tests and the demo): one Validating and one Mutating configuration named
    `<name>-validating` / `<name>-mutating`, only those that have entries."""
    hooks: dict[WebhookKind, list[dict[str, Any]]] = {"validating": [], "mutating": []}
    for spec in specs:
        client = url_client_config(base_url, spec.path, ca_pem)
        hooks[spec.kind].extend(entry_to_wire(e, spec.kind, client) for e in spec.entries)
    return [configuration(kind, f"{name}-{kind}", items) for kind, items in hooks.items() if items]
