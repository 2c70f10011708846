"""The callback API of seed 000, served on the TLS port next to `/validate`:

    POST /callback/disable-interception
        {"status": "success", "message": "Interception disabled successfully"}
    POST /callback/enable-interception
        {"status": "success", "message": "Interception enabled successfully"}
    GET  /callback/status
        {"status": "success", "data": {"intercepting": true, "notReadyNodes": [...], ...}}

Errors are `{"status": "error", "message": "..."}`. The toggles require a bearer token that a
TokenReview authenticates and a SubjectAccessReview authorizes (by default verb `update` on
resource `interception` in API group `kubeguard.io`, in kubeguard's namespace), like
kube-rbac-proxy: 401 without a valid token, 403 when not allowed, 503 when the reviews cannot
be made. `--callback-auth=none` turns that off (accepted only on 127.0.0.1 or `--local`).
The status is readable without a token, as in the seed. Every toggle is logged with the user.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import msgspec

from kubeguard.config import Settings
from kubeguard.kube.auth import Authenticator, AuthUnavailable
from kubeguard.kube.state import StateDecodeError
from kubeguard.protection.state import ProtectionState
from kubeguard.runtime import HttpRequest, HttpResponse, Runtime

log = logging.getLogger("kubeguard.protection.callback")

PREFIX = "/callback"
DISABLE_PATH = f"{PREFIX}/disable-interception"
ENABLE_PATH = f"{PREFIX}/enable-interception"
STATUS_PATH = f"{PREFIX}/status"


class Controls(Protocol):
    """What the callback API drives (a `Protector`)."""

    def status(self) -> dict[str, Any]: ...

    async def disable(self, user: str) -> ProtectionState: ...

    async def enable(self, user: str) -> ProtectionState: ...


def _json(status: int, body: dict[str, Any]) -> HttpResponse:
    return HttpResponse(status, msgspec.json.encode(body))


def error(status: int, message: str) -> HttpResponse:
    headers: tuple[tuple[str, str], ...] = ()
    if status == 401:
        headers = (("www-authenticate", 'Bearer realm="kubeguard"'),)
    return HttpResponse(
        status, msgspec.json.encode({"status": "error", "message": message}), headers=headers
    )


class CallbackAPI:
    def __init__(self, controls: Controls, settings: Settings, auth: Authenticator | None) -> None:
        self.controls = controls
        self.settings = settings
        self.auth = auth

    def register(self, runtime: Runtime) -> None:
        runtime.add_route(DISABLE_PATH, {"POST"}, self.disable)
        runtime.add_route(ENABLE_PATH, {"POST"}, self.enable)
        runtime.add_route(STATUS_PATH, {"GET"}, self.status)

    async def _authorize(
        self, request: HttpRequest, action: str
    ) -> tuple[str, HttpResponse | None]:
        """(username, None) when allowed, else ("", the error response)."""
        if self.settings.callback_auth == "none":
            return f"unauthenticated@{request.client or 'unknown'}", None
        if self.auth is None:
            return "", error(
                503, "callback authentication needs Kubernetes API access, which is not configured"
            )
        token = request.bearer_token
        if token is None:
            return "", error(
                401,
                "unauthorized: send a bearer token (Authorization: Bearer <token>) of a user "
                f"allowed to {self.settings.callback_auth_verb} "
                f"{self.settings.callback_auth_resource}.{self.settings.callback_auth_group}",
            )
        try:
            user = await self.auth.authenticate(token)
            if user is None:
                log.warning(
                    "callback rejected: invalid token",
                    extra={"action": action, "client": request.client},
                )
                return "", error(401, "unauthorized: the bearer token is not valid")
            ok, reason = await self.auth.authorize(
                user,
                self.settings.callback_auth_verb,
                self.settings.callback_auth_group,
                self.settings.callback_auth_resource,
                namespace=self.settings.namespace,
            )
        except AuthUnavailable as exc:
            log.error("callback auth unavailable: %s", exc, extra={"action": action})
            return "", error(503, f"cannot verify the token right now: {exc}")
        if not ok:
            log.warning(
                "callback forbidden",
                extra={"action": action, "user": user.username, "reason": reason},
            )
            return "", error(
                403,
                f"forbidden: {reason or 'not allowed'} (needs verb "
                f"{self.settings.callback_auth_verb!r} on resource "
                f"{self.settings.callback_auth_resource!r} in API group "
                f"{self.settings.callback_auth_group!r}, namespace {self.settings.namespace!r})",
            )
        return user.username, None

    async def _toggle(self, request: HttpRequest, action: str) -> HttpResponse:
        user, problem = await self._authorize(request, action)
        if problem is not None:
            return problem
        try:
            if action == "disable":
                await self.controls.disable(user)
            else:
                await self.controls.enable(user)
        except StateDecodeError as exc:
            return error(500, f"interception could not be {action}d: {exc}")
        except Exception as exc:
            log.exception("callback %s failed", action, extra={"user": user})
            return error(503, f"interception could not be {action}d: {type(exc).__name__}: {exc}")
        log.warning(
            "interception %sd through the callback API",
            action,
            extra={"user": user, "client": request.client, "action": action},
        )
        return _json(200, {"status": "success", "message": f"Interception {action}d successfully"})

    async def disable(self, request: HttpRequest) -> HttpResponse:
        return await self._toggle(request, "disable")

    async def enable(self, request: HttpRequest) -> HttpResponse:
        return await self._toggle(request, "enable")

    async def status(self, _request: HttpRequest) -> HttpResponse:
        try:
            data = self.controls.status()
        except Exception as exc:
            log.exception("status failed")
            return error(500, f"status unavailable: {type(exc).__name__}: {exc}")
        return _json(200, {"status": "success", "data": data})
