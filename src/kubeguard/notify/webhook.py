"""Generic JSON webhook channel: POSTs each notification as one JSON object.

Body: `{"source": "kubeguard", "event", "title", "text", "fields", "time"}` (RFC 3339 UTC).
Any 2xx answer is success; 5xx, 429 and transport errors are retried, other 4xx are not.
The URL may carry credentials and is never logged.
"""

from __future__ import annotations

import datetime as dt
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx2
import msgspec

from kubeguard.notify import Notification
from kubeguard.notify.channel import DeliveryError, http_status_error, redact


def payload(notification: Notification, now: dt.datetime | None = None) -> dict[str, Any]:
    stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return {
        "source": "kubeguard",
        "event": notification.event,
        "title": notification.title,
        "text": notification.text,
        "fields": dict(notification.fields),
        "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


class WebhookChannel:
    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError("the notification webhook URL must start with https:// or http://")
        self._url = url
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._timeout = timeout
        self._verify = verify
        self._client: httpx2.AsyncClient | None = None
        parts = urllib.parse.urlsplit(url)
        self._secrets = (url, parts.query, parts.password or "")

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = httpx2.AsyncClient(verify=self._verify, timeout=self._timeout)
        return self._client

    async def send(self, notification: Notification) -> None:
        body = msgspec.json.encode(payload(notification))
        try:
            resp = await self._http().post(self._url, content=body, headers=self._headers)
        except httpx2.TimeoutException:
            raise DeliveryError("timed out", retryable=True) from None
        except httpx2.HTTPError as exc:
            detail = redact(f"{type(exc).__name__}: {exc}", *self._secrets)
            raise DeliveryError(detail, retryable=True) from None
        if not 200 <= resp.status_code < 300:
            raise http_status_error(resp.status_code, redact(resp.text, *self._secrets).encode())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
