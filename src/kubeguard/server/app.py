"""The raw ASGI application: admission paths, health, metrics and the plugins' extra routes.

No framework: the admission hot path is a dict lookup on the URL path, two header checks, a body
read and `Webhook.review`. Routing uses the path only, because kube-apiserver appends
`?timeout=5s` (the webhook's timeoutSeconds) to the configured URL; a server that routed on the
raw URL would answer 404, which with failurePolicy Fail silently denies everything.

Everything HTTP-shaped is decided here (405/413/415/404, like controller-runtime's webhook
server); handlers never see HTTP. Any unexpected exception becomes a short 500 and a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST

from kubeguard.admission.webhook import Webhook
from kubeguard.metrics import render
from kubeguard.runtime import HttpRequest, HttpResponse, Route, Runtime
from kubeguard.server.http import Receive, Scope, Send

log = logging.getLogger("kubeguard.server")

# controller-runtime's limit: kube-apiserver never sends more (etcd's object limit is 1.5 MiB),
# so anything larger is not an AdmissionReview and is refused before it is buffered.
MAX_BODY_BYTES = 7 * 1024 * 1024


_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_CLOSE = (b"connection", b"close")
_HEALTH_METHODS = frozenset({"GET", "HEAD"})


class _Disconnected(Exception):
    """The client went away before the body was complete; there is nobody to answer."""


class _TooLarge(Exception):
    """The body exceeded MAX_BODY_BYTES while it was being read."""


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request body, read chunk by chunk into a list and joined once.

    Raises _TooLarge as soon as the running size passes `limit` (the rest is never read) and
    _Disconnected when the client hangs up.
    """
    message = await receive()
    if message["type"] != "http.request":
        raise _Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        # The common case: the whole review arrived with the headers.
        if len(body) > limit:
            raise _TooLarge
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _media_type_is_json(value: bytes) -> bool:
    if value == _JSON:
        return True
    # `application/json; charset=utf-8` and odd casing are fine; anything else is not JSON.
    return value.split(b";", 1)[0].strip().lower() == _JSON


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = _TEXT,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AdmissionApp:
    """ASGI application serving every webhook, /healthz, /readyz, /metrics and extra routes."""

    def __init__(
        self,
        webhooks: Iterable[Webhook],
        runtime: Runtime,
        *,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.webhooks: dict[str, Webhook] = {}
        for webhook in webhooks:
            if webhook.path in self.webhooks:
                raise ValueError(f"two webhooks are registered on {webhook.path}")
            self.webhooks[webhook.path] = webhook
        self.runtime = runtime
        self.max_body = max_body
        self.draining = False  # set on shutdown: /readyz fails so no new traffic is routed here
        builtin = {"/healthz", "/readyz", "/metrics"}
        self._exact: dict[str, Route] = {}
        prefixes: list[Route] = []
        for route in runtime.routes:
            if route.path in self.webhooks or route.path in builtin:
                raise ValueError(f"route {route.path} collides with a built-in or admission path")
            if route.prefix:
                prefixes.append(route)
            else:
                self._exact[route.path] = route
        # Longest prefix first, so /api/x/ wins over /api/.
        self._prefixes = sorted(prefixes, key=lambda r: len(r.path), reverse=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            await self._not_http(kind, receive, send)
            return
        path: str = scope["path"]
        try:
            webhook = self.webhooks.get(path)
            if webhook is not None:
                await self._admit(webhook, scope, receive, send)
            elif path == "/healthz":
                await self._health(scope, send, 200, b"ok\n")
            elif path == "/readyz":
                await self._readyz(scope, send)
            elif path == "/metrics":
                await self._metrics(scope, send)
            else:
                route = self._route(path)
                if route is None:
                    await _respond(send, 404, f"no handler for path {path}\n".encode())
                else:
                    await self._serve_route(route, scope, receive, send)
        except _Disconnected:
            return
        except Exception:
            log.exception(
                "unhandled error serving request",
                extra={"path": path, "method": scope.get("method", "")},
            )
            try:
                await _respond(send, 500, b"internal server error\n", extra=(_CLOSE,))
            except Exception:  # the response had already started or the client is gone
                log.debug("could not send the 500 response", exc_info=True)

    # --- admission (the hot path) ----------------------------------------------------------------

    async def _admit(self, webhook: Webhook, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await self._reject(
                webhook,
                send,
                405,
                f"method {scope['method']} not allowed on {webhook.path}; use POST\n",
                (b"allow", b"POST"),
            )
            return
        content_type: bytes | None = None
        content_length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
        if content_type is None or not _media_type_is_json(content_type):
            got = "none" if content_type is None else repr(content_type.decode("latin-1"))
            await self._reject(
                webhook,
                send,
                415,
                f"content type {got} is not supported; an AdmissionReview must be sent as "
                "application/json\n",
            )
            return
        if content_length is not None and _declared_too_large(content_length, self.max_body):
            await self._too_large(webhook, send)
            return
        try:
            body = await _read_body(receive, self.max_body)
        except _TooLarge:
            await self._too_large(webhook, send)
            return
        status, out = await webhook.review(body)
        if status == 200:
            await _respond(send, 200, out, _JSON)
        else:
            await _respond(send, status, out + b"\n")

    async def _too_large(self, webhook: Webhook, send: Send) -> None:
        # Close the connection: the unread rest of the body must not be parsed as a request.
        await self._reject(
            webhook,
            send,
            413,
            f"request body is larger than the {self.max_body} byte limit\n",
            _CLOSE,
        )

    async def _reject(
        self,
        webhook: Webhook,
        send: Send,
        status: int,
        message: str,
        header: tuple[bytes, bytes] | None = None,
    ) -> None:
        webhook.metrics.bad_requests.labels(webhook.path, str(status)).inc()
        await _respond(send, status, message.encode(), extra=(header,) if header else ())

    # --- health, readiness, metrics --------------------------------------------------------------

    async def _health(self, scope: Scope, send: Send, status: int, body: bytes) -> None:
        if not await self._check_method(scope, send, _HEALTH_METHODS):
            return
        await _respond(send, status, body)

    def not_ready(self) -> list[str]:
        """What keeps the server from being ready, as readable names (empty when ready)."""
        failing: list[str] = []
        if self.draining:
            failing.append("server: shutting down")
        for webhook in self.webhooks.values():
            for spec in webhook.specs:
                if spec.ready is None:
                    continue
                try:
                    ok = spec.ready()
                except Exception:
                    log.exception("readiness check of handler %s raised", spec.name)
                    ok = False
                if not ok:
                    failing.append(f"handler {spec.name} ({webhook.path})")
        failing.extend(self.runtime.not_ready())
        return failing

    async def _readyz(self, scope: Scope, send: Send) -> None:
        if not await self._check_method(scope, send, _HEALTH_METHODS):
            return
        failing = self.not_ready()
        if failing:
            body = msgspec.json.encode({"ready": False, "notReady": failing})
            await _respond(send, 503, body + b"\n", _JSON)
        else:
            await _respond(send, 200, b'{"ready":true}\n', _JSON)

    async def _metrics(self, scope: Scope, send: Send) -> None:
        if not await self._check_method(scope, send, _HEALTH_METHODS):
            return
        await _respond(send, 200, render(self.runtime.registry), CONTENT_TYPE_LATEST.encode())

    async def _check_method(self, scope: Scope, send: Send, allowed: frozenset[str]) -> bool:
        if scope["method"] in allowed:
            return True
        allow = ", ".join(sorted(allowed))
        await _respond(
            send,
            405,
            f"method {scope['method']} not allowed on {scope['path']}; use {allow}\n".encode(),
            extra=((b"allow", allow.encode()),),
        )
        return False

    # --- extra routes ----------------------------------------------------------------------------

    def _route(self, path: str) -> Route | None:
        route = self._exact.get(path)
        if route is not None:
            return route
        for candidate in self._prefixes:
            base = candidate.path.rstrip("/")
            if path == base or path.startswith(base + "/"):
                return candidate
        return None

    async def _serve_route(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self._check_method(scope, send, route.methods):
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        length = headers.get("content-length")
        if length is not None and _declared_too_large(length.encode(), self.max_body):
            await _respond(send, 413, b"request body too large\n", extra=(_CLOSE,))
            return
        try:
            body = await _read_body(receive, self.max_body)
        except _TooLarge:
            await _respond(send, 413, b"request body too large\n", extra=(_CLOSE,))
            return
        client = scope.get("client")
        request = HttpRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            client=client[0] if client else "",
        )
        response: HttpResponse = await route.handler(request)
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        await _respond(
            send, response.status, response.body, response.content_type.encode("latin-1"), extra
        )

    # --- other ASGI scopes -----------------------------------------------------------------------

    async def _not_http(self, kind: str, receive: Receive, send: Send) -> None:
        if kind == "lifespan":  # only when a caller enables it; nothing to set up
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})


def _declared_too_large(value: bytes, limit: int) -> bool:
    # httptools has already rejected a non-numeric Content-Length with a 400.
    try:
        return int(value) > limit
    except ValueError:
        return False
