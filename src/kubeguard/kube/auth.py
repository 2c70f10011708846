"""Delegated authentication and authorization for kubeguard's own HTTP API (the callbacks),
like kube-rbac-proxy: a bearer token is checked with a `TokenReview`, the resulting user with a
`SubjectAccessReview`.

Wire facts from the real captures (`api/tokenreview-*.json`, `api/subjectaccessreview-*.json`):
an invalid token's review has no `authenticated` field, `user: {}` and `status.error`; a
denied access review has only `allowed: false` (no `reason`, no `denied`).

Results are cached briefly (positive ~10 s, negative ~2 s, bounded LRU, keyed by a SHA-256 of
the token, never the token itself), and concurrent identical reviews share one API call. API
failures are not cached and raise `AuthUnavailable`, so the caller can answer 503 instead of
mistaking an outage for a bad token.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import httpx2
import msgspec

from .client import KubeClient
from .rest import KubeApiError, call

K = TypeVar("K")
V = TypeVar("V")


class UserInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated user as a TokenReview reports it."""

    username: str = ""
    uid: str = ""
    groups: list[str] = []
    extra: dict[str, list[str]] = {}


class _TokenReviewStatus(msgspec.Struct, frozen=True, kw_only=True):
    authenticated: bool = False  # absent on an invalid token
    user: UserInfo = UserInfo()
    audiences: list[str] = []
    error: str = ""


class _TokenReview(msgspec.Struct, frozen=True, kw_only=True):
    status: _TokenReviewStatus = _TokenReviewStatus()


class _AccessReviewStatus(msgspec.Struct, frozen=True, kw_only=True):
    allowed: bool = False
    denied: bool = False
    reason: str = ""
    evaluation_error: str = msgspec.field(default="", name="evaluationError")


class _AccessReview(msgspec.Struct, frozen=True, kw_only=True):
    status: _AccessReviewStatus = _AccessReviewStatus()


_token_review = msgspec.json.Decoder(_TokenReview)
_access_review = msgspec.json.Decoder(_AccessReview)


class AuthUnavailable(Exception):
    """The review could not be made (API server unreachable or erroring)."""


class _TTLCache(Generic[K, V]):
    """A small LRU with per-entry expiry, plus single-flight for concurrent misses."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._inflight: dict[K, asyncio.Future[tuple[V, float]]] = {}

    def get(self, key: K) -> tuple[bool, V | None]:
        entry = self._data.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if time.monotonic() >= expires:
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, value

    def put(self, key: K, value: V, ttl: float) -> None:
        if ttl <= 0:
            return
        self._data[key] = (time.monotonic() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        """Cached value, or the result of `load() -> (value, ttl)`, shared by every caller
        waiting for the same key at the same time."""
        hit, value = self.get(key)
        if hit:
            return value  # type: ignore[return-value]
        fut = self._inflight.get(key)
        if fut is not None:
            return (await asyncio.shield(fut))[0]
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await load()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            fut.set_result(result)
        finally:
            del self._inflight[key]
        self.put(key, result[0], result[1])
        return result[0]

    def __len__(self) -> int:
        return len(self._data)


class Authenticator(Protocol):
    """Authentication and authorization of API callers; `DelegatingAuth` implements it."""

    async def authenticate(self, token: str) -> UserInfo | None: ...

    async def authorize(
        self,
        user: UserInfo,
        verb: str,
        group: str,
        resource: str,
        namespace: str = "",
        name: str | None = None,
        subresource: str = "",
    ) -> tuple[bool, str]: ...


class DelegatingAuth:
    """TokenReview + SubjectAccessReview against the cluster.

    auth = DelegatingAuth(kube)
    user = await auth.authenticate(token)           # None: 401
    ok, why = await auth.authorize(user, "update", "kubeguard.io", "interception",
                                   namespace="kubeguard-system")   # not ok: 403
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        audiences: list[str] | None = None,
        positive_ttl: float = 10.0,
        negative_ttl: float = 2.0,
        max_entries: int = 1024,
        request_timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.audiences = list(audiences or [])
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self.request_timeout = request_timeout
        self._tokens: _TTLCache[str, UserInfo | None] = _TTLCache(max_entries)
        self._access: _TTLCache[tuple[Any, ...], tuple[bool, str]] = _TTLCache(max_entries)

    async def _post(self, path: str, body: dict[str, Any]) -> bytes:
        try:
            return await call(
                self.client.http, "POST", path, body=body, http_timeout=self.request_timeout
            )
        except KubeApiError as exc:
            raise AuthUnavailable(f"{path}: {exc}") from exc
        except (httpx2.HTTPError, OSError) as exc:
            raise AuthUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc

    async def authenticate(self, token: str) -> UserInfo | None:
        """The token's user, or None when the token is not valid (answer 401).
        Raises AuthUnavailable when the TokenReview cannot be made."""
        if not token:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()

        async def load() -> tuple[UserInfo | None, float]:
            spec: dict[str, Any] = {"token": token}
            if self.audiences:
                spec["audiences"] = self.audiences
            raw = await self._post(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
            )
            status = _token_review.decode(raw).status
            if status.authenticated and status.user.username:
                return status.user, self.positive_ttl
            return None, self.negative_ttl

        return await self._tokens.get_or_load(key, load)

    async def authorize(
        self,
        user: UserInfo,
        verb: str,
        group: str,
        resource: str,
        namespace: str = "",
        name: str | None = None,
        subresource: str = "",
    ) -> tuple[bool, str]:
        """(allowed, reason) from a SubjectAccessReview for the user's resource request.
        A denial without a reason (the usual RBAC answer) gets a readable one.
        Raises AuthUnavailable when the review cannot be made."""
        key = (
            user.username,
            user.uid,
            tuple(user.groups),
            tuple(sorted((k, tuple(v)) for k, v in user.extra.items())),
            verb,
            group,
            resource,
            subresource,
            namespace,
            name or "",
        )

        async def load() -> tuple[tuple[bool, str], float]:
            attrs: dict[str, str] = {"verb": verb, "group": group, "resource": resource}
            if namespace:
                attrs["namespace"] = namespace
            if name:
                attrs["name"] = name
            if subresource:
                attrs["subresource"] = subresource
            spec: dict[str, Any] = {
                "resourceAttributes": attrs,
                "user": user.username,
                "groups": list(user.groups),
            }
            if user.uid:
                spec["uid"] = user.uid
            if user.extra:
                spec["extra"] = {k: list(v) for k, v in user.extra.items()}
            raw = await self._post(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                {
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SubjectAccessReview",
                    "spec": spec,
                },
            )
            status = _access_review.decode(raw).status
            if status.allowed and not status.denied:
                return (True, status.reason), self.positive_ttl
            target = f"{resource}/{subresource}" if subresource else resource
            if group:
                target = f"{target}.{group}"
            where = f' in namespace "{namespace}"' if namespace else ""
            reason = (
                status.reason
                or status.evaluation_error
                or (f'user "{user.username}" cannot {verb} {target}{where}')
            )
            return (False, reason), self.negative_ttl

        return await self._access.get_or_load(key, load)
