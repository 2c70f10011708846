"""StatefulSet ordinal environment variable (seed 002, chapter 6): `INDEX=<ordinal>`.

Pods labelled `kubeguard.io/ordinal-env: "true"` (`--ordinal-env-label`) and owned by an
apps/v1 StatefulSet get `INDEX` (`--ordinal-env-name`) in every container, and in every init
container unless `--no-ordinal-env-init-containers`.

* Each container is patched by index with its own JSON pointer, so sidecars and containers
  whose names need escaping are handled; `env` is created when the container has none.
* The variable is inserted first (`/env/0`), so other variables can refer to it as
  `$(INDEX)` (Kubernetes expands references to variables defined earlier in the list only).
* A container that already defines the variable is left alone (with a warning when its value
  differs): the pod author's value wins, and the webhook never duplicates a name.
* reinvocationPolicy IfNeeded: when a later mutating webhook adds a sidecar, the API server
  calls this webhook again and the new container gets the variable too; the patch is
  idempotent.
* The ordinal comes from the `apps.kubernetes.io/pod-index` label when present, else from the
  pod name (`<statefulset>-<ordinal>`). A labelled pod that is not a StatefulSet pod is
  admitted unchanged with a warning: a missing variable is visible, and refusing the pod
  would not tell its owner more.

Kubernetes ≥ 1.28 can also expose the ordinal with the downward API
(`fieldRef: metadata.labels['apps.kubernetes.io/pod-index']`); this plugin serves
unchanged pod templates and older clusters.
"""

from __future__ import annotations

from typing import Any

from kubeguard.admission.handler import Response, allowed, patched
from kubeguard.admission.jsonpatch import add, pointer
from kubeguard.admission.registry import Plugin
from kubeguard.admission.review import Request
from kubeguard.admission.webhook import HandlerSpec
from kubeguard.notify import events
from kubeguard.plugins.notice import send_notice
from kubeguard.plugins.podview import (
    ContainerView,
    IdentityError,
    pod_display_name,
    pod_of,
    statefulset_identity,
)
from kubeguard.plugins.specs import labelled_pod_create_spec
from kubeguard.runtime import Runtime

GATE = "StsOrdinalEnv"
PATH = "/mutate-sts-ordinal-env"
HANDLER_NAME = "sts-ordinal-env"


def env_patch(
    containers: list[ContainerView] | None, field: str, name: str, value: str
) -> tuple[list[dict[str, Any]], list[tuple[str, str | None]]]:
    """Ops that give every container in `spec.<field>` the variable, and the containers that
    already define it (left alone) with their value (None for valueFrom)."""
    ops: list[dict[str, Any]] = []
    kept: list[tuple[str, str | None]] = []
    for index, container in enumerate(containers or []):
        env = container.env
        existing = next((e for e in env or [] if e.name == name), None)
        if existing is not None:
            kept.append((container.name, existing.value))
            continue
        var = {"name": name, "value": value}
        if env is None:
            ops.append(add(pointer("spec", field, index, "env"), [var]))
        else:
            ops.append(add(pointer("spec", field, index, "env", 0), var))
    return ops, kept


class StsOrdinalEnv:
    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.label = settings.ordinal_env_label
        self.env_name = settings.ordinal_env_name
        self.init_containers = settings.ordinal_env_init_containers

    async def handle(self, request: Request) -> Response:
        pod = pod_of(request)
        if pod.labels.get(self.label) != "true":
            return allowed(reason="not-opted-in")
        try:
            identity = statefulset_identity(request, pod)
        except IdentityError as exc:
            message = (
                f"kubeguard did not set {self.env_name}: pod {pod_display_name(request, pod)} "
                f"has label {self.label}=true but {exc}"
            )
            send_notice(
                self.runtime,
                request,
                events.PLUGIN_WARNING,
                "Ordinal variable not injected",
                message,
            )
            return allowed(reason="not-statefulset-pod").with_warnings(message)
        value = str(identity.ordinal)
        ops, kept = env_patch(pod.spec.containers, "containers", self.env_name, value)
        if self.init_containers:
            init_ops, init_kept = env_patch(
                pod.spec.init_containers, "initContainers", self.env_name, value
            )
            ops += init_ops
            kept += init_kept
        warnings = [
            f"container {c} already defines {self.env_name}"
            + (f"={v}" if v is not None else " (valueFrom)")
            + f"; kubeguard left it unchanged although the StatefulSet ordinal is {value}"
            for c, v in kept
            if v != value
        ]
        if not ops:
            return allowed(reason="env-present").with_warnings(*warnings)
        response = patched(ops, reason="ordinal-env-set").with_warnings(*warnings)
        send_notice(
            self.runtime,
            request,
            events.PLUGIN_MUTATION,
            "Ordinal variable injected",
            f"pod {pod_display_name(request, pod)}: {self.env_name}={value} "
            f"({len(ops)} container(s))",
            statefulset=identity.statefulset,
            ordinal=value,
        )
        return response


def build(runtime: Runtime) -> list[HandlerSpec]:
    return labelled_pod_create_spec(
        name=HANDLER_NAME,
        path=PATH,
        handler=StsOrdinalEnv(runtime),
        label_key=runtime.settings.ordinal_env_label,
        reinvocation_policy="IfNeeded",
    )


PLUGIN: Plugin[Runtime] = Plugin(
    gate=GATE,
    description="Inject INDEX=<ordinal> into the containers of StatefulSet pods (seed 002).",
    build=build,
)
