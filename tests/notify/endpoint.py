"""A test DingTalk robot: a small HTTPS server on 127.0.0.1 (cert from `kubeguard.certs`) that
checks the signature the way DingTalk does and answers like the robot.

Modes: "ok" ({"errcode": 0}), "errcode" (HTTP 200 with errcode 310000, sign mismatch),
"http500", "hang" (reads the request, never answers until released).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import shutil
import ssl
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeguard import certs


@dataclass
class Received:
    path: str
    query: dict[str, str]
    body: dict[str, Any]
    signature_ok: bool | None  # None when the robot has no secret


@dataclass
class FakeRobot:
    secret: str = ""
    token: str = "tok-123"
    mode: str = "ok"
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def __post_init__(self) -> None:
        self.ca = certs.generate_ca("fake-dingtalk-ca")
        self._dir = Path(tempfile.mkdtemp(prefix="kubeguard-robot-"))
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/robot/send?access_token={self.token}"

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca.cert_pem.decode())

    def verify(self, query: dict[str, str]) -> bool:
        """DingTalk's check: same HMAC, and a timestamp within one hour of now."""
        timestamp, sign = query.get("timestamp", ""), query.get("sign", "")
        if not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > 3600_000:
            return False
        expected = base64.b64encode(
            hmac.new(
                self.secret.encode(), f"{timestamp}\n{self.secret}".encode(), hashlib.sha256
            ).digest()
        ).decode()
        return hmac.compare_digest(sign, expected)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                _method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.attempts += 1
                parts = urllib.parse.urlsplit(target)
                # parse_qs decodes the URL encoding, leaving the base64 signature.
                query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
                signature_ok = self.verify(query) if self.secret else None
                self.received.append(Received(parts.path, query, json.loads(body), signature_ok))
                self.arrived.set()
                if self.mode == "hang":
                    await self.release.wait()
                    return
                if self.mode == "http500":
                    status, answer = 500, {"error": "boom"}
                elif self.mode == "errcode" or signature_ok is False:
                    status, answer = 200, {"errcode": 310000, "errmsg": "sign not match"}
                else:
                    status, answer = 200, {"errcode": 0, "errmsg": "ok"}
                data = json.dumps(answer).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def __aenter__(self) -> FakeRobot:
        serving = certs.generate_serving(
            self.ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        certs.write_cert_dir(self._dir, self.ca, serving)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self._dir / certs.TLS_CERT_FILE, self._dir / certs.TLS_KEY_FILE)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        shutil.rmtree(self._dir, ignore_errors=True)
