"""Raw REST calls over `KubeClient.http` with msgspec bodies, and the API error type.

Every non-2xx answer of kube-apiserver carries a `metav1.Status`; `KubeApiError` keeps it so
callers branch on `code`/`reason` (409 Conflict vs AlreadyExists, 410 Expired, 429 with a
DisruptionBudget cause) instead of parsing messages.
"""

from __future__ import annotations

from typing import Any

import httpx2
import msgspec

from .objects import Status

_status_decoder = msgspec.json.Decoder(Status)
_encode = msgspec.json.encode

JSON_TYPE = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class KubeApiError(Exception):
    """An API request answered with an error Status (or an undecodable error body)."""

    def __init__(self, status: Status, *, method: str = "", path: str = "") -> None:
        self.status = status
        self.method = method
        self.path = path
        where = f"{method} {path}: " if method else ""
        super().__init__(f"{where}{status.code} {status.reason or 'Error'}: {status.message}")

    @property
    def code(self) -> int:
        return self.status.code

    @property
    def reason(self) -> str:
        return self.status.reason


def decode_status(code: int, body: bytes) -> Status:
    """The Status in an error body; a synthesized one when the body is not a Status (a proxy's
    HTML page, an empty body), so callers always get a code and a readable message."""
    try:
        status = _status_decoder.decode(body)
    except msgspec.DecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        return Status(status="Failure", code=code, message=text or f"HTTP {code} (empty body)")
    if not status.code:
        status = msgspec.structs.replace(status, code=code)
    return status


async def call(
    http: httpx2.AsyncClient,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: Any = None,
    content_type: str = JSON_TYPE,
    http_timeout: float | None = None,
) -> bytes:
    """One request; returns the body of a 2xx answer, raises KubeApiError otherwise (and
    httpx2 transport errors as they are)."""
    content = None if body is None else (body if isinstance(body, bytes) else _encode(body))
    headers = {"Accept": JSON_TYPE}
    if content is not None:
        headers["Content-Type"] = content_type
    kwargs: dict[str, Any] = {}
    if http_timeout is not None:
        kwargs["timeout"] = http_timeout
    resp = await http.request(
        method, path, params=params, content=content, headers=headers, **kwargs
    )
    if 200 <= resp.status_code < 300:
        return resp.content
    raise KubeApiError(decode_status(resp.status_code, resp.content), method=method, path=path)


def resource_path(
    group: str,
    version: str,
    resource: str,
    namespace: str | None = None,
    name: str = "",
    subresource: str = "",
) -> str:
    """`/api/v1/...` for the core group, `/apis/<group>/<version>/...` otherwise."""
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{resource}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base
