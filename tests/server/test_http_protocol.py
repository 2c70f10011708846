"""The HTTP/1.1 server (`kubeguard.server.http`) over real TLS sockets, byte by byte.

Each test starts an `HttpServer` on 127.0.0.1 with a certificate from a test CA and talks to it
with raw TLS streams, so what is checked is exactly what goes over the wire: keep-alive,
pipelining, chunked bodies, Expect: 100-continue, HEAD, limits, timeouts, errors, shutdown.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverproc import fixture_review, make_ca, new_pair

from kubeguard.admission import HandlerSpec, Request, Response, allowed
from kubeguard.admission.registry import group_webhooks
from kubeguard.certs import KeyPair
from kubeguard.config import Settings
from kubeguard.metrics import AdmissionMetrics
from kubeguard.runtime import Runtime
from kubeguard.server import http as http_module
from kubeguard.server.app import AdmissionApp
from kubeguard.server.http import HttpServer, Message, Receive, Scope, Send


class Allow:
    async def handle(self, request: Request) -> Response:
        return allowed()


@dataclass
class EchoApp:
    """Answers `<method> <path> <query> <body length>`; special paths misbehave on purpose."""

    seen: list[str] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    chunks: list[int] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        self.seen.append(path)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return
            body += message.get("body", b"")
            self.chunks.append(len(message.get("body", b"")))
            if not message.get("more_body", False):
                break
        if path == "/slow":
            await asyncio.sleep(0.2)
        if path == "/timeout":
            async with asyncio.timeout(1):  # needs a Task: the app must run in one
                await asyncio.sleep(0)
        if path == "/raise":
            raise RuntimeError("boom")
        if path == "/raise-after":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            raise RuntimeError("boom after the response")
        if path == "/nothing":
            return
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"one,", "more_body": True})
            await send({"type": "http.response.body", "body": b"two"})
            return
        text = f"{scope['method']} {path} {scope['query_string'].decode()} {len(body)}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % len(text)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": text})


@dataclass
class Served:
    server: HttpServer
    port: int
    ca: KeyPair
    app: Any

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ctx = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=ctx, server_hostname="127.0.0.1"
        )


async def _serve(app: Any, **options: Any) -> Served:
    ca = make_ca()
    pair = new_pair(ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*_files(pair))
    server = HttpServer(app, ssl_context=ctx, **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await server.start(sock)
    return Served(server, sock.getsockname()[1], ca, app)


_tmp: list[Any] = []


def _files(pair: KeyPair) -> tuple[str, str]:
    import tempfile

    directory = tempfile.TemporaryDirectory()
    _tmp.append(directory)
    cert = f"{directory.name}/tls.crt"
    key = f"{directory.name}/tls.key"
    with open(cert, "wb") as f:
        f.write(pair.cert_pem)
    with open(key, "wb") as f:
        f.write(pair.key_pem)
    return cert, key


@pytest.fixture
async def echo() -> AsyncIterator[Served]:
    served = await _serve(EchoApp(), keep_alive=120.0)
    yield served
    await served.server.shutdown(1.0)


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one response: status, headers (lower-case names), body (de-chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = b""
    return status, headers, body


def _post(path: str, body: bytes, *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode()
        + body
    )


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except (ConnectionError, ssl.SSLError):
        return True


# --- requests and responses ----------------------------------------------------------------------


async def test_keep_alive_answers_many_requests_on_one_connection(echo: Served) -> None:
    reader, writer = await echo.connect()
    for i in range(3):
        writer.write(_post(f"/r{i}?timeout=5s", b"x" * i))
        status, headers, body = await _response(reader)
        assert (status, body) == (200, f"POST /r{i} timeout=5s {i}".encode())
        assert "connection" not in headers
    writer.close()


async def test_pipelined_requests_are_answered_in_order(echo: Served) -> None:
    reader, writer = await echo.connect()
    # The first one is slow: the next two must wait for it, not overtake it.
    writer.write(_post("/slow", b"a") + _post("/b", b"bb") + _post("/c", b"ccc"))
    bodies = [(await _response(reader))[2] for _ in range(3)]
    assert bodies == [b"POST /slow  1", b"POST /b  2", b"POST /c  3"]
    writer.close()


async def test_chunked_request_body_is_joined(echo: Served) -> None:
    reader, writer = await echo.connect()
    writer.write(
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert (await _response(reader))[2] == b"POST /chunked  11"
    writer.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent(echo: Served) -> None:
    reader, writer = await echo.connect()
    writer.write(
        b"POST /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"body")
    assert (await _response(reader))[2] == b"POST /expect  4"
    writer.close()


async def test_large_body_is_streamed_to_the_app_in_parts() -> None:
    served = await _serve(EchoApp(), buffer_limit=1024)
    try:
        reader, writer = await served.connect()
        writer.write(_post("/big", b"z" * 200_000))
        assert (await _response(reader))[2] == b"POST /big  200000"
        assert len(served.app.chunks) > 1  # delivered with more_body, not in one piece
        writer.close()
    finally:
        await served.server.shutdown(1.0)


async def test_head_response_has_no_body_and_the_connection_stays_usable(echo: Served) -> None:
    reader, writer = await echo.connect()
    writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"content-length: 10" in head  # the length a GET would have, no body bytes
    writer.write(_post("/after", b""))
    assert (await _response(reader))[2] == b"POST /after  0"
    writer.close()


async def test_response_without_content_length_is_chunked(echo: Served) -> None:
    reader, writer = await echo.connect()
    writer.write(_post("/stream", b""))
    _, headers, body = await _response(reader)
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"one,two"
    writer.write(_post("/next", b""))  # the chunked response was terminated properly
    assert (await _response(reader))[2] == b"POST /next  0"
    writer.close()


async def test_apps_run_in_a_task_so_asyncio_timeout_works(echo: Served) -> None:
    reader, writer = await echo.connect()
    writer.write(_post("/timeout", b""))
    assert (await _response(reader))[0] == 200
    writer.close()


# --- closing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /old HTTP/1.0\r\n\r\n",
        b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ],
    ids=["http-1.0", "connection-close"],
)
async def test_server_closes_when_the_client_asks(echo: Served, request_bytes: bytes) -> None:
    reader, writer = await echo.connect()
    writer.write(request_bytes)
    status, headers, _ = await _response(reader)
    assert status == 200
    assert headers["connection"] == "close"
    assert await _closed(reader)


async def test_malformed_request_is_400_and_closed(echo: Served) -> None:
    reader, writer = await echo.connect()
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    status, headers, body = await _response(reader)
    assert status == 400
    assert b"malformed HTTP request" in body
    assert headers["connection"] == "close"
    assert await _closed(reader)
    assert echo.app.seen == []


async def test_request_head_over_the_limit_is_431() -> None:
    served = await _serve(EchoApp(), max_head=4096)
    try:
        reader, writer = await served.connect()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n")
        status, _, body = await _response(reader)
        assert status == 431
        assert b"4096" in body
        assert await _closed(reader)
    finally:
        await served.server.shutdown(1.0)


@pytest.mark.parametrize("path", ["/raise", "/nothing"])
async def test_app_failure_before_the_response_is_500(echo: Served, path: str) -> None:
    reader, writer = await echo.connect()
    writer.write(_post(path, b""))
    status, headers, _ = await _response(reader)
    assert status == 500
    assert headers["connection"] == "close"
    assert await _closed(reader)


async def test_app_failure_after_a_finished_response_keeps_the_connection(echo: Served) -> None:
    reader, writer = await echo.connect()
    writer.write(_post("/raise-after", b""))
    status, headers, _ = await _response(reader)
    assert status == 204
    assert "connection" not in headers
    writer.write(_post("/next", b""))
    assert (await _response(reader))[2] == b"POST /next  0"
    writer.close()


async def test_slow_request_is_408_and_idle_connection_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_module, "SWEEP_INTERVAL_SECONDS", 0.05)
    served = await _serve(EchoApp(), request_timeout=0.3, keep_alive=0.3)
    try:
        reader, writer = await served.connect()
        writer.write(b"POST /half HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        status, _, body = await _response(reader)
        assert status == 408
        assert b"not received in time" in body
        assert await _closed(reader)
        idle_reader, idle_writer = await served.connect()
        idle_writer.write(_post("/once", b""))
        assert (await _response(idle_reader))[0] == 200
        assert await _closed(idle_reader)  # nothing more sent: closed after keep_alive
    finally:
        await served.server.shutdown(1.0)


async def test_client_gone_mid_body_gives_the_app_a_disconnect() -> None:
    served = await _serve(EchoApp(), buffer_limit=16)
    try:
        _, writer = await served.connect()
        writer.write(b"POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()
        await asyncio.wait_for(served.app.disconnected.wait(), 5)
    finally:
        await served.server.shutdown(1.0)


async def test_shutdown_finishes_in_flight_requests_and_closes_idle_connections() -> None:
    served = await _serve(EchoApp())
    idle_reader, _ = await served.connect()
    busy_reader, busy_writer = await served.connect()
    busy_writer.write(_post("/slow", b"x"))
    await asyncio.sleep(0.05)  # the slow request is in flight
    shutdown = asyncio.create_task(served.server.shutdown(5.0))
    status, headers, body = await _response(busy_reader)
    assert (status, body) == (200, b"POST /slow  1")
    assert headers["connection"] == "close"
    assert await _closed(idle_reader)
    await asyncio.wait_for(shutdown, 5)
    assert not served.server.serving
    with pytest.raises(OSError):
        await served.connect()


async def test_shutdown_aborts_what_outlives_the_grace_period() -> None:
    class Hang:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await asyncio.sleep(60)

    served = await _serve(Hang())
    reader, writer = await served.connect()
    writer.write(_post("/hang", b""))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(served.server.shutdown(0.2), 5)
    assert await _closed(reader)
    assert not served.server.tasks  # the app was cancelled


# --- the admission app over this server ----------------------------------------------------------


async def test_admission_review_through_the_server_in_two_tls_records() -> None:
    runtime = Runtime(Settings())
    specs = [HandlerSpec("allow", "/validate", "validating", Allow())]
    app = AdmissionApp(group_webhooks(specs, AdmissionMetrics(runtime.registry)), runtime)
    served = await _serve(app)
    try:
        review = fixture_review("pod-update-label-by-user.json")
        review["request"]["object"]["metadata"]["annotations"] = {"pad": "p" * 20_000}
        body = json.dumps(review).encode()
        reader, writer = await served.connect()
        for _ in range(2):
            writer.write(_post("/validate?timeout=5s", body, "Content-Type: application/json"))
            status, headers, out = await _response(reader)
            answer: Message = json.loads(out)
            assert status == 200
            assert headers["content-type"] == "application/json"
            assert answer["response"] == {"uid": review["request"]["uid"], "allowed": True}
        writer.close()
    finally:
        await served.server.shutdown(1.0)


# --- any split of a byte stream gives the same answers -------------------------------------------


_requests = st.lists(
    st.tuples(
        st.sampled_from(["/a", "/b%20c", "/validate"]),
        st.binary(max_size=3000),
        st.booleans(),  # chunked request body
    ),
    min_size=1,
    max_size=4,
)


def _encode(path: str, body: bytes, chunked: bool) -> bytes:
    if not chunked:
        return _post(path + "?q=1", body)
    parts = [body[i : i + 700] for i in range(0, len(body), 700)]
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return (
        f"POST {path}?q=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + chunks
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=_requests, cuts=st.lists(st.integers(min_value=1, max_value=20_000), max_size=8))
def test_requests_split_anywhere_are_answered_in_order(
    requests: list[tuple[str, bytes, bool]], cuts: list[int]
) -> None:
    """Pipelined requests, plain and chunked, delivered in arbitrary pieces: every request is
    answered, in order, with its own path and body length (a plain-TCP server, for speed)."""
    stream = b"".join(_encode(*r) for r in requests)
    points = sorted({c % len(stream) for c in cuts} - {0})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]

    async def run() -> list[bytes]:
        server = HttpServer(EchoApp(), buffer_limit=1024)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await server.start(sock)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)
            bodies = [(await _response(reader))[2] for _ in requests]
            writer.close()
            return bodies
        finally:
            await server.shutdown(1.0)

    bodies = asyncio.run(run())
    assert bodies == [
        f"POST {path.replace('%20', ' ')} q=1 {len(body)}".encode() for path, body, _ in requests
    ]
