"""A generic async reflector (list, then watch) over msgspec views, and the per-node pod index.

The reflector follows client-go's contract:

* list (paginated with `limit`/`continue`), then watch from the list's resourceVersion with
  `allowWatchBookmarks=true` and a randomized `timeoutSeconds`;
* each stream line is decoded by msgspec straight into the view type;
* BOOKMARK only advances the resourceVersion;
* the API server reports a too-old resourceVersion as a single `ERROR` event with code 410
  inside an HTTP 200 stream (fixture `watch-nodes-too-old-resource-version.jsonl`), or, for a
  list, as an HTTP 410: both cause a full re-list that replaces the store and synthesizes the
  add/update/delete events the watch missed;
* a stream that ends (server timeout) is re-opened from the last resourceVersion at once; a
  failure (network error, HTTP error, undecodable line) is retried with jittered exponential
  backoff that resets only after a healthy stream, so a failing server never sees a busy loop.

Event handlers are plain functions called on the event loop; they must not block (hand work to
a task or queue). A handler that raises is logged and does not stop the reflector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from weakref import WeakKeyDictionary

import httpx2
import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from .client import KubeClient
from .objects import ObjectList, ObjectMeta, PodView, RawWatchEvent, Status, WatchEvent
from .rest import KubeApiError, call, decode_status

log = logging.getLogger("kubeguard.kube.reflector")


class HasMeta(Protocol):
    @property
    def metadata(self) -> ObjectMeta: ...


T = TypeVar("T", bound=HasMeta)

AddHandler = Callable[[T], None]
UpdateHandler = Callable[[T, T], None]
DeleteHandler = Callable[[T], None]


# ---------------------------------------------------------------------------------- backoff


@dataclass
class Backoff:
    """Jittered exponential backoff: the n-th consecutive failure waits
    `min(maximum, initial * factor**n) * (1 + jitter * U[0,1))`, capped at `maximum`
    (client-go's reflector uses 800 ms doubling to 30 s with jitter 1.0)."""

    initial: float = 0.8
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0
    _current: float = field(default=0.0, init=False, repr=False)

    def next(self) -> float:
        base = (
            self.initial if self._current <= 0 else min(self._current * self.factor, self.maximum)
        )
        self._current = base
        return min(base * (1.0 + self.jitter * random.random()), self.maximum)

    def reset(self) -> None:
        self._current = 0.0

    @property
    def failing(self) -> bool:
        return self._current > 0


# ---------------------------------------------------------------------------------- metrics


class ReflectorMetrics:
    """The reflector metrics on one registry; shared by every reflector using that registry
    (`ReflectorMetrics.for_registry`), since a registry refuses duplicate names."""

    _by_registry: ClassVar[WeakKeyDictionary[CollectorRegistry, ReflectorMetrics]] = (
        WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.relists = Counter(
            "reflector_relists_total",
            "Full re-lists after the initial list (410 Expired, failed watch decode, errors).",
            ["resource"],
            registry=registry,
        )
        self.watch_restarts = Counter(
            "reflector_watch_restarts_total",
            "Watch streams that ended, by reason (closed = normal server timeout).",
            ["resource", "reason"],
            registry=registry,
        )
        self.last_sync = Gauge(
            "reflector_last_sync_timestamp_seconds",
            "Unix time the reflector last heard from the API server (list, event or bookmark).",
            ["resource"],
            registry=registry,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> ReflectorMetrics:
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls(registry)
            cls._by_registry[registry] = metrics
        return metrics


# ---------------------------------------------------------------------------------- decoding


class _Expired(Exception):
    """410 Gone/Expired: the resourceVersion is no longer served; re-list."""


class WatchError(Exception):
    """An ERROR event other than 410 inside a watch stream."""

    def __init__(self, status: Status) -> None:
        self.status = status
        super().__init__(f"watch ERROR event: {status.code} {status.reason}: {status.message}")


class WatchDecoder(Generic[T]):
    """Decodes one watch line into `WatchEvent[T]` in one msgspec pass. An ERROR line (whose
    object is a Status, not a T) fails the typed pass or is recognised by its type and is then
    decoded again as a Status; the rare case pays, the common case does not."""

    def __init__(self, view: type[T]) -> None:
        self._typed: msgspec.json.Decoder[WatchEvent[T]] = msgspec.json.Decoder(
            WatchEvent[view]  # type: ignore[valid-type]
        )
        self._raw = msgspec.json.Decoder(RawWatchEvent)
        self._status = msgspec.json.Decoder(Status)

    def decode(self, line: bytes) -> WatchEvent[T] | Status:
        """A typed event, or the Status of an ERROR event. Raises msgspec errors for a line
        that is neither."""
        try:
            event = self._typed.decode(line)
        except msgspec.ValidationError:
            raw = self._raw.decode(line)
            if raw.type != "ERROR":
                raise
            return self._status.decode(raw.object)
        if event.type == "ERROR":
            return self._status.decode(self._raw.decode(line).object)
        return event


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Split a byte stream on newlines without decoding it to text."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if nl > start:
                yield bytes(buf[start:nl])
            start = nl + 1
        del buf[:start]
    if buf.strip():
        yield bytes(buf)


# ---------------------------------------------------------------------------------- reflector


@dataclass
class _Handlers(Generic[T]):
    on_add: AddHandler[T] | None = None
    on_update: UpdateHandler[T] | None = None
    on_delete: DeleteHandler[T] | None = None


class Reflector(Generic[T]):
    """List+watch of one resource collection into an in-memory store keyed `namespace/name`
    (`name` for cluster-scoped objects).

        nodes = Reflector(kube, "/api/v1/nodes", NodeView, resource="nodes",
                          label_selector="!node-role.kubernetes.io/control-plane",
                          registry=registry)
        nodes.add_handler(on_add=..., on_update=..., on_delete=...)
        runtime.add_task("node-reflector", nodes.run)

    `path` is the collection path (`/api/v1/namespaces/<ns>/configmaps` for one namespace).
    """

    def __init__(
        self,
        client: KubeClient,
        path: str,
        view: type[T],
        *,
        resource: str,
        label_selector: str = "",
        field_selector: str = "",
        registry: CollectorRegistry | None = None,
        page_size: int = 500,
        watch_timeout: tuple[float, float] = (300.0, 600.0),
        backoff: Backoff | None = None,
        healthy_after: float = 1.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.client = client
        self.path = path
        self.view = view
        self.resource = resource
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff()
        self.healthy_after = healthy_after
        self.request_timeout = request_timeout
        self.metrics = ReflectorMetrics.for_registry(registry or CollectorRegistry())
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.last_error: str | None = None
        self.watching = False
        self._store: dict[str, T] = {}
        self._handlers: list[_Handlers[T]] = []
        self._decoder = WatchDecoder(view)
        self._list_decoder: msgspec.json.Decoder[ObjectList[T]] = msgspec.json.Decoder(
            ObjectList[view]  # type: ignore[valid-type]
        )
        self._lists = 0
        self._events = 0
        self._stopping = False
        self._task: asyncio.Task[Any] | None = None

    # ------------------------------------------------------------------ store

    @property
    def has_synced(self) -> bool:
        return self.synced.is_set()

    def get(self, key: str) -> T | None:
        return self._store.get(key)

    def get_by(self, namespace: str, name: str) -> T | None:
        return self._store.get(f"{namespace}/{name}" if namespace else name)

    def items(self) -> list[T]:
        return list(self._store.values())

    def keys(self) -> list[str]:
        return list(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def add_handler(
        self,
        on_add: AddHandler[T] | None = None,
        on_update: UpdateHandler[T] | None = None,
        on_delete: DeleteHandler[T] | None = None,
    ) -> None:
        """Register callbacks. Objects already in the store are replayed to `on_add`, so a
        handler added after the first sync still sees every object once."""
        handlers = _Handlers(on_add, on_update, on_delete)
        self._handlers.append(handlers)
        if on_add is not None:
            for obj in list(self._store.values()):
                self._call(on_add, obj)

    async def wait_synced(self, within: float | None = None) -> bool:
        """True once the first list completed; False if `within` seconds passed first."""
        try:
            await asyncio.wait_for(self.synced.wait(), within)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> asyncio.Task[None]:
        """Run in a new task (for owners that do not supervise `run()` themselves)."""
        task = asyncio.create_task(self.run(), name=f"reflector:{self.resource}:{self.path}")
        self._task = task
        return task

    def stop(self) -> None:
        """Stop `run()` (it returns normally); idempotent."""
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop and wait until `run()` has returned."""
        self.stop()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """List, then watch, until `stop()` or cancellation. A stopped reflector stays
        stopped (`run()` returns at once); create a new one to start over."""
        self._task = asyncio.current_task()
        need_list = True
        expired_streak = 0
        try:
            while not self._stopping:
                reason = "closed"
                healthy = False
                try:
                    if need_list:
                        await self._relist()
                        need_list = False
                    started = time.monotonic()
                    seen = self._events
                    await self._watch_once()
                    healthy = (
                        time.monotonic() - started >= self.healthy_after or self._events > seen
                    )
                except _Expired as exc:
                    reason = "expired"
                    need_list = True
                    log.info(
                        "%s: watch expired (%s); re-listing",
                        self.resource,
                        exc,
                        extra={"resource": self.resource, "path": self.path},
                    )
                except (httpx2.HTTPError, OSError) as exc:
                    reason = "network"
                    self._fail(exc)
                except KubeApiError as exc:
                    if exc.code == 410:  # a list's continue token or resourceVersion expired
                        reason = "expired"
                        need_list = True
                    else:
                        reason = "http_error"
                        self._fail(exc)
                except WatchError as exc:
                    reason = "watch_error"
                    self._fail(exc)
                except msgspec.MsgspecError as exc:
                    # An event could not be decoded: it is lost, so the store can no longer be
                    # trusted to match the server. Start over from a fresh list.
                    reason = "decode"
                    need_list = True
                    self._fail(exc)
                except Exception as exc:  # never let a surprise end the reflector
                    reason = "error"
                    need_list = True
                    self._fail(exc)
                    log.exception("%s: unexpected reflector error", self.resource)
                finally:
                    self.watching = False
                self.metrics.watch_restarts.labels(self.resource, reason).inc()
                if reason == "expired" and expired_streak == 0:
                    delay = 0.0  # re-list at once; only repeated expiry backs off
                    expired_streak += 1
                elif healthy:
                    self.backoff.reset()
                    expired_streak = 0
                    delay = 0.0
                else:
                    delay = self.backoff.next()
                if delay > 0 and not self._stopping:
                    await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()

    def _fail(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "%s: watch failed, retrying with backoff: %s",
            self.resource,
            self.last_error,
            extra={"resource": self.resource, "path": self.path},
        )

    # ------------------------------------------------------------------ list

    def _selector_params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params

    async def _list(self) -> tuple[dict[str, T], str]:
        items: dict[str, T] = {}
        cont = ""
        while True:
            params = self._selector_params()
            if self.page_size:
                params["limit"] = str(self.page_size)
            if cont:
                params["continue"] = cont
            body = await call(
                self.client.http, "GET", self.path, params=params, http_timeout=self.request_timeout
            )
            page = self._list_decoder.decode(body)
            for obj in page.items:
                items[obj.metadata.key] = obj
            cont = page.metadata.continue_
            if not cont:
                # Every page of a paginated list is served at the first page's snapshot.
                return items, page.metadata.resource_version

    async def _relist(self) -> None:
        new, rv = await self._list()
        old = self._store
        self._store = new
        self.resource_version = rv
        if self._lists:
            self.metrics.relists.labels(self.resource).inc()
        self._lists += 1
        self._touch()
        for key, obj in new.items():
            prev = old.get(key)
            if prev is None:
                self._emit_add(obj)
            elif prev.metadata.resource_version != obj.metadata.resource_version:
                self._emit_update(prev, obj)
        for key, prev in old.items():
            if key not in new:
                self._emit_delete(prev)  # last known state (client-go: DeletedFinalStateUnknown)
        if not self.synced.is_set():
            self.synced.set()
            log.info(
                "%s: synced %d objects at resourceVersion %s",
                self.resource,
                len(new),
                rv,
                extra={"resource": self.resource, "path": self.path},
            )

    # ------------------------------------------------------------------ watch

    async def _watch_once(self) -> None:
        low, high = self.watch_timeout
        seconds = max(1, round(random.uniform(low, high)))
        params = self._selector_params()
        params.update(
            {
                "watch": "true",
                "allowWatchBookmarks": "true",
                "resourceVersion": self.resource_version,
                "timeoutSeconds": str(seconds),
            }
        )
        # The server ends the stream after `seconds`; a read gap longer than that plus a margin
        # means a dead connection (no FIN ever arrives on a half-open TCP connection).
        timeout = httpx2.Timeout(self.request_timeout, read=seconds + 30.0)
        async with self.client.http.stream(
            "GET", self.path, params=params, timeout=timeout, headers={"Accept": "application/json"}
        ) as resp:
            if resp.status_code != 200:
                status = decode_status(resp.status_code, await resp.aread())
                if status.code == 410:
                    raise _Expired(status.message)
                raise KubeApiError(status, method="GET", path=self.path)
            self.watching = True
            self.last_error = None
            async for line in _lines(resp.aiter_bytes()):
                self._handle_line(line)

    def _handle_line(self, line: bytes) -> None:
        event = self._decoder.decode(line)
        if isinstance(event, Status):
            if event.code == 410:
                raise _Expired(event.message)
            raise WatchError(event)
        self._touch()
        obj = event.object
        etype = event.type
        if etype == "BOOKMARK":
            self.resource_version = obj.metadata.resource_version or self.resource_version
            return
        self._events += 1
        key = obj.metadata.key
        if etype in ("ADDED", "MODIFIED"):
            prev = self._store.get(key)
            self._store[key] = obj
            if prev is None:
                self._emit_add(obj)
            else:
                self._emit_update(prev, obj)
        elif etype == "DELETED":
            prev = self._store.pop(key, None)
            if prev is not None:
                self._emit_delete(obj)
        else:
            log.warning("%s: ignoring watch event of unknown type %r", self.resource, etype)
            return
        if obj.metadata.resource_version:
            self.resource_version = obj.metadata.resource_version

    def _touch(self) -> None:
        self.metrics.last_sync.labels(self.resource).set(time.time())

    # ------------------------------------------------------------------ handlers

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("%s: event handler %r failed", self.resource, fn)

    def _emit_add(self, obj: T) -> None:
        for h in self._handlers:
            if h.on_add is not None:
                self._call(h.on_add, obj)

    def _emit_update(self, old: T, new: T) -> None:
        for h in self._handlers:
            if h.on_update is not None:
                self._call(h.on_update, old, new)

    def _emit_delete(self, obj: T) -> None:
        for h in self._handlers:
            if h.on_delete is not None:
                self._call(h.on_delete, obj)


# ---------------------------------------------------------------------------------- pod index


class PodIndex:
    """Pods bound to the nodes it is told to track, one `fieldSelector=spec.nodeName=<node>`
    reflector per node. The eviction path uses it to find the node of a pod named only by an
    Eviction without an API call: `pod_node()` is a dict lookup.

    `track(node)` / `untrack(node)` are synchronous (call them from node event handlers);
    untracking drops the node's pods at once and stops its watch in the background.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        registry: CollectorRegistry | None = None,
        watch_timeout: tuple[float, float] = (300.0, 600.0),
        backoff: Callable[[], Backoff] = Backoff,
        request_timeout: float = 10.0,
        lookup_timeout: float = 3.0,
    ) -> None:
        self.client = client
        self.registry = registry or CollectorRegistry()
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.request_timeout = request_timeout
        # The fallback GET runs on the admission path: it must end well inside the API
        # server's webhook timeout (5 s) so that kubeguard answers with its own error.
        self.lookup_timeout = lookup_timeout
        self._reflectors: dict[str, Reflector[PodView]] = {}
        self._node_of: dict[str, str] = {}  # "namespace/name" -> node
        self._stopping: set[asyncio.Task[None]] = set()

    def track(self, node: str) -> None:
        if node in self._reflectors or not node:
            return
        refl = Reflector(
            self.client,
            "/api/v1/pods",
            PodView,
            resource="pods",
            field_selector=f"spec.nodeName={node}",
            registry=self.registry,
            watch_timeout=self.watch_timeout,
            backoff=self.backoff(),
            request_timeout=self.request_timeout,
        )
        refl.add_handler(on_add=self._on_add, on_update=self._on_update, on_delete=self._on_delete)
        self._reflectors[node] = refl
        refl.start()
        log.info("pod index: tracking node %s", node, extra={"node": node})

    def untrack(self, node: str) -> None:
        refl = self._reflectors.pop(node, None)
        if refl is None:
            return
        for key in refl.keys():  # noqa: SIM118 (Reflector.keys, not a dict)
            if self._node_of.get(key) == node:
                del self._node_of[key]
        refl.stop()
        if refl._task is not None:
            self._stopping.add(refl._task)
            refl._task.add_done_callback(self._stopping.discard)
        log.info("pod index: stopped tracking node %s", node, extra={"node": node})

    def set_tracked(self, nodes: Iterable[str]) -> None:
        """Track exactly `nodes`."""
        wanted = set(nodes)
        for node in list(self._reflectors):
            if node not in wanted:
                self.untrack(node)
        for node in sorted(wanted):
            self.track(node)

    @property
    def tracked(self) -> frozenset[str]:
        return frozenset(self._reflectors)

    def synced_for(self, node: str) -> bool:
        refl = self._reflectors.get(node)
        return refl is not None and refl.has_synced

    @property
    def all_synced(self) -> bool:
        return all(r.has_synced for r in self._reflectors.values())

    async def wait_synced(self, node: str, within: float | None = None) -> bool:
        refl = self._reflectors.get(node)
        return refl is not None and await refl.wait_synced(within)

    def pod_node(self, namespace: str, name: str) -> str | None:
        """The tracked node the pod is bound to, or None when it is on no tracked node (or a
        tracked node's index has not synced yet: check `synced_for`/`all_synced`)."""
        return self._node_of.get(f"{namespace}/{name}")

    def pods_on(self, node: str) -> list[PodView]:
        refl = self._reflectors.get(node)
        return refl.items() if refl is not None else []

    def get(self, namespace: str, name: str) -> PodView | None:
        node = self.pod_node(namespace, name)
        refl = self._reflectors.get(node) if node else None
        return refl.get_by(namespace, name) if refl is not None else None

    async def get_pod(self, namespace: str, name: str) -> PodView | None:
        """One GET, for use only while an index is not synced. None when the pod does not
        exist; raises KubeApiError / httpx2 errors otherwise."""
        return await get_pod(self.client, namespace, name, http_timeout=self.lookup_timeout)

    async def aclose(self) -> None:
        for node in list(self._reflectors):
            self.untrack(node)
        tasks = list(self._stopping)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_add(self, pod: PodView) -> None:
        if pod.spec.node_name in self._reflectors:
            self._node_of[pod.metadata.key] = pod.spec.node_name

    def _on_update(self, _old: PodView, pod: PodView) -> None:
        self._on_add(pod)

    def _on_delete(self, pod: PodView) -> None:
        key = pod.metadata.key
        # A pod deleted and re-created on another tracked node may already be re-indexed.
        if self._node_of.get(key) == pod.spec.node_name:
            del self._node_of[key]


_pod_decoder = msgspec.json.Decoder(PodView)


async def get_pod(
    client: KubeClient, namespace: str, name: str, *, http_timeout: float = 10.0
) -> PodView | None:
    """GET one pod as a PodView; None on 404."""
    try:
        body = await call(
            client.http,
            "GET",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            http_timeout=http_timeout,
        )
    except KubeApiError as exc:
        if exc.code == 404:
            return None
        raise
    return _pod_decoder.decode(body)
