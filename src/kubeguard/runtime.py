"""The runtime context a plugin is built with, and the small HTTP types of non-admission routes.

`kubeguard serve` creates one `Runtime`, passes it to every enabled plugin's builder, then
hands it to the server, which serves the plugins' admission paths, their extra routes (the
callback API), runs their background tasks and answers `/readyz` from their readiness checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from kubeguard.config import Settings

if TYPE_CHECKING:
    from kubeguard.kube.client import KubeClient
    from kubeguard.notify import Notifier

log = logging.getLogger("kubeguard.runtime")


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client: str = ""

    @property
    def bearer_token(self) -> str | None:
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


RouteHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


@dataclass(frozen=True)
class Route:
    path: str
    methods: frozenset[str]
    handler: RouteHandler
    prefix: bool = False  # match every path below `path` too


@dataclass
class BackgroundTask:
    name: str
    run: Callable[[], Awaitable[None]]


@dataclass
class Runtime:
    settings: Settings
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    kube: KubeClient | None = None
    notifier: Notifier | None = None
    routes: list[Route] = field(default_factory=list)
    tasks: list[BackgroundTask] = field(default_factory=list)
    readiness: list[tuple[str, Callable[[], bool]]] = field(default_factory=list)
    shutdown_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def add_route(
        self,
        path: str,
        methods: set[str] | frozenset[str],
        handler: RouteHandler,
        *,
        prefix: bool = False,
    ) -> None:
        if any(r.path == path for r in self.routes):
            raise ValueError(f"route {path} is registered twice")
        self.routes.append(Route(path, frozenset(m.upper() for m in methods), handler, prefix))

    def add_task(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        self.tasks.append(BackgroundTask(name, run))

    def add_readiness(self, name: str, check: Callable[[], bool]) -> None:
        self.readiness.append((name, check))

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        self.shutdown_hooks.append(hook)

    def require_kube(self, what: str) -> KubeClient:
        if self.kube is None:
            raise RuntimeError(f"{what} needs Kubernetes API access, but no client is configured")
        return self.kube

    def not_ready(self) -> list[str]:
        """Names of the readiness checks that fail now."""
        failing = []
        for name, check in self.readiness:
            try:
                ok = check()
            except Exception:
                log.exception("readiness check %s raised", name)
                ok = False
            if not ok:
                failing.append(name)
        return failing


async def run_tasks(tasks: list[BackgroundTask], stop: asyncio.Event) -> None:
    """Run background tasks until `stop` is set; a task that crashes is logged and restarted
    after a pause, so one failing loop never takes the admission server down."""

    async def supervise(task: BackgroundTask) -> None:
        delay = 1.0
        while not stop.is_set():
            try:
                await task.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed; restarting in %.0fs", task.name, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, 30.0)

    running = [asyncio.create_task(supervise(t), name=t.name) for t in tasks]
    try:
        await stop.wait()
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
