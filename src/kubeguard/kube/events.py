"""A Kubernetes event recorder (core/v1 Events), modelled on client-go's recorder.

`record()` never blocks and never raises: it puts the event on a bounded queue (full queue:
dropped and counted). A background task (`run()`) sends them:

* **aggregation**: records arriving within `flush_interval` with the same involved object,
  type, reason and message become one API write carrying their count;
* **de-duplication** (client-go's EventCorrelator): when the same event was written within
  `dedupe_window`, the existing Event is PATCHed with the new `count` and `lastTimestamp`
  instead of creating another one (a PATCH that finds the Event gone creates a new one);
* **rate limit**: a token bucket per involved object (client-go's spam filter uses burst 25,
  one token per 5 minutes). Writes over the limit are not dropped but kept aggregated and sent
  when a token is available, so the final `count` stays exact; the number of such pending
  aggregates is bounded (`max_pending`), beyond which new ones are dropped and counted.

Body shape per the real capture `api/event-create-core-v1.json`; `source.component` and
`reportingComponent` are `kubeguard`, `reportingInstance` the pod name.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import httpx2
import msgspec
from prometheus_client import CollectorRegistry, Counter

from .client import KubeClient
from .objects import NodeView, PodView, format_time
from .rest import MERGE_PATCH, KubeApiError, call

log = logging.getLogger("kubeguard.kube.events")

NORMAL = "Normal"
WARNING = "Warning"
MAX_MESSAGE = 1024


@dataclass(frozen=True, slots=True)
class ObjectReference:
    """The `involvedObject` of an Event."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    api_version: str = "v1"
    resource_version: str = ""

    @classmethod
    def pod(cls, pod: PodView) -> ObjectReference:
        m = pod.metadata
        return cls("Pod", m.name, m.namespace, m.uid, "v1", m.resource_version)

    @classmethod
    def node(cls, node: NodeView) -> ObjectReference:
        # client-go's recorder refers to nodes by name with the name as uid (kubelet style);
        # we use the real uid when known.
        m = node.metadata
        return cls("Node", m.name, "", m.uid or m.name, "v1", "")

    def to_wire(self) -> dict[str, str]:
        out = {"kind": self.kind}
        if self.namespace:
            out["namespace"] = self.namespace
        out["name"] = self.name
        if self.uid:
            out["uid"] = self.uid
        out["apiVersion"] = self.api_version
        if self.resource_version:
            out["resourceVersion"] = self.resource_version
        return out


_Key = tuple[str, str, str, str, str, str, str]  # kind, ns, name, uid, type, reason, message


@dataclass(slots=True)
class _Aggregate:
    ref: ObjectReference
    type: str
    reason: str
    message: str
    count: int
    first: dt.datetime
    last: dt.datetime
    attempts: int = 0


@dataclass(slots=True)
class _Posted:
    name: str
    namespace: str
    count: int
    first: dt.datetime
    written_at: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class EventRecorder:
    """Records core/v1 Events. `client=None` gives a recorder that drops everything (manifest
    rendering and `--local` runs without a cluster).

        recorder = EventRecorder(kube, registry=registry)
        runtime.add_task("events", recorder.run)
        recorder.record(ObjectReference.pod(pod), WARNING, "EvictionDenied", "...")
    """

    def __init__(
        self,
        client: KubeClient | None,
        *,
        component: str = "kubeguard",
        instance: str | None = None,
        host: str = "",
        registry: CollectorRegistry | None = None,
        queue_size: int = 1000,
        flush_interval: float = 1.0,
        dedupe_window: float = 600.0,
        burst: int = 25,
        refill_seconds: float = 300.0,
        cache_size: int = 4096,
        max_pending: int = 4096,
        request_timeout: float = 5.0,
        max_attempts: int = 3,
    ) -> None:
        self.client = client
        self.component = component
        self.instance = instance or os.environ.get("POD_NAME") or socket.gethostname()
        self.host = host
        self.flush_interval = flush_interval
        self.dedupe_window = dedupe_window
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.cache_size = cache_size
        self.max_pending = max_pending
        self.request_timeout = request_timeout
        self.max_attempts = max_attempts
        self._queue: asyncio.Queue[_Aggregate] = asyncio.Queue(maxsize=queue_size)
        self._pending: dict[_Key, _Aggregate] = {}
        self._posted: OrderedDict[_Key, _Posted] = OrderedDict()
        self._buckets: OrderedDict[tuple[str, str, str, str], _Bucket] = OrderedDict()
        self._lock = asyncio.Lock()
        reg = registry or CollectorRegistry()
        self.sent = Counter(
            "events_sent_total", "Kubernetes Events written, by action.", ["action"], registry=reg
        )
        self.dropped = Counter(
            "events_dropped_total",
            "Kubernetes Events not written, by reason.",
            ["reason"],
            registry=reg,
        )

    # ------------------------------------------------------------------ producer side

    def record(self, ref: ObjectReference, type_: str, reason: str, message: str) -> None:
        """Queue an event; never blocks, never raises."""
        if self.client is None:
            return
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        now = dt.datetime.now(dt.UTC)
        try:
            self._queue.put_nowait(_Aggregate(ref, type_, reason, message, 1, now, now))
        except asyncio.QueueFull:
            self.dropped.labels("queue_full").inc()

    # ------------------------------------------------------------------ consumer side

    async def run(self) -> None:
        """Send queued events until cancelled."""
        while True:
            wait = self.flush_interval if self._pending else None
            try:
                first = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                first = None
            if first is not None:
                self._merge(first)
                # Let a burst (5 denied DELETEs 60 ms apart) collapse into one write.
                await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued or pending that the rate limit allows, now."""
        async with self._lock:
            while True:
                try:
                    self._merge(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            pending, self._pending = self._pending, {}
            for key, agg in pending.items():
                if not self._take_token(agg.ref):
                    self._defer(key, agg, "rate_limited")
                    continue
                try:
                    await self._write(key, agg)
                except (KubeApiError, httpx2.HTTPError, OSError) as exc:
                    agg.attempts += 1
                    retryable = not isinstance(exc, KubeApiError) or exc.code in (429, 500, 503)
                    if retryable and agg.attempts < self.max_attempts:
                        self._defer(key, agg, "error")
                    else:
                        self.dropped.labels("error").inc(agg.count)
                    log.warning(
                        "could not write event %s %s for %s %s/%s: %s",
                        agg.type,
                        agg.reason,
                        agg.ref.kind,
                        agg.ref.namespace,
                        agg.ref.name,
                        exc,
                    )

    def _merge(self, agg: _Aggregate) -> None:
        key: _Key = (
            agg.ref.kind,
            agg.ref.namespace,
            agg.ref.name,
            agg.ref.uid,
            agg.type,
            agg.reason,
            agg.message,
        )
        existing = self._pending.get(key)
        if existing is not None:
            existing.count += agg.count
            existing.last = max(existing.last, agg.last)
            existing.first = min(existing.first, agg.first)
            return
        if len(self._pending) >= self.max_pending:
            self.dropped.labels("pending_full").inc(agg.count)
            return
        self._pending[key] = agg

    def _defer(self, key: _Key, agg: _Aggregate, why: str) -> None:
        existing = self._pending.get(key)
        if existing is not None:  # merged again while we were writing
            existing.count += agg.count
            existing.first = min(existing.first, agg.first)
            existing.attempts = max(existing.attempts, agg.attempts)
        elif len(self._pending) >= self.max_pending:
            self.dropped.labels(why).inc(agg.count)
        else:
            self._pending[key] = agg

    def _take_token(self, ref: ObjectReference) -> bool:
        key = (ref.kind, ref.namespace, ref.name, ref.uid)
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.cache_size:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            rate = 1.0 / self.refill_seconds if self.refill_seconds > 0 else float("inf")
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    # ------------------------------------------------------------------ API writes

    async def _write(self, key: _Key, agg: _Aggregate) -> None:
        assert self.client is not None
        http = self.client.http
        posted = self._posted.get(key)
        now = time.monotonic()
        if posted is not None and now - posted.written_at < self.dedupe_window:
            count = posted.count + agg.count
            patch = {"count": count, "lastTimestamp": format_time(agg.last), "message": agg.message}
            path = f"/api/v1/namespaces/{posted.namespace}/events/{posted.name}"
            try:
                await call(
                    http,
                    "PATCH",
                    path,
                    body=patch,
                    content_type=MERGE_PATCH,
                    http_timeout=self.request_timeout,
                )
            except KubeApiError as exc:
                if exc.code != 404:
                    raise
                del self._posted[key]  # the Event expired (TTL 1 h by default): create anew
            else:
                posted.count = count
                posted.written_at = now
                self._posted.move_to_end(key)
                self.sent.labels("patch").inc()
                return
        namespace = agg.ref.namespace or "default"  # cluster-scoped objects: like client-go
        name = f"{agg.ref.name}.{time.time_ns():x}"
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": agg.ref.to_wire(),
            "reason": agg.reason,
            "message": agg.message,
            "source": {"component": self.component, **({"host": self.host} if self.host else {})},
            "firstTimestamp": format_time(agg.first),
            "lastTimestamp": format_time(agg.last),
            "count": agg.count,
            "type": agg.type,
            "eventTime": None,
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }
        raw = await call(
            http,
            "POST",
            f"/api/v1/namespaces/{namespace}/events",
            body=body,
            http_timeout=self.request_timeout,
        )
        with contextlib.suppress(msgspec.MsgspecError):
            name = msgspec.json.decode(raw).get("metadata", {}).get("name", name)
        self._posted[key] = _Posted(name, namespace, agg.count, agg.first, now)
        if len(self._posted) > self.cache_size:
            self._posted.popitem(last=False)
        self.sent.labels("create").inc()
