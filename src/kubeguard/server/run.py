"""The composition root of `kubeguard serve`, and an in-process server for tests and the demo.

`run_server(settings)` builds the Runtime (Kubernetes client, metrics registry), the enabled
plugins' webhooks, starts the HTTP server (`kubeguard.server.http`: httptools on the running
uvloop/asyncio loop) with the hot-reloading TLS context, runs the plugins' background tasks,
and shuts everything down in order on SIGTERM/SIGINT: stop accepting, finish in-flight
requests, stop tasks, run shutdown hooks, close the Kubernetes client.

`start_server(runtime, webhooks, settings)` is the reusable part: it binds (port 0 picks a free
port), serves, and returns a `RunningServer` with the real port and `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from kubeguard import __version__
from kubeguard.admission.registry import FeatureGateError, FeatureGates, Registry
from kubeguard.admission.webhook import Webhook
from kubeguard.config import ConfigError, Settings
from kubeguard.metrics import AdmissionMetrics
from kubeguard.notify.dispatcher import install_notifier
from kubeguard.runtime import Runtime, run_tasks
from kubeguard.server.app import AdmissionApp
from kubeguard.server.http import HttpServer
from kubeguard.server.tls import CertificateError, CertificateReloader

if TYPE_CHECKING:
    from kubeguard.kube.client import KubeClient

log = logging.getLogger("kubeguard.server")

# Longer than Go's http.Transport IdleConnTimeout (90 s) used by kube-apiserver: the client must
# always be the side that closes an idle connection. If the server closed it first, a POST racing
# the close fails ("EOF"), Go does not retry non-idempotent requests, and the webhook's
# failurePolicy decides the request.
KEEP_ALIVE_SECONDS = 120
# In-flight requests get this long to finish on shutdown (the API server's webhook timeout is at
# most 30 s; kubeguard's handlers answer in milliseconds).
GRACEFUL_SHUTDOWN_SECONDS = 20
SHUTDOWN_HOOK_SECONDS = 10.0


@dataclass
class RunningServer:
    """A server started by `start_server`. `stop()` is graceful and idempotent."""

    host: str
    port: int
    scheme: str
    app: AdmissionApp
    reloader: CertificateReloader | None
    _server: HttpServer
    _reload_stop: asyncio.Event = field(default_factory=asyncio.Event)
    _reload_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def serving(self) -> bool:
        return self._server.serving

    async def wait(self) -> None:
        """Return when the server stopped (after `stop()`)."""
        await self._server.wait_closed()

    async def stop(self, *, force: bool = False) -> None:
        """Stop accepting connections, let in-flight requests finish, close keep-alive
        connections, stop the certificate reloader."""
        self.app.draining = True
        if force:
            self._server.abort()
        try:
            await self._server.shutdown(GRACEFUL_SHUTDOWN_SECONDS)
        except Exception:
            log.exception("the HTTP server failed to shut down cleanly")
        self._reload_stop.set()
        if self._reload_task is not None:
            await self._reload_task

    def force(self) -> None:
        """Abandon the graceful wait (a second SIGINT/SIGTERM)."""
        self._server.abort()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


async def start_server(
    runtime: Runtime, webhooks: Sequence[Webhook], settings: Settings
) -> RunningServer:
    """Serve `webhooks` and the runtime's routes on `settings.bind_address:settings.port`.

    TLS from `settings.cert_dir` (hot-reloaded), or plain HTTP when `settings.local`.
    Raises CertificateError when the pair cannot be loaded and OSError when the port cannot be
    bound. Logs `listening` with the real port (useful with port 0).
    """
    app = AdmissionApp(webhooks, runtime)
    reloader: CertificateReloader | None = None
    context: ssl.SSLContext | None = None
    if not settings.local:
        reloader = CertificateReloader(
            settings.cert_dir, runtime.registry, interval=settings.cert_reload_interval
        )
        context = reloader.load_initial()
    sock = _bind(settings.bind_address, settings.port)
    port = sock.getsockname()[1]
    server = HttpServer(app, ssl_context=context, keep_alive=KEEP_ALIVE_SECONDS)
    try:
        await server.start(sock)
    except BaseException:
        sock.close()
        raise
    running = RunningServer(
        host=settings.bind_address,
        port=port,
        scheme="http" if settings.local else "https",
        app=app,
        reloader=reloader,
        _server=server,
    )
    if reloader is not None:
        running._reload_task = asyncio.create_task(
            reloader.run(running._reload_stop), name="cert-reloader"
        )
    log.info(
        "listening",
        extra={
            "address": settings.bind_address,
            "port": port,
            "scheme": running.scheme,
            "paths": sorted(app.webhooks),
        },
    )
    return running


def _connect(settings: Settings) -> KubeClient | None:
    from kubeguard.kube.client import KubeClient

    try:
        return KubeClient.from_path(settings.kubeconfig)
    except Exception as exc:
        if settings.local:
            log.warning(
                "no Kubernetes configuration found; running --local without API access "
                "(webhooks that need the cluster will fail their requests)",
                extra={"error": str(exc)},
            )
            return None
        raise ConfigError(
            f"cannot set up Kubernetes API access: {exc}. Pass --kubeconfig (KUBECONFIG), run "
            "in a cluster with a service account, or use --local"
        ) from None


async def run_server(settings: Settings, *, registry: Registry[Runtime] | None = None) -> int:
    """Run `kubeguard serve` until SIGTERM/SIGINT. Returns the process exit code.

    Raises ConfigError (exit 2 in the CLI) for bad feature gates, a missing Kubernetes
    configuration, an unusable certificate pair or a port that cannot be bound.
    """
    if registry is None:
        from kubeguard.plugins import default_registry

        registry = default_registry()
    try:
        gates = registry.gates(settings.feature_gates)
    except FeatureGateError as exc:
        raise ConfigError(f"--feature-gates (FEATURE_GATES): {exc}") from None

    kube = _connect(settings)
    try:
        return await _serve(settings, registry, gates, kube)
    finally:
        if kube is not None:
            await kube.aclose()


async def _serve(
    settings: Settings,
    registry: Registry[Runtime],
    gates: FeatureGates,
    kube: KubeClient | None,
) -> int:
    metrics_registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=metrics_registry)
    runtime = Runtime(settings, registry=metrics_registry, kube=kube)
    try:
        # Before the plugins are built: they may keep `runtime.notifier`.
        install_notifier(runtime)
        webhooks = registry.build(gates, runtime, AdmissionMetrics(runtime.registry))
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"cannot set up the notifier or the enabled webhooks: {exc}") from None
    if settings.self_signed:  # before the server loads cert_dir and before the tasks start
        from kubeguard.selfsigned import SelfSignedError, setup_self_signed

        try:
            await setup_self_signed(runtime, registry=registry)
        except SelfSignedError as exc:
            raise ConfigError(f"--self-signed (KUBEGUARD_SELF_SIGNED): {exc}") from None

    log.info(
        "kubeguard starting",
        extra={
            "version": __version__,
            "feature_gates": str(gates),
            "webhooks": {w.path: w.names for w in webhooks},
            "kubernetes": kube.server if kube is not None else "",
            "settings": settings.summary(),
        },
    )
    if not webhooks:
        log.warning("no webhook is enabled; only /healthz, /readyz and /metrics are served")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[int] = []
    server: RunningServer | None = None

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second %s: not waiting for in-flight requests", sig.name)
            if server is not None:
                server.force()
            return
        log.info("received %s, shutting down gracefully", sig.name, extra={"signal": sig.name})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, on_signal, sig)
            signals.append(sig)

    tasks: asyncio.Task[None] | None = None
    code = 0
    try:
        try:
            server = await start_server(runtime, webhooks, settings)
        except CertificateError as exc:
            raise ConfigError(
                f"{exc} (--cert-dir / CERT_DIR; write a pair with `kubeguard certs`, or use "
                "--local for plain HTTP)"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.bind_address}:{settings.port}: "
                f"{exc.strerror or exc} (--bind-address / WEBHOOK_BIND_ADDRESS, --port / "
                "WEBHOOK_PORT)"
            ) from None
        tasks = asyncio.create_task(run_tasks(runtime.tasks, stop), name="background-tasks")
        waiter = asyncio.create_task(stop.wait())
        ended = asyncio.create_task(server.wait())
        await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        ended.cancel()
        if not stop.is_set():
            log.error("the HTTP server stopped unexpectedly; shutting down")
            code = 1
            stop.set()
        log.info("draining: finishing in-flight requests")
        await server.stop()
    finally:
        stop.set()
        if tasks is not None:
            await tasks
        await _run_shutdown_hooks(runtime)
        for signum in signals:
            loop.remove_signal_handler(signum)
    log.info("kubeguard stopped", extra={"exit_code": code})
    return code


async def _run_shutdown_hooks(runtime: Runtime) -> None:
    for hook in runtime.shutdown_hooks:
        name = getattr(hook, "__qualname__", repr(hook))
        try:
            await asyncio.wait_for(hook(), timeout=SHUTDOWN_HOOK_SECONDS)
        except Exception:
            log.exception("shutdown hook %s failed", name)
