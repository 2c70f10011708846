"""In-process tests of the ASGI app's edge cases, the certificate reloader and start_server."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client import CollectorRegistry
from serverproc import SecretVolume, fixture_review, make_ca, new_pair, peer_serial

from kubeguard.admission import HandlerSpec, Request, Response, allowed
from kubeguard.admission.registry import group_webhooks
from kubeguard.certs import KeyPair
from kubeguard.config import Settings
from kubeguard.metrics import AdmissionMetrics
from kubeguard.runtime import HttpRequest, HttpResponse, Runtime
from kubeguard.server.app import MAX_BODY_BYTES, AdmissionApp
from kubeguard.server.run import start_server
from kubeguard.server.tls import CertificateError, CertificateReloader

UPDATE = "pod-update-label-by-user.json"


class Allow:
    async def handle(self, request: Request) -> Response:
        return allowed()


def _app(runtime: Runtime | None = None) -> AdmissionApp:
    runtime = runtime or Runtime(Settings())
    specs = [HandlerSpec("allow", "/validate", "validating", Allow())]
    return AdmissionApp(group_webhooks(specs, AdmissionMetrics(runtime.registry)), runtime)


async def _call(
    app: AdmissionApp,
    messages: list[dict[str, Any]],
    *,
    method: str = "POST",
    path: str = "/validate",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    queue = messages  # consumed in place, so tests can see how much was read

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers if headers is not None else [(b"content-type", b"application/json")],
    }
    await app(scope, receive, send)
    return sent


def _status(sent: list[dict[str, Any]]) -> int:
    status: int = sent[0]["status"]
    return status


# --- the ASGI app --------------------------------------------------------------------------------


async def test_body_in_many_chunks_is_joined() -> None:
    review = fixture_review(UPDATE)
    body = json.dumps(review).encode()
    parts = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in parts]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    sent = await _call(_app(), messages)
    assert _status(sent) == 200
    assert json.loads(sent[1]["body"])["response"]["uid"] == review["request"]["uid"]


async def test_chunked_body_over_the_limit_stops_reading_early() -> None:
    block = b" " * (1024 * 1024)
    messages = [{"type": "http.request", "body": block, "more_body": True} for _ in range(20)]
    sent = await _call(_app(), messages)
    assert _status(sent) == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    # 7 MiB allowed, the 8th MiB is the one that overflows: the rest is never read.
    assert len(messages) == 20 - 8
    assert MAX_BODY_BYTES == 7 * 1024 * 1024


async def test_client_disconnect_mid_body_sends_nothing() -> None:
    messages = [
        {"type": "http.request", "body": b'{"request":', "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert await _call(_app(), messages) == []


async def test_unexpected_exception_is_a_short_500_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _app()

    async def broken(body: bytes) -> tuple[int, bytes]:
        raise KeyError("bug")

    app.webhooks["/validate"].review = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="kubeguard.server"):
        sent = await _call(app, [{"type": "http.request", "body": b"{}"}])
    assert _status(sent) == 500
    assert sent[1]["body"] == b"internal server error\n"
    record = next(r for r in caplog.records if r.getMessage() == "unhandled error serving request")
    assert record.exc_info is not None
    assert record.path == "/validate"  # type: ignore[attr-defined]


async def test_route_handler_exception_is_a_500() -> None:
    runtime = Runtime(Settings())

    async def boom(req: HttpRequest) -> HttpResponse:
        raise RuntimeError("route bug")

    runtime.add_route("/boom", {"GET"}, boom)
    sent = await _call(
        _app(runtime), [{"type": "http.request", "body": b""}], method="GET", path="/boom"
    )
    assert _status(sent) == 500


def test_routes_colliding_with_admission_or_builtin_paths_are_refused() -> None:
    async def h(req: HttpRequest) -> HttpResponse:
        return HttpResponse(200)

    for path in ("/validate", "/metrics"):
        runtime = Runtime(Settings())
        runtime.add_route(path, {"GET"}, h)
        with pytest.raises(ValueError, match=f"route {path} collides"):
            _app(runtime)


async def test_lifespan_and_websocket_scopes_are_handled() -> None:
    app = _app()
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    sent.clear()
    await app({"type": "websocket", "path": "/validate"}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1003}]


async def test_readiness_check_that_raises_counts_as_not_ready() -> None:
    runtime = Runtime(Settings())

    def broken() -> bool:
        raise RuntimeError("bug")

    specs = [HandlerSpec("allow", "/validate", "validating", Allow(), ready=broken)]
    app = AdmissionApp(group_webhooks(specs, AdmissionMetrics(runtime.registry)), runtime)
    assert app.not_ready() == ["handler allow (/validate)"]
    app.draining = True
    assert app.not_ready()[0] == "server: shutting down"


# --- the certificate reloader --------------------------------------------------------------------


def _reloader(volume: SecretVolume) -> tuple[CertificateReloader, CollectorRegistry]:
    registry = CollectorRegistry()
    return CertificateReloader(volume.root, registry, interval=0.05), registry


def _count(registry: CollectorRegistry, result: str) -> float:
    value = registry.get_sample_value("cert_reloads_total", {"result": result})
    return value or 0.0


def test_missing_pair_fails_start_up_naming_the_files(tmp_path: Path) -> None:
    reloader, registry = _reloader(SecretVolume(tmp_path / "certs"))
    with pytest.raises(CertificateError, match=r"cannot read .*certs/tls\.crt / .*certs/tls\.key"):
        reloader.load_initial()
    assert _count(registry, "error") == 1


def test_reload_swaps_only_on_change_and_counts(tmp_path: Path) -> None:
    ca = make_ca()
    volume = SecretVolume(tmp_path / "certs")
    first = new_pair(ca)
    volume.write_pair(first)
    reloader, registry = _reloader(volume)
    listening = reloader.load_initial()
    assert listening.minimum_version == ssl.TLSVersion.TLSv1_2
    assert reloader.current.serial == first.serial
    assert reloader.check() is False
    second = new_pair(ca)
    volume.write_pair(second)
    assert reloader.check() is True
    assert reloader.current.serial == second.serial
    assert reloader.current.context is not listening
    assert _count(registry, "success") == 2
    assert registry.get_sample_value("serving_cert_expiry_timestamp_seconds") == (
        second.not_after.timestamp()
    )


def test_bad_pair_is_counted_once_and_the_old_one_kept(tmp_path: Path) -> None:
    ca = make_ca()
    volume = SecretVolume(tmp_path / "certs")
    good = new_pair(ca)
    volume.write_pair(good)
    reloader, registry = _reloader(volume)
    reloader.load_initial()
    other = new_pair(ca)
    volume.write({"tls.crt": other.cert_pem, "tls.key": good.key_pem})
    for _ in range(3):
        assert reloader.check() is False
    assert _count(registry, "error") == 1
    assert reloader.current.serial == good.serial
    # Files disappear (Secret deleted): also an error, counted once.
    (volume.root / "tls.key").unlink()
    assert reloader.check() is False
    assert reloader.check() is False
    assert _count(registry, "error") == 2
    volume.write_pair(other)
    assert reloader.check() is True
    assert reloader.current.serial == other.serial


# --- start_server in-process ---------------------------------------------------------------------


async def test_start_server_in_process_reloads_and_stops(tmp_path: Path) -> None:
    ca: KeyPair = make_ca()
    volume = SecretVolume(tmp_path / "certs")
    volume.write_pair(new_pair(ca))
    settings = Settings(
        bind_address="127.0.0.1", port=0, cert_dir=volume.root, cert_reload_interval=0.05
    )
    runtime = Runtime(settings)
    specs = [HandlerSpec("allow", "/validate", "validating", Allow())]
    server = await start_server(
        runtime, group_webhooks(specs, AdmissionMetrics(runtime.registry)), settings
    )
    try:
        assert server.port > 0
        assert server.url == f"https://127.0.0.1:{server.port}"
        ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
        async with httpx2.AsyncClient(base_url=server.url, verify=ctx) as client:
            review = fixture_review(UPDATE)
            resp = await client.post(
                "/validate",
                content=json.dumps(review).encode(),
                headers={"Content-Type": "application/json"},
            )
            assert resp.json()["response"]["allowed"] is True
        new = new_pair(ca)
        volume.write_pair(new)
        for _ in range(200):
            if server.reloader and server.reloader.current.serial == new.serial:
                break
            await asyncio.sleep(0.02)
        serial = await asyncio.to_thread(peer_serial, server.port, ca)
        assert serial == new.serial
    finally:
        await server.stop()
    assert not server.serving
    await server.stop()  # idempotent
