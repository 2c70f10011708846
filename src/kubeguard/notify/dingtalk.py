"""DingTalk custom robot ("自定义机器人") channel, as seed 004 uses it.

Signing (the robot's "加签" security setting): `sign = urlencode(base64(HMAC-SHA256(key=secret,
msg=f"{timestamp}\\n{secret}")))` with `timestamp` in milliseconds, both sent as query
parameters next to `access_token`. The robot answers HTTP 200 even when it rejects a message;
only `{"errcode": 0}` means delivered, so a non-zero errcode is a failure (seed 004 checked the
HTTP status only and reported rejected messages as sent).

The URL (it contains the access token) and the secret are never logged: error messages are
built here and redacted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx2
import msgspec

from kubeguard.notify import Notification
from kubeguard.notify.channel import DeliveryError, http_status_error, redact

# errcodes worth retrying: -1 "系统繁忙" (system busy), 130101 "send too fast" (more than 20
# messages a minute per robot). Everything else (bad token, bad signature, keyword or IP
# whitelist mismatch, malformed message) will fail the same way again.
RETRYABLE_ERRCODES = frozenset({-1, 130101})


def sign(secret: str, timestamp_ms: int) -> str:
    """The URL-encoded `sign` parameter for `timestamp_ms`."""
    string_to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), string_to_sign, hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest).decode())


def signed_url(url: str, secret: str, timestamp_ms: int) -> str:
    """`url` with `timestamp` and `sign` appended (`&` when it already has a query string).
    Without a secret the robot does not use signing and the URL is returned unchanged."""
    if not secret:
        return url
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={timestamp_ms}&sign={sign(secret, timestamp_ms)}"


def message_body(notification: Notification, msgtype: str) -> dict[str, Any]:
    """The robot message for a notification, `markdown` or `text`."""
    n = notification
    if msgtype == "markdown":
        lines = [f"### {n.title}", "", n.text, ""]
        lines += [f"- **{k}**: {v}" for k, v in n.fields.items()]
        lines += ["", f"event: `{n.event}` (kubeguard)"]
        return {"msgtype": "markdown", "markdown": {"title": n.title, "text": "\n".join(lines)}}
    parts = [n.title, n.text, *(f"{k}: {v}" for k, v in n.fields.items()), f"event: {n.event}"]
    return {"msgtype": "text", "text": {"content": "\n".join(p for p in parts if p)}}


class _RobotAnswer(msgspec.Struct):
    errcode: int | None = None
    errmsg: str = ""


class DingTalkChannel:
    """Posts notifications to one DingTalk robot."""

    name = "dingtalk"

    def __init__(
        self,
        url: str,
        secret: str = "",
        *,
        msgtype: str = "markdown",
        timeout: float = 5.0,
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError("the DingTalk robot URL must start with https:// (or http://)")
        if msgtype not in ("markdown", "text"):
            raise ValueError(f"DingTalk message type must be markdown or text, got {msgtype!r}")
        self._url = url
        self._secret = secret
        self.msgtype = msgtype
        self._timeout = timeout
        self._verify = verify
        self._clock = clock
        self._client: httpx2.AsyncClient | None = None
        query = urllib.parse.urlsplit(url).query
        self._token = urllib.parse.parse_qs(query).get("access_token", [""])[0]

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = httpx2.AsyncClient(verify=self._verify, timeout=self._timeout)
        return self._client

    def _redact(self, text: str) -> str:
        return redact(text, self._url, self._secret, self._token)

    async def send(self, notification: Notification) -> None:
        url = signed_url(self._url, self._secret, int(self._clock() * 1000))
        body = msgspec.json.encode(message_body(notification, self.msgtype))
        try:
            resp = await self._http().post(
                url, content=body, headers={"Content-Type": "application/json; charset=utf-8"}
            )
        except httpx2.TimeoutException:
            raise DeliveryError("timed out", retryable=True) from None
        except httpx2.HTTPError as exc:
            detail = self._redact(f"{type(exc).__name__}: {exc}")
            raise DeliveryError(detail, retryable=True) from None
        if resp.status_code != 200:
            raise http_status_error(resp.status_code, self._redact(resp.text).encode())
        try:
            answer = msgspec.json.decode(resp.content, type=_RobotAnswer)
        except msgspec.DecodeError:
            raise DeliveryError(
                "the robot answered HTTP 200 with a body that is not its JSON answer: "
                + self._redact(resp.text[:200]),
                retryable=False,
            ) from None
        if answer.errcode != 0:
            raise DeliveryError(
                f"the robot rejected the message: errcode {answer.errcode}: "
                + self._redact(answer.errmsg),
                retryable=answer.errcode in RETRYABLE_ERRCODES,
            )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
