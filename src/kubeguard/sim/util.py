"""Small helpers shared by the simulated cluster: timestamps, uids, copies and `Status` errors.

Every error the simulated API server returns is a real `metav1.Status` object with the reason
and code kube-apiserver uses for the same situation.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from kubeguard.kube.objects import format_time

JSON = dict[str, Any]

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(t: dt.datetime | None = None) -> str:
    """A `metav1.Time`: RFC 3339 with second precision and a `Z` suffix."""
    return format_time(t or now())


def micro_time(t: dt.datetime | None = None) -> str:
    """A `metav1.MicroTime`: RFC 3339 with microsecond precision."""
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> dt.datetime:
    """Parse a `Time` or `MicroTime` string."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def new_uid() -> str:
    return str(uuid.uuid4())


def deepcopy(obj: Any) -> Any:
    """A fast deep copy of JSON data (dicts, lists, scalars)."""
    return _decode(_encode(obj))


class ApiError(Exception):
    """An API failure carrying the `Status` object that the client receives."""

    def __init__(self, status: JSON) -> None:
        super().__init__(status.get("message", ""))
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status.get("code", 500))

    @property
    def reason(self) -> str:
        return str(self.status.get("reason", ""))


def status_failure(
    code: int,
    message: str,
    reason: str | None = None,
    details: JSON | None = None,
) -> JSON:
    """A `Status` object with `status: Failure` in kube-apiserver's key order."""
    out: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    if reason:
        out["reason"] = reason
    if details is not None:
        out["details"] = details
    out["code"] = code
    return out


def _details(name: str, group: str, kind: str) -> JSON:
    details: JSON = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    return details


def _qualified(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(group: str, resource: str, name: str) -> ApiError:
    return ApiError(
        status_failure(
            404,
            f'{_qualified(group, resource)} "{name}" not found',
            "NotFound",
            _details(name, group, resource),
        )
    )


def unknown_resource() -> ApiError:
    return ApiError(
        status_failure(404, "the server could not find the requested resource", "NotFound", {})
    )


def already_exists(group: str, resource: str, name: str) -> ApiError:
    return ApiError(
        status_failure(
            409,
            f'{_qualified(group, resource)} "{name}" already exists',
            "AlreadyExists",
            _details(name, group, resource),
        )
    )


def conflict(group: str, resource: str, name: str, why: str | None = None) -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    return ApiError(
        status_failure(
            409,
            f'Operation cannot be fulfilled on {_qualified(group, resource)} "{name}": {why}',
            "Conflict",
            _details(name, group, resource),
        )
    )


def bad_request(message: str) -> ApiError:
    return ApiError(status_failure(400, message, "BadRequest"))


def invalid(group: str, kind: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """A 422 Invalid error; each cause is (reason, field, message)."""
    qualified = f"{kind}.{group}" if group else kind
    text = ", ".join(f"{field}: {msg}" for _, field, msg in causes)
    if len(causes) > 1:
        text = f"[{text}]"
    details: JSON = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [
        {"reason": reason, "message": msg, "field": field} for reason, field, msg in causes
    ]
    return ApiError(
        status_failure(422, f'{qualified} "{name}" is invalid: {text}', "Invalid", details)
    )


def method_not_allowed() -> ApiError:
    return ApiError(
        status_failure(
            405,
            "the server does not allow this method on the requested resource",
            "MethodNotAllowed",
            {},
        )
    )


def unauthorized() -> ApiError:
    return ApiError(status_failure(401, "Unauthorized", "Unauthorized"))


def forbidden(message: str, group: str, resource: str, name: str) -> ApiError:
    details: JSON = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = resource
    return ApiError(status_failure(403, message, "Forbidden", details))


def expired(message: str) -> ApiError:
    return ApiError(status_failure(410, message, "Expired"))


def too_large_rv(rv: int, current: int) -> ApiError:
    return ApiError(
        status_failure(
            504,
            f"Timeout: Too large resource version: {rv}, current: {current}",
            "Timeout",
            {
                "causes": [
                    {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
                ],
                "retryAfterSeconds": 1,
            },
        )
    )


def internal_error(message: str, cause: str | None = None) -> ApiError:
    details: JSON = {"causes": [{"message": cause or message}]}
    return ApiError(
        status_failure(500, f"Internal error occurred: {message}", "InternalError", details)
    )


def success_status(code: int | None = None, details: JSON | None = None) -> JSON:
    out: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details is not None:
        out["details"] = details
    if code is not None:
        out["code"] = code
    return out
