"""A shared state document in one ConfigMap, written with optimistic concurrency and watched
by every replica.

The document is a msgspec Struct stored as JSON text under one key of the ConfigMap's `data`.
Writers go through `update(mutate)`: read the object, apply the caller's mutation, and PUT it
with the resourceVersion that was read; kube-apiserver answers 409 Conflict when another writer
got there first (fixture `configmap-update-stale-resource-version-409.json`), and the whole
read-mutate-write is repeated (bounded, with backoff), so no writer's mutation is lost. A
create that races another replica's create gets 409 AlreadyExists and falls back to the update
path. Every replica runs a reflector on the single object (`fieldSelector=metadata.name=<n>`),
so a write on one replica reaches all of them with the watch latency (milliseconds).

Safety rule for a document that does not decode (someone hand-edited it badly): it is never
overwritten. `current` keeps the last good document (or the default when there was none),
`error` describes the problem, `ready` turns false (so a restarted replica does not pass
`/readyz` with a state it could not read), and `update()` raises `StateDecodeError` naming the
object and key until an operator fixes or deletes the key. An operator's `disable` can therefore
not be silently replaced by a default. A deleted ConfigMap (or a missing key) means "default
document": that is an explicit operator action, and the next `update()` recreates it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar
from weakref import WeakKeyDictionary

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from .client import KubeClient
from .objects import ConfigMapView
from .reflector import Backoff, Reflector
from .rest import KubeApiError, call

log = logging.getLogger("kubeguard.kube.state")

D = TypeVar("D", bound=msgspec.Struct)


class StateDecodeError(Exception):
    """The stored document does not decode into the document type; it is left untouched."""


class StateConflictError(Exception):
    """`update()` lost the optimistic-concurrency race `max_attempts` times in a row."""


def _rv_newer(candidate: str, current: str) -> bool:
    """Whether `candidate` is newer than `current`. resourceVersions are opaque by contract,
    but kube-apiserver's are etcd revisions (integers); when both parse, compare them so a
    late watch event never rolls back a write this replica already applied."""
    if not current:
        return True
    try:
        return int(candidate) > int(current)
    except ValueError:
        return candidate != current


class _StateMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.conflicts = Counter(
            "state_update_conflicts_total",
            "Optimistic-concurrency conflicts (409) while writing the shared state object.",
            ["name"],
            registry=registry,
        )
        self.valid = Gauge(
            "state_document_valid",
            "1 if the shared state document decodes, 0 if it is invalid (left untouched).",
            ["name"],
            registry=registry,
        )


_metrics_by_registry: WeakKeyDictionary[CollectorRegistry, _StateMetrics] = WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _StateMetrics:
    metrics = _metrics_by_registry.get(registry)
    if metrics is None:
        metrics = _metrics_by_registry[registry] = _StateMetrics(registry)
    return metrics


class StateStore(Generic[D]):
    """One ConfigMap `namespace/name`, key `key`, holding a `doc_type` document.

    store = StateStore(kube, "kubeguard-system", "kubeguard-state", ProtectionState)
    store.on_change(lambda doc: ...)
    runtime.add_task("state", store.run)
    runtime.add_readiness("state", lambda: store.ready)
    await store.update(lambda doc: msgspec.structs.replace(doc, disabled=True))
    """

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        doc_type: type[D],
        *,
        key: str = "state.json",
        default: Callable[[], D] | None = None,
        labels: dict[str, str] | None = None,
        registry: CollectorRegistry | None = None,
        max_attempts: int = 10,
        backoff: Callable[[], Backoff] | None = None,
        watch_timeout: tuple[float, float] = (300.0, 600.0),
        request_timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.key = key
        self.doc_type = doc_type
        self.default: Callable[[], D] = default or doc_type
        self.labels = dict(labels or {})
        self.max_attempts = max_attempts
        self._backoff = backoff or (lambda: Backoff(initial=0.02, maximum=1.0))
        self.request_timeout = request_timeout
        self._decoder = msgspec.json.Decoder(doc_type)
        self._metrics = _metrics_for(registry or CollectorRegistry())
        self._path = f"/api/v1/namespaces/{namespace}/configmaps"
        self.reflector: Reflector[ConfigMapView] = Reflector(
            client,
            self._path,
            ConfigMapView,
            resource="configmaps",
            field_selector=f"metadata.name={name}",
            registry=registry,
            watch_timeout=watch_timeout,
            request_timeout=request_timeout,
        )
        self.reflector.add_handler(
            on_add=self._on_object,
            on_update=lambda _old, new: self._on_object(new),
            on_delete=lambda _obj: self._on_deleted(),
        )
        self._current: D = self.default()
        self._rv = ""
        self.exists = False
        self.error: str | None = None
        self._callbacks: list[Callable[[D], None]] = []
        self._metrics.valid.labels(name).set(1)

    # ------------------------------------------------------------------ reading

    @property
    def current(self) -> D:
        """The last good document (the default when the object or key does not exist)."""
        return self._current

    @property
    def resource_version(self) -> str:
        return self._rv

    @property
    def has_synced(self) -> bool:
        return self.reflector.has_synced

    @property
    def ready(self) -> bool:
        """Synced with the API server and the stored document decodes."""
        return self.reflector.has_synced and self.error is None

    async def wait_synced(self, within: float | None = None) -> bool:
        return await self.reflector.wait_synced(within)

    def on_change(self, callback: Callable[[D], None]) -> None:
        """Call `callback(doc)` (on the event loop, must not block) whenever the document
        changes, whichever replica wrote it."""
        self._callbacks.append(callback)

    async def read(self) -> D:
        """Read the document from the API server (not the cache). Raises StateDecodeError."""
        obj = await self._get()
        if obj is None:
            return self.default()
        return self._decode_raw(obj)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        await self.reflector.run()

    def start(self) -> asyncio.Task[None]:
        return self.reflector.start()

    async def aclose(self) -> None:
        await self.reflector.aclose()

    # ------------------------------------------------------------------ writing

    async def update(self, mutate: Callable[[D], D]) -> D:
        """Apply `mutate(current document) -> new document` with optimistic concurrency and
        return the stored result. `mutate` may run several times (once per attempt), so it must
        be a pure function of its argument. Returning an equal document writes nothing.
        Raises StateDecodeError (stored document invalid: nothing is written),
        StateConflictError (too many conflicts), KubeApiError / httpx2 errors."""
        backoff = self._backoff()
        for _attempt in range(self.max_attempts):
            obj = await self._get()
            if obj is None:
                doc = self.default()
                new = mutate(doc)
                body: dict[str, Any] = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "data": {self.key: self._encode(new)},
                }
                if self.labels:
                    body["metadata"]["labels"] = dict(self.labels)
                try:
                    raw = await call(
                        self.client.http,
                        "POST",
                        self._path,
                        body=body,
                        http_timeout=self.request_timeout,
                    )
                except KubeApiError as exc:
                    if exc.code == 409:  # AlreadyExists: another replica created it first
                        self._metrics.conflicts.labels(self.name).inc()
                        continue
                    raise
                self._apply_written(raw)
                return new
            doc = self._decode_raw(obj)
            new = mutate(doc)
            if new == doc:
                return doc
            data = obj.get("data") or {}
            data[self.key] = self._encode(new)
            obj["data"] = data
            try:
                raw = await call(
                    self.client.http,
                    "PUT",
                    f"{self._path}/{self.name}",
                    body=obj,
                    http_timeout=self.request_timeout,
                )
            except KubeApiError as exc:
                if exc.code == 409:  # Conflict: re-read, re-apply the mutation, retry
                    self._metrics.conflicts.labels(self.name).inc()
                    await asyncio.sleep(backoff.next())
                    continue
                if exc.code == 404:  # deleted between our GET and PUT: recreate
                    continue
                raise
            self._apply_written(raw)
            return new
        raise StateConflictError(
            f"could not update ConfigMap {self.namespace}/{self.name}: still conflicting after "
            f"{self.max_attempts} attempts"
        )

    # ------------------------------------------------------------------ internals

    def _encode(self, doc: D) -> str:
        return msgspec.json.format(msgspec.json.encode(doc), indent=2).decode()

    async def _get(self) -> dict[str, Any] | None:
        try:
            raw = await call(
                self.client.http,
                "GET",
                f"{self._path}/{self.name}",
                http_timeout=self.request_timeout,
            )
        except KubeApiError as exc:
            if exc.code == 404:
                return None
            raise
        obj: dict[str, Any] = msgspec.json.decode(raw)
        return obj

    def _decode_raw(self, obj: dict[str, Any]) -> D:
        text = (obj.get("data") or {}).get(self.key)
        if text is None:
            return self.default()
        try:
            return self._decoder.decode(text)
        except msgspec.MsgspecError as exc:
            raise StateDecodeError(self._describe(exc)) from None

    def _describe(self, exc: Exception) -> str:
        return (
            f"ConfigMap {self.namespace}/{self.name} key {self.key!r} does not hold a valid "
            f"{self.doc_type.__name__} document ({exc}); it is left untouched until fixed"
        )

    def _apply_written(self, raw: bytes) -> None:
        try:
            view = msgspec.json.decode(raw, type=ConfigMapView)
        except msgspec.MsgspecError:
            return  # the watch will deliver it
        self._on_object(view)

    def _on_object(self, cm: ConfigMapView) -> None:
        rv = cm.metadata.resource_version
        if not _rv_newer(rv, self._rv):
            return
        self._rv = rv
        self.exists = True
        text = cm.data.get(self.key)
        if text is None:
            self._set(self.default())
            return
        try:
            doc = self._decoder.decode(text)
        except msgspec.MsgspecError as exc:
            message = self._describe(exc)
            if message != self.error:
                log.error("%s", message, extra={"configmap": f"{self.namespace}/{self.name}"})
            self.error = message
            self._metrics.valid.labels(self.name).set(0)
            return
        self._set(doc)

    def _on_deleted(self) -> None:
        # The object is gone; a re-created one starts a new resourceVersion history.
        self.exists = False
        self._rv = ""
        log.warning(
            "state ConfigMap %s/%s was deleted; using the default document",
            self.namespace,
            self.name,
        )
        self._set(self.default())

    def _set(self, doc: D) -> None:
        """A good document (or the default) arrived: clear any decode error and notify."""
        if self.error is not None:
            log.info("state ConfigMap %s/%s is valid again", self.namespace, self.name)
        self.error = None
        self._metrics.valid.labels(self.name).set(1)
        changed = doc != self._current
        self._current = doc
        if changed:
            for cb in list(self._callbacks):
                try:
                    cb(doc)
                except Exception:
                    log.exception("state change callback %r failed", cb)
