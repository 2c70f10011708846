"""The simulated API server: a raw ASGI application served by uvicorn over HTTPS on 127.0.0.1.

It routes Kubernetes REST paths (`/api/v1/...`, `/apis/<group>/<version>/...`), authenticates
bearer tokens, authorizes against the static user table, and serves get, list (selectors,
pagination, resourceVersion semantics), watch (history replay, BOOKMARKs, the Expired ERROR
event), create, update, patch, delete and the eviction subresource through `ApiCore`. Every
failure is answered with a real `Status` object; unexpected exceptions become a 500 Status,
never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec
import uvicorn
import yaml

from .api import PATCH_TYPES, ApiCore, unsupported_media_type
from .auth import UserInfo, UserTable
from .resources import RESOURCES, ResourceInfo, bookmark_object, lookup, to_wire
from .store import (
    FieldRequirement,
    Requirement,
    StoreEvent,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from .util import (
    JSON,
    ApiError,
    bad_request,
    forbidden,
    method_not_allowed,
    status_failure,
    unauthorized,
    unknown_resource,
)

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_MAX_BODY = 3 * 1024 * 1024
_DEFAULT_WATCH_TIMEOUT = 1800.0
_encode = msgspec.json.encode
_decode = msgspec.json.decode


class _Request:
    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        raw_qs = scope.get("query_string", b"").decode("latin-1")
        self.query = {k: v[-1] for k, v in parse_qs(raw_qs, keep_blank_values=True).items()}
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }

    async def body(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > _MAX_BODY:
                raise ApiError(
                    status_failure(
                        413, "Request entity too large: limit is 3145728", "RequestEntityTooLarge"
                    )
                )
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    async def json(self) -> Any:
        raw = await self.body()
        if not raw.strip():
            return None
        content_type = self.headers.get("content-type", "application/json").split(";")[0]
        try:
            if content_type.endswith("yaml"):
                return yaml.safe_load(raw)
            return _decode(raw)
        except (msgspec.DecodeError, yaml.YAMLError) as exc:
            raise bad_request(f"error decoding request body: {exc}") from None


async def _respond(send: Send, code: int, payload: Any) -> None:
    body = payload if isinstance(payload, bytes) else _encode(payload)
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"cache-control", b"no-cache, private"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "t", "yes")


def _int_param(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f'{name}: Invalid value: "{raw}": must be an integer') from None
    if value < 0:
        raise bad_request(f'{name}: Invalid value: "{raw}": must be non-negative')
    return value


def _dry_run(query: dict[str, str]) -> bool:
    raw = query.get("dryRun")
    if raw is None or raw == "":
        return False
    if raw != "All":
        raise bad_request(f'dryRun: Unsupported value: "{raw}": supported values: "All"')
    return True


class ApiServerApp:
    """The ASGI application."""

    def __init__(self, core: ApiCore, users: UserTable, bookmark_interval: float) -> None:
        self.core = core
        self.users = users
        self.bookmark_interval = bookmark_interval
        self.stopping = asyncio.Event()
        self.server_address = "127.0.0.1:6443"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        req = _Request(scope, receive)
        try:
            await self._handle(req, send)
        except ApiError as err:
            await _respond(send, err.code, err.status)
        except Exception as exc:  # never leak a traceback to the client
            log.exception("simulated API server: unexpected error on %s %s", req.method, req.path)
            status = status_failure(
                500,
                f"Internal error occurred: {exc}",
                "InternalError",
                {"causes": [{"message": str(exc)}]},
            )
            with contextlib.suppress(Exception):
                await _respond(send, 500, status)

    # ----------------------------------------------------------------- routing

    def _authenticate(self, req: _Request) -> UserInfo:
        header = req.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        user = self.users.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise unauthorized()
        return user.info()

    async def _handle(self, req: _Request, send: Send) -> None:
        path = req.path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": b"ok"})
            return
        user = self._authenticate(req)
        if path == "/version":
            await _respond(
                send,
                200,
                {
                    "major": "1",
                    "minor": "36",
                    "emulationMajor": "1",
                    "emulationMinor": "36",
                    "minCompatibilityMajor": "1",
                    "minCompatibilityMinor": "35",
                    "gitVersion": "v1.36.2",
                    "gitCommit": "kubeguard-sim",
                    "gitTreeState": "clean",
                    "buildDate": "2026-11-01T00:00:00Z",
                    "goVersion": "go1.25.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                },
            )
            return
        if path == "/api":
            await _respond(
                send,
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": self.server_address}
                    ],
                },
            )
            return
        if path == "/apis":
            await _respond(send, 200, self._group_list())
            return
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise unknown_resource()
        if not rest:
            await _respond(send, 200, self._resource_list(group, version))
            return
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and lookup(group, version, rest[2]):
            namespace, rest = rest[1], rest[2:]
        info = lookup(group, version, rest[0])
        if info is None or len(rest) > 3:
            raise unknown_resource()
        if info.namespaced != (namespace is not None) and not (
            info.namespaced and namespace is None and len(rest) == 1 and req.method == "GET"
        ):
            raise unknown_resource()
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else ""
        if sub and sub not in info.subresources:
            raise unknown_resource()
        await self._dispatch(req, send, user, info, namespace, name, sub)

    def _authorize(
        self,
        user: UserInfo,
        verb: str,
        info: ResourceInfo,
        namespace: str | None,
        name: str | None,
        sub: str,
    ) -> None:
        resource = f"{info.resource}/{sub}" if sub else info.resource
        allowed, _ = self.users.authorize(
            user.username, user.groups, verb, info.group, resource, namespace or ""
        )
        if allowed:
            return
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        target = f'{info.resource} "{name}"' if name else info.resource
        if info.group:
            target = (
                f'{info.resource}.{info.group} "{name}"'
                if name
                else f"{info.resource}.{info.group}"
            )
        raise forbidden(
            f'{target} is forbidden: User "{user.username}" cannot {verb} resource '
            f'"{resource}" in API group "{info.group}" {scope}',
            info.group,
            info.resource,
            name or "",
        )

    async def _dispatch(
        self,
        req: _Request,
        send: Send,
        user: UserInfo,
        info: ResourceInfo,
        namespace: str | None,
        name: str | None,
        sub: str,
    ) -> None:
        q = req.query
        method = req.method
        ns = namespace or ""
        if method == "GET":
            watch = _flag(q.get("watch"))
            verb = "watch" if watch else ("get" if name else "list")
            if verb not in info.verbs or sub == "eviction":
                raise method_not_allowed()
            self._authorize(user, verb, info, namespace, name, sub)
            if watch:
                await self._watch(req, send, info, namespace, name)
            elif name:
                await _respond(send, 200, to_wire(info, self.core.get(info, ns, name)))
            else:
                result = self.core.list(
                    info,
                    namespace,
                    label_selector=q.get("labelSelector", ""),
                    field_selector=q.get("fieldSelector", ""),
                    limit=_int_param(q, "limit"),
                    continue_token=q.get("continue", ""),
                    resource_version=q.get("resourceVersion", ""),
                    resource_version_match=q.get("resourceVersionMatch", ""),
                )
                await _respond(send, 200, result)
            return
        dry_run = _dry_run(q)
        field_manager = q.get("fieldManager") or None
        if method == "POST":
            if sub == "eviction" and name:
                self._authorize(user, "create", info, namespace, name, sub)
                body = await req.json()
                result = await self.core.evict(ns, name, body, user, dry_run=dry_run)
                await _respond(send, 201, result)
                return
            if name or "create" not in info.verbs:
                raise method_not_allowed()
            self._authorize(user, "create", info, namespace, None, "")
            body = await req.json()
            created = await self.core.create(
                info, ns, body, user, dry_run=dry_run, field_manager=field_manager
            )
            if info.resource in ("tokenreviews", "subjectaccessreviews"):
                await _respond(send, 201, created)
            else:
                await _respond(send, 201, to_wire(info, created))
            return
        if not name:
            if method == "DELETE" and "delete" in info.verbs:
                await self._delete_collection(req, send, user, info, namespace, dry_run)
                return
            raise method_not_allowed()
        if sub == "eviction":
            raise method_not_allowed()
        if method == "PUT":
            if "update" not in info.verbs:
                raise method_not_allowed()
            self._authorize(user, "update", info, namespace, name, sub)
            body = await req.json()
            updated = await self.core.update(
                info,
                ns,
                name,
                body,
                user,
                subresource=sub,
                dry_run=dry_run,
                field_manager=field_manager,
            )
            await _respond(send, 200, to_wire(info, updated))
        elif method == "PATCH":
            if "patch" not in info.verbs:
                raise method_not_allowed()
            self._authorize(user, "patch", info, namespace, name, sub)
            content_type = req.headers.get("content-type", "").split(";")[0].strip()
            if content_type not in PATCH_TYPES:
                raise unsupported_media_type()
            body = await req.json()
            patched = await self.core.patch(
                info,
                ns,
                name,
                content_type,
                body,
                user,
                subresource=sub,
                dry_run=dry_run,
                field_manager=field_manager,
            )
            await _respond(send, 200, to_wire(info, patched))
        elif method == "DELETE":
            if "delete" not in info.verbs or sub:
                raise method_not_allowed()
            self._authorize(user, "delete", info, namespace, name, "")
            options = await req.json() or {}
            if isinstance(options, dict):
                grace = _int_param(q, "gracePeriodSeconds")
                if grace is not None:
                    options["gracePeriodSeconds"] = grace
                if q.get("propagationPolicy"):
                    options["propagationPolicy"] = q["propagationPolicy"]
                options.pop("kind", None)
                options.pop("apiVersion", None)
                if options.get("dryRun") == ["All"]:
                    dry_run = True
                    options.pop("dryRun")
            result = await self.core.delete(info, ns, name, options, user, dry_run=dry_run)
            await _respond(send, 200, result)
        else:
            raise method_not_allowed()

    async def _delete_collection(
        self,
        req: _Request,
        send: Send,
        user: UserInfo,
        info: ResourceInfo,
        namespace: str | None,
        dry_run: bool,
    ) -> None:
        self._authorize(user, "deletecollection", info, namespace, None, "")
        listing = self.core.list(
            info,
            namespace,
            label_selector=req.query.get("labelSelector", ""),
            field_selector=req.query.get("fieldSelector", ""),
        )
        options = await req.json() or {}
        for item in listing["items"]:
            meta = item["metadata"]
            with contextlib.suppress(ApiError):
                await self.core.delete(
                    info,
                    meta.get("namespace", ""),
                    meta["name"],
                    dict(options) if isinstance(options, dict) else options,
                    user,
                    dry_run=dry_run,
                )
        await _respond(
            send,
            200,
            self.core.list(info, namespace, label_selector=req.query.get("labelSelector", "")),
        )

    # ----------------------------------------------------------------- discovery

    @staticmethod
    def _group_list() -> JSON:
        groups: dict[str, list[str]] = {}
        for info in RESOURCES.values():
            if info.group:
                groups.setdefault(info.group, [])
                if info.version not in groups[info.group]:
                    groups[info.group].append(info.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                }
                for g, vs in groups.items()
            ],
        }

    @staticmethod
    def _resource_list(group: str, version: str) -> JSON:
        infos = [i for i in RESOURCES.values() if i.group == group and i.version == version]
        if not infos:
            raise unknown_resource()
        resources: list[JSON] = []
        for info in infos:
            resources.append(
                {
                    "name": info.resource,
                    "singularName": info.kind.lower(),
                    "namespaced": info.namespaced,
                    "kind": info.kind,
                    "verbs": sorted(info.verbs),
                }
            )
            for sub in sorted(info.subresources):
                kind = "Eviction" if sub == "eviction" else info.kind
                resources.append(
                    {
                        "name": f"{info.resource}/{sub}",
                        "singularName": "",
                        "namespaced": info.namespaced,
                        "kind": kind,
                        "verbs": ["create"] if sub == "eviction" else ["get", "patch", "update"],
                    }
                )
        gv = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }

    # ----------------------------------------------------------------- watch

    async def _watch(
        self, req: _Request, send: Send, info: ResourceInfo, namespace: str | None, name: str | None
    ) -> None:
        q = req.query
        labels = parse_label_selector(q.get("labelSelector", ""))
        fields = parse_field_selector(info.resource, q.get("fieldSelector", ""))
        if name:
            fields.append(FieldRequirement(("metadata", "name"), "=", name))
        timeout = _int_param(q, "timeoutSeconds")
        deadline = time.monotonic() + (timeout if timeout is not None else _DEFAULT_WATCH_TIMEOUT)
        bookmarks = _flag(q.get("allowWatchBookmarks"))
        send_initial = _flag(q.get("sendInitialEvents"))
        rv_param = q.get("resourceVersion", "")
        store = self.core.store
        start_rv: int | None = None
        if rv_param not in ("", "0"):
            try:
                start_rv = int(rv_param)
            except ValueError:
                raise bad_request(f'resourceVersion: Invalid value: "{rv_param}"') from None
        if send_initial and not bookmarks:
            raise bad_request(
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting "
                "allowWatchBookmarks to true"
            )

        def matches(obj: JSON | None) -> bool:
            if obj is None:
                return False
            meta = obj["metadata"]
            if namespace is not None and meta.get("namespace") != namespace:
                return False
            if labels and not labels_match(labels, meta.get("labels")):
                return False
            return all(f.matches(obj) for f in fields)

        watcher = store.subscribe(info.key)
        disconnected = asyncio.Event()

        async def watch_disconnect() -> None:
            while True:
                message = await req.receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return

        disconnect_task = asyncio.create_task(watch_disconnect())
        stop_task = asyncio.create_task(self.stopping.wait())
        try:
            initial: list[tuple[str, JSON]] = []
            error: JSON | None = None
            if start_rv is None or send_initial:
                for obj in store.iter(info.key, namespace):
                    if matches(obj):
                        initial.append(("ADDED", obj))
            else:
                try:
                    for ev in store.history_since(info.key, start_rv):
                        initial.extend(self._translate(ev, matches))
                except ApiError as err:
                    error = err.status
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"cache-control", b"no-cache, private"),
                    ],
                }
            )
            if error is not None:
                await self._send_line(send, {"type": "ERROR", "object": error})
                return
            for etype, obj in initial:
                await self._send_event(send, info, etype, obj)
            if send_initial:
                mark = bookmark_object(info, store.rv)
                mark["metadata"]["annotations"] = {"k8s.io/initial-events-end": "true"}
                await self._send_line(send, {"type": "BOOKMARK", "object": mark})
            next_bookmark = time.monotonic() + self.bookmark_interval
            get_task: asyncio.Task[StoreEvent] | None = None
            while not disconnected.is_set() and not self.stopping.is_set():
                while not watcher.queue.empty():
                    ev = watcher.queue.get_nowait()
                    for etype, obj in self._translate(ev, matches):
                        await self._send_event(send, info, etype, obj)
                now = time.monotonic()
                if now >= deadline:
                    break
                if bookmarks and now >= next_bookmark:
                    await self._send_line(
                        send, {"type": "BOOKMARK", "object": bookmark_object(info, store.rv)}
                    )
                    next_bookmark = now + self.bookmark_interval
                wait_for = deadline - now
                if bookmarks:
                    wait_for = min(wait_for, max(next_bookmark - now, 0.0))
                if get_task is None:
                    get_task = asyncio.create_task(watcher.queue.get())
                done, _ = await asyncio.wait(
                    {get_task, disconnect_task, stop_task},
                    timeout=wait_for,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if get_task in done:
                    ev = get_task.result()
                    get_task = None
                    for etype, obj in self._translate(ev, matches):
                        await self._send_event(send, info, etype, obj)
            if get_task is not None:
                get_task.cancel()
        except OSError:
            pass
        finally:
            store.unsubscribe(watcher)
            disconnect_task.cancel()
            stop_task.cancel()
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    def _translate(
        ev: StoreEvent, matches: Callable[[JSON | None], bool]
    ) -> list[tuple[str, JSON]]:
        """Map a store event to what a filtered watch sees (the watch cache's semantics)."""
        if ev.type == "ADDED":
            return [("ADDED", ev.obj)] if matches(ev.obj) else []
        if ev.type == "DELETED":
            return [("DELETED", ev.obj)] if matches(ev.old) else []
        new, old = matches(ev.obj), matches(ev.old)
        if new and old:
            return [("MODIFIED", ev.obj)]
        if new:
            return [("ADDED", ev.obj)]
        if old:
            return [("DELETED", ev.obj)]
        return []

    @staticmethod
    async def _send_line(send: Send, event: JSON) -> None:
        await send(
            {"type": "http.response.body", "body": _encode(event) + b"\n", "more_body": True}
        )

    async def _send_event(self, send: Send, info: ResourceInfo, etype: str, obj: JSON) -> None:
        await self._send_line(send, {"type": etype, "object": to_wire(info, obj)})


async def stop_uvicorn(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Stop a uvicorn server promptly: a graceful exit first, then a forced one, because
    clients' idle keep-alive connections would otherwise hold the shutdown for seconds."""
    server.should_exit = True
    done, _ = await asyncio.wait({task}, timeout=0.3)
    if not done:
        server.force_exit = True
        done, _ = await asyncio.wait({task}, timeout=3)
    if not done:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class ApiServer:
    """uvicorn running `ApiServerApp` with TLS on 127.0.0.1."""

    def __init__(self, app: ApiServerApp, certfile: Path, keyfile: Path, port: int = 0) -> None:
        self.app = app
        self.certfile = certfile
        self.keyfile = keyfile
        self.requested_port = port
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.requested_port,
            ssl_certfile=str(self.certfile),
            ssl_keyfile=str(self.keyfile),
            loop="uvloop",
            http="httptools",
            lifespan="off",
            interface="asgi3",
            log_level="warning",
            log_config=None,
            timeout_graceful_shutdown=2,
            access_log=False,
        )
        server = uvicorn.Server(config)
        self._server = server
        # _serve() is serve() without uvicorn's signal capture: the embedding program (tests,
        # `kubeguard demo`, `kubeguard sim serve`) owns SIGINT/SIGTERM.
        self._task = asyncio.create_task(server._serve())
        while not server.started:
            if self._task.done():
                exc = self._task.exception()
                raise RuntimeError(f"the simulated API server did not start: {exc}")
            await asyncio.sleep(0.01)
        sockets = [s for srv in server.servers for s in srv.sockets]
        self.port = int(sockets[0].getsockname()[1])
        self.app.server_address = f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.app.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None and self._server is not None:
            await stop_uvicorn(self._server, self._task)
        self._server = None
        self._task = None


__all__ = ["ApiServer", "ApiServerApp", "Requirement"]
