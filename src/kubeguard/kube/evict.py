"""Evicting and deleting pods, with the outcome typed the way re-drive needs it.

What the real API server answers (fixtures `responses/pod-eviction-*.json`):

* 201 with a bare `Status` (`status: Success`): evicted (also for dry runs and v1beta1);
* 429 `reason: TooManyRequests` with `details.causes[].reason: DisruptionBudget`: a
  PodDisruptionBudget blocks it (checked after admission); retry later;
* a webhook denial: the message starts with `admission webhook "<name>" denied the request`,
  with the code the webhook chose (429 for kubeguard's own denials, no `reason` field);
* 404: the pod is gone; 409 with a uid precondition: the name now belongs to another pod.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2

from .client import KubeClient
from .rest import KubeApiError, call


@dataclass(frozen=True, slots=True)
class Evicted:
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Deleted:
    pass


@dataclass(frozen=True, slots=True)
class BlockedByPDB:
    message: str


@dataclass(frozen=True, slots=True)
class DeniedByWebhook:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class NotFound:
    """The pod does not exist, or (uid precondition failed) is no longer the same pod."""

    message: str = ""


@dataclass(frozen=True, slots=True)
class EvictError:
    """Anything else: `code` 0 for a transport error. `retry_after` from the Status details
    (API priority and fairness throttling sends one)."""

    message: str
    code: int = 0
    retry_after: float | None = None


EvictOutcome = Evicted | BlockedByPDB | DeniedByWebhook | NotFound | EvictError
DeleteOutcome = Deleted | DeniedByWebhook | NotFound | EvictError


def classify(exc: KubeApiError) -> BlockedByPDB | DeniedByWebhook | NotFound | EvictError:
    status = exc.status
    if status.message.startswith("admission webhook"):
        return DeniedByWebhook(status.code, status.message)
    if status.code == 429 and status.has_cause("DisruptionBudget"):
        return BlockedByPDB(status.message)
    if status.code == 404:
        return NotFound(status.message)
    if status.code == 409 and "precondition" in status.message.lower():
        return NotFound(status.message)
    retry = status.details.retry_after_seconds if status.details else None
    return EvictError(
        status.message or exc.reason or f"HTTP {status.code}",
        status.code,
        float(retry) if retry is not None else None,
    )


def _delete_options(grace_seconds: int | None, uid: str | None, dry_run: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if grace_seconds is not None:
        opts["gracePeriodSeconds"] = grace_seconds
    if uid:
        opts["preconditions"] = {"uid": uid}
    if dry_run:
        opts["dryRun"] = ["All"]
    return opts


async def evict(
    client: KubeClient,
    namespace: str,
    name: str,
    *,
    grace_seconds: int | None = None,
    uid: str | None = None,
    dry_run: bool = False,
    http_timeout: float = 10.0,
) -> EvictOutcome:
    """POST a policy/v1 Eviction for the pod. `uid` adds a precondition so a pod re-created
    under the same name (StatefulSet) is never evicted by mistake. Never raises for API or
    transport errors: they come back as `EvictError`."""
    body: dict[str, Any] = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
    }
    opts = _delete_options(grace_seconds, uid, dry_run)
    if opts:
        body["deleteOptions"] = opts
    params = {"dryRun": "All"} if dry_run else None
    try:
        await call(
            client.http,
            "POST",
            f"/api/v1/namespaces/{namespace}/pods/{name}/eviction",
            body=body,
            params=params,
            http_timeout=http_timeout,
        )
    except KubeApiError as exc:
        return classify(exc)
    except (httpx2.HTTPError, OSError) as exc:
        return EvictError(f"{type(exc).__name__}: {exc}")
    return Evicted(dry_run=dry_run)


async def delete_pod(
    client: KubeClient,
    namespace: str,
    name: str,
    uid_precondition: str | None,
    grace: int | None,
    *,
    http_timeout: float = 10.0,
) -> DeleteOutcome:
    """DELETE the pod (bypasses PodDisruptionBudgets; re-drive uses it only when forced),
    with a uid precondition and a grace period. Never raises for API or transport errors."""
    opts = _delete_options(grace, uid_precondition, False)
    body = {"apiVersion": "v1", "kind": "DeleteOptions", **opts}
    try:
        await call(
            client.http,
            "DELETE",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            body=body,
            http_timeout=http_timeout,
        )
    except KubeApiError as exc:
        outcome = classify(exc)
        return (
            outcome if not isinstance(outcome, BlockedByPDB) else EvictError(outcome.message, 429)
        )
    except (httpx2.HTTPError, OSError) as exc:
        return EvictError(f"{type(exc).__name__}: {exc}")
    return Deleted()
