"""The Handler protocol, admission responses and their helpers, and handler composition.

Modelled on controller-runtime's `pkg/webhook/admission`: one `Handler` interface, the
`allowed` / `denied` / `patched` / `errored` helpers, and `MultiValidatingHandler` /
`MultiMutatingHandler` composition (first denial wins; patches are concatenated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from kubeguard.admission.review import Request

JSONPatchOp = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """A handler's decision, before it is wrapped into an AdmissionReview.

    `reason` is a short machine-readable cause (e.g. ``node-not-ready``) used as a metrics
    label and in the decision log line; `message` is the human text sent to the API server.
    """

    allowed: bool
    code: int = 200
    message: str = ""
    reason: str = ""
    patch: tuple[JSONPatchOp, ...] = ()
    warnings: tuple[str, ...] = ()
    audit_annotations: tuple[tuple[str, str], ...] = ()

    @property
    def decision(self) -> str:
        if self.code >= 500:
            return "error"
        if not self.allowed:
            return "denied"
        return "patched" if self.patch else "allowed"

    def with_warnings(self, *warnings: str) -> Response:
        return dataclasses.replace(self, warnings=self.warnings + tuple(warnings))

    def with_audit(self, key: str, value: str) -> Response:
        return dataclasses.replace(self, audit_annotations=(*self.audit_annotations, (key, value)))


def allowed(message: str = "", *, reason: str = "") -> Response:
    return Response(allowed=True, code=200, message=message, reason=reason)


def denied(message: str, *, code: int = 403, reason: str = "") -> Response:
    """Deny with an HTTP code (403 by default; 429 makes `kubectl drain` retry)."""
    if code < 400:
        raise ValueError(f"a denial needs an HTTP error code, got {code}")
    return Response(allowed=False, code=code, message=message, reason=reason or "denied")


def patched(ops: Sequence[JSONPatchOp], message: str = "", *, reason: str = "") -> Response:
    """Allow with an RFC 6902 JSON Patch. An empty patch is a plain allow."""
    return Response(allowed=True, code=200, message=message, reason=reason, patch=tuple(ops))


def errored(code: int, error: BaseException | str, *, reason: str = "error") -> Response:
    """Refuse because the handler could not decide (bad object, internal failure)."""
    return Response(allowed=False, code=code, message=str(error), reason=reason)


@runtime_checkable
class Handler(Protocol):
    """Decides one admission request. Must not block the event loop."""

    async def handle(self, request: Request) -> Response: ...


class MultiValidatingHandler:
    """Runs validators in order; the first denial wins. Warnings and audit annotations of the
    handlers that allowed are kept."""

    def __init__(self, handlers: Sequence[Handler]) -> None:
        self.handlers = tuple(handlers)

    async def handle(self, request: Request) -> Response:
        acc = _Accumulator()
        for handler in self.handlers:
            response = await handler.handle(request)
            if not response.allowed:
                return acc.denial(response)
            if len(self.handlers) == 1 and not response.patch:
                return response
            if response.patch:
                return errored(500, f"validating handler {handler!r} returned a patch")
            acc.add(response)
        return acc.result()


class MultiMutatingHandler:
    """Runs mutators in order; the first denial wins, otherwise patches are concatenated.

    Like controller-runtime, each mutator sees the original object: mutators on one path must
    touch disjoint fields.
    """

    def __init__(self, handlers: Sequence[Handler]) -> None:
        self.handlers = tuple(handlers)

    async def handle(self, request: Request) -> Response:
        if len(self.handlers) == 1:
            return await self.handlers[0].handle(request)
        acc = _Accumulator()
        for handler in self.handlers:
            response = await handler.handle(request)
            if not response.allowed:
                return acc.denial(response)
            acc.add(response)
        return acc.result()


class _Accumulator:
    """What the allowing handlers of a composition said, merged into one response."""

    def __init__(self) -> None:
        self.ops: list[JSONPatchOp] = []
        self.warnings: list[str] = []
        self.audit: list[tuple[str, str]] = []
        self.messages: list[str] = []
        self.failed: Response | None = None  # a handler error its failure policy allowed

    def add(self, response: Response) -> None:
        self.ops.extend(response.patch)
        self.warnings.extend(response.warnings)
        self.audit.extend(response.audit_annotations)
        if response.message:
            self.messages.append(response.message)
        if self.failed is None and response.code >= 500:
            self.failed = response

    def denial(self, response: Response) -> Response:
        if not self.warnings and not self.audit:
            return response
        return dataclasses.replace(
            response,
            warnings=(*self.warnings, *response.warnings),
            audit_annotations=(*self.audit, *response.audit_annotations),
        )

    def result(self) -> Response:
        return Response(
            allowed=True,
            code=self.failed.code if self.failed else 200,
            reason=self.failed.reason if self.failed else "",
            patch=tuple(self.ops),
            warnings=tuple(self.warnings),
            message="; ".join(self.messages),
            audit_annotations=tuple(self.audit),
        )
