"""Sidecar injection (seed 002, chapter 9) from a ConfigMap template.

The template is the key `sidecar.yaml` of the ConfigMap `--sidecar-configmap` in kubeguard's
namespace:

    containers:
      - name: log-agent
        image: registry.example.com/log-agent:1.4
        volumeMounts: [{name: shared-logs, mountPath: /var/log/app}]
    volumes:
      - name: shared-logs
        emptyDir: {}

Pods opt in through their namespace (label `kubeguard.io/inject-sidecar=true`, a pod can opt
out with the same label set to `false`) or through their own label. Injection is idempotent:
containers and volumes whose names the pod already has are skipped, and the pod is marked with
the annotation `kubeguard.io/sidecar-injected`; a pod that already carries it is left alone.

The template is watched in the background (LIST + WATCH of that one ConfigMap); the admission
path only reads the cached, already validated template. A malformed or missing template is
logged, counted (`sidecar_template_valid` 0, `sidecar_template_errors_total`) and then every
opted-in pod is refused with a message that says what is wrong with the template (failure
policy Fail: a pod that asked for its sidecar, e.g. a log shipper or a proxy, must not run
without it unnoticed). The webhook entries exclude kubeguard's own namespace, so kubeguard can
always start.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
import msgspec
import yaml
from prometheus_client import Counter, Gauge

from kubeguard.admission.handler import Response, allowed, denied, patched
from kubeguard.admission.jsonpatch import add, pointer, set_map_entry
from kubeguard.admission.registry import Plugin
from kubeguard.admission.review import Request
from kubeguard.admission.webhook import HandlerSpec, Rule, WebhookEntry
from kubeguard.notify import events
from kubeguard.plugins.notice import send_notice
from kubeguard.plugins.podview import dns1123_label_error, pod_display_name, pod_of
from kubeguard.runtime import Runtime

log = logging.getLogger("kubeguard.plugins.sidecar")

GATE = "SidecarInjection"
PATH = "/mutate-sidecar"
HANDLER_NAME = "sidecar-injection"
TEMPLATE_KEY = "sidecar.yaml"
INJECTED_ANNOTATION = "kubeguard.io/sidecar-injected"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace since 1.21
WATCH_TIMEOUT_SECONDS = 300


# ---------------------------------------------------------------------------- template


@dataclass(frozen=True)
class SidecarTemplate:
    containers: tuple[dict[str, Any], ...]
    volumes: tuple[dict[str, Any], ...]
    source: str  # namespace/name@resourceVersion


class TemplateError(ValueError):
    """The template is unusable; the message says where and why."""


def _named_list(doc: dict[str, Any], field: str) -> tuple[dict[str, Any], ...]:
    value = doc.get(field)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TemplateError(f"{field} must be a list, got {type(value).__name__}")
    seen: set[str] = set()
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise TemplateError(f"{field}[{i}] must be a mapping, got {type(item).__name__}")
        name = item.get("name")
        if not isinstance(name, str):
            raise TemplateError(f"{field}[{i}] needs a string name")
        problem = dns1123_label_error(name)
        if problem:
            raise TemplateError(f"{field}[{i}].name {name!r} {problem}")
        if name in seen:
            raise TemplateError(f"{field}[{i}]: duplicate name {name!r}")
        seen.add(name)
        try:
            msgspec.json.encode(item)
        except (TypeError, msgspec.EncodeError) as exc:
            raise TemplateError(f"{field}[{i}] ({name}) is not JSON-compatible: {exc}") from None
    return tuple(value)


def parse_template(text: str, source: str = "") -> SidecarTemplate:
    """Parse and validate `sidecar.yaml`, or raise TemplateError."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{TEMPLATE_KEY} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise TemplateError(
            f"{TEMPLATE_KEY} must be a mapping with containers: and volumes: lists, got "
            f"{type(doc).__name__}"
        )
    unknown = sorted(str(k) for k in doc if k not in ("containers", "volumes"))
    if unknown:
        raise TemplateError(
            f"{TEMPLATE_KEY} has unknown key(s) {', '.join(unknown)}; only containers and "
            "volumes are allowed"
        )
    containers = _named_list(doc, "containers")
    volumes = _named_list(doc, "volumes")
    if not containers:
        raise TemplateError(f"{TEMPLATE_KEY} defines no containers")
    for i, c in enumerate(containers):
        if not isinstance(c.get("image"), str) or not c["image"]:
            raise TemplateError(f"containers[{i}] ({c['name']}) needs an image")
    return SidecarTemplate(containers, volumes, source)


# ---------------------------------------------------------------------------- cache


class _CMMeta(msgspec.Struct, frozen=True, rename="camel"):
    name: str = ""
    namespace: str = ""
    resource_version: str = ""


class _ConfigMap(msgspec.Struct, frozen=True):
    metadata: _CMMeta = _CMMeta()
    data: dict[str, str] | None = None


class _ListMeta(msgspec.Struct, frozen=True, rename="camel"):
    resource_version: str = ""


class _ConfigMapList(msgspec.Struct, frozen=True):
    metadata: _ListMeta = _ListMeta()
    items: list[_ConfigMap] | None = None


class _Status(msgspec.Struct, frozen=True):
    code: int = 0
    reason: str = ""
    message: str = ""


class _Event(msgspec.Struct, frozen=True):
    type: str
    object: msgspec.Raw


_list_decoder = msgspec.json.Decoder(_ConfigMapList)
_event_decoder = msgspec.json.Decoder(_Event)
_cm_decoder = msgspec.json.Decoder(_ConfigMap)
_status_decoder = msgspec.json.Decoder(_Status)


class _Expired(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class TemplateCache:
    """The current template, kept up to date by `run()` (a background task)."""

    def __init__(
        self,
        runtime: Runtime,
        namespace: str,
        name: str,
        *,
        valid_gauge: Gauge | None = None,
        errors: Counter | None = None,
    ) -> None:
        self.runtime = runtime
        self.namespace = namespace
        self.name = name
        self.template: SidecarTemplate | None = None
        self.problem = "the template has not been loaded yet"
        self.synced = False
        self._valid = valid_gauge
        self._errors = errors
        self._seen_version: str | None = None
        self.changed = asyncio.Event()  # set on every applied update (tests, demos)

    @property
    def source(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def apply(self, configmap: _ConfigMap | None) -> None:
        """Install the template from a ConfigMap (None: it does not exist)."""
        if configmap is None:
            self.template = None
            self.problem = f"{self.source} does not exist"
            self._report(False, "missing")
        else:
            version = configmap.metadata.resource_version
            if version and version == self._seen_version and self.synced:
                return
            self._seen_version = version
            text = (configmap.data or {}).get(TEMPLATE_KEY)
            if text is None:
                self.template = None
                self.problem = f"{self.source} has no key {TEMPLATE_KEY}"
                self._report(False, "no-key")
            else:
                try:
                    self.template = parse_template(text, f"{self.namespace}/{self.name}@{version}")
                except TemplateError as exc:
                    self.template = None
                    self.problem = f"{self.source} is malformed: {exc}"
                    self._report(False, "malformed")
                else:
                    self.problem = ""
                    self._report(True, "")
        self.synced = True
        self.changed.set()
        self.changed = asyncio.Event()

    def _report(self, valid: bool, kind: str) -> None:
        if self._valid is not None:
            self._valid.set(1 if valid else 0)
        if valid:
            assert self.template is not None
            log.info(
                "sidecar template loaded",
                extra={
                    "template": self.template.source,
                    "containers": [c["name"] for c in self.template.containers],
                    "volumes": [v["name"] for v in self.template.volumes],
                },
            )
            return
        if self._errors is not None:
            self._errors.labels(kind).inc()
        log.error("sidecar template unusable: %s", self.problem, extra={"problem": kind})

    async def run(self) -> None:
        """LIST + WATCH the ConfigMap until cancelled; relist on 410 and after errors."""
        kube = self.runtime.require_kube("sidecar injection (watching its ConfigMap template)")
        delay = 1.0
        while True:
            try:
                version = await self._list(kube.http)
                delay = 1.0
                while True:
                    version = await self._watch(kube.http, version)
            except _Expired:
                continue
            except (httpx2.HTTPError, RuntimeError, msgspec.DecodeError) as exc:
                log.warning(
                    "sidecar template watch failed; retrying in %.0fs: %s",
                    delay,
                    exc,
                    extra={"template": self.source},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _base(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps"

    async def _list(self, http: httpx2.AsyncClient) -> str:
        resp = await http.get(self._base(), params={"fieldSelector": f"metadata.name={self.name}"})
        if resp.status_code != 200:
            raise RuntimeError(f"listing {self.source}: HTTP {resp.status_code}: {resp.text[:200]}")
        listing = _list_decoder.decode(resp.content)
        items = [i for i in listing.items or [] if i.metadata.name == self.name]
        self.apply(items[0] if items else None)
        return listing.metadata.resource_version

    async def _watch(self, http: httpx2.AsyncClient, version: str) -> str:
        params = {
            "watch": "1",
            "fieldSelector": f"metadata.name={self.name}",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS),
        }
        async with http.stream("GET", self._base(), params=params) as resp:
            if resp.status_code == 410:
                raise _Expired()
            if resp.status_code != 200:
                body = (await resp.aread())[:200].decode("utf-8", "replace")
                raise RuntimeError(f"watching {self.source}: HTTP {resp.status_code}: {body}")
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                event = _event_decoder.decode(line)
                if event.type == "ERROR":
                    status = _status_decoder.decode(event.object)
                    if status.code == 410:
                        raise _Expired()
                    raise RuntimeError(f"watching {self.source}: {status.code} {status.message}")
                cm = _cm_decoder.decode(event.object)
                if cm.metadata.resource_version:
                    version = cm.metadata.resource_version
                if event.type in ("ADDED", "MODIFIED"):
                    self.apply(cm)
                elif event.type == "DELETED":
                    self.apply(None)
        return version


# ---------------------------------------------------------------------------- handler

FailureMode = Literal["Fail", "Ignore"]


class SidecarInjection:
    def __init__(
        self, runtime: Runtime, cache: TemplateCache, failure_policy: FailureMode = "Fail"
    ) -> None:
        self.runtime = runtime
        self.cache = cache
        self.label = runtime.settings.sidecar_label
        self.failure_policy = failure_policy

    async def handle(self, request: Request) -> Response:
        pod = pod_of(request)
        if pod.labels.get(self.label) == "false":
            return allowed(reason="opted-out")
        if INJECTED_ANNOTATION in pod.annotations:
            return allowed(reason="already-injected")
        who = f"pod {pod_display_name(request, pod)}"
        template = self.cache.template
        if template is None:
            return self._unavailable(request, who)
        spec = pod.spec
        names = {c.name for c in spec.containers or []} | {
            c.name for c in spec.init_containers or []
        }
        volume_names = {v.name for v in spec.volumes or []}
        containers = [c for c in template.containers if c["name"] not in names]
        volumes = [v for v in template.volumes if v["name"] not in volume_names]
        warnings = [
            f"{who} already has a volume named {v['name']}; the sidecar uses the pod's volume"
            for v in template.volumes
            if v["name"] in volume_names
        ]
        if not containers and not volumes:
            return allowed(reason="sidecar-present").with_warnings(*warnings)
        ops: list[dict[str, Any]] = []
        if spec.containers is None:
            ops.append(add("/spec/containers", list(containers)))
        else:
            ops += [add(pointer("spec", "containers", "-"), c) for c in containers]
        if volumes:
            if spec.volumes is None:
                ops.append(add("/spec/volumes", list(volumes)))
            else:
                ops += [add(pointer("spec", "volumes", "-"), v) for v in volumes]
        marker = msgspec.json.encode(
            {
                "containers": [c["name"] for c in containers],
                "volumes": [v["name"] for v in volumes],
                "template": template.source,
            }
        ).decode()
        annotations = pod.metadata.annotations
        ops += set_map_entry(
            None if annotations is None else dict(annotations),
            "/metadata/annotations",
            INJECTED_ANNOTATION,
            marker,
        )
        send_notice(
            self.runtime,
            request,
            events.PLUGIN_MUTATION,
            "Sidecar injected",
            f"{who}: injected container(s) {', '.join(c['name'] for c in containers) or '-'}",
            template=template.source,
        )
        return patched(ops, reason="sidecar-injected").with_warnings(*warnings)

    def _unavailable(self, request: Request, who: str) -> Response:
        message = (
            f"kubeguard cannot inject the sidecar into {who}: {self.cache.problem}. Fix the "
            f"template (key {TEMPLATE_KEY}, containers: and volumes: lists), or opt the pod "
            f"out with the label {self.label}=false"
        )
        if self.failure_policy == "Ignore":
            send_notice(
                self.runtime, request, events.PLUGIN_WARNING, "Sidecar not injected", message
            )
            return allowed(reason="template-unavailable").with_warnings(message)
        send_notice(self.runtime, request, events.PLUGIN_DENIAL, "Sidecar pod denied", message)
        return denied(message, code=503, reason="template-unavailable")


def entries(settings_label: str, own_namespace: str) -> tuple[WebhookEntry, ...]:
    not_own = {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": [own_namespace]}
    rules = (Rule(operations=("CREATE",), resources=("pods",)),)
    return (
        WebhookEntry(
            name="namespaces.sidecar-injection.kubeguard.io",
            rules=rules,
            failure_policy="Fail",
            namespace_selector={
                "matchLabels": {settings_label: "true"},
                "matchExpressions": [not_own],
            },
            object_selector={
                "matchExpressions": [
                    {"key": settings_label, "operator": "NotIn", "values": ["false"]}
                ]
            },
            timeout_seconds=5,
            side_effects="NoneOnDryRun",
            reinvocation_policy="Never",
        ),
        WebhookEntry(
            name="pods.sidecar-injection.kubeguard.io",
            rules=rules,
            failure_policy="Fail",
            # Namespaces that opted in as a whole are served by the entry above: one call.
            namespace_selector={
                "matchExpressions": [
                    {"key": settings_label, "operator": "NotIn", "values": ["true"]},
                    not_own,
                ]
            },
            object_selector={"matchLabels": {settings_label: "true"}},
            timeout_seconds=5,
            side_effects="NoneOnDryRun",
            reinvocation_policy="Never",
        ),
    )


def build(runtime: Runtime) -> list[HandlerSpec]:
    settings = runtime.settings
    valid = Gauge(
        "sidecar_template_valid",
        "1 when the sidecar ConfigMap template is loaded and valid, else 0.",
        registry=runtime.registry,
    )
    errors = Counter(
        "sidecar_template_errors_total",
        "Sidecar template updates that could not be used, by problem.",
        ["problem"],
        registry=runtime.registry,
    )
    cache = TemplateCache(
        runtime, settings.namespace, settings.sidecar_configmap, valid_gauge=valid, errors=errors
    )
    runtime.add_task("sidecar-template-watch", cache.run)

    def ready() -> bool:
        return cache.synced

    return [
        HandlerSpec(
            name=HANDLER_NAME,
            path=PATH,
            kind="mutating",
            handler=SidecarInjection(runtime, cache),
            failure_policy="Fail",
            entries=entries(settings.sidecar_label, settings.namespace),
            ready=ready,
        )
    ]


PLUGIN: Plugin[Runtime] = Plugin(
    gate=GATE,
    description="Inject sidecar containers and volumes from a ConfigMap template (seed 002).",
    build=build,
)
