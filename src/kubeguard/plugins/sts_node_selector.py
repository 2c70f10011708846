"""StatefulSet ordinal placement (seed 004): even and odd ordinals get different nodeSelectors.

A pod labelled `ab-build-different: "true"` (`--sts-label-key`) and owned by an apps/v1
StatefulSet carries the annotation

    custom-node-selector: '{"key": "name", "even": "node1", "odd": "node2"}'

and gets `nodeSelector[key] = even` when its ordinal is even, `odd` otherwise. This follows the
seed's code (`if index%2 == 0 { return Key, Even }`); the seed's prose says the opposite, and
the field names agree with the code.

Differences from the seed, on purpose:
* The patch sets one nodeSelector entry and keeps the others (the seed replaced the whole map,
  silently dropping e.g. `kubernetes.io/arch`).
* The ordinal comes from the `apps.kubernetes.io/pod-index` label when present (authoritative,
  also right with `spec.ordinals.start`), else from the `<statefulset>-<ordinal>` name.
* A labelled pod whose annotation is missing or malformed, or that is not a StatefulSet pod, is
  denied with a message that says what is wrong and shows a valid annotation
  (`--sts-invalid-action=warn` admits it unchanged with a warning instead). The seed answered
  with an HTTP 500, which the API server reports as "failed calling webhook".
* Notifications are queued, never sent inline.

The API server only calls this webhook for labelled pods (`objectSelector`), so other pods
never depend on kubeguard being up. failurePolicy is Fail: a pod that asked for placement
must not silently land on the wrong node while kubeguard is unreachable; the StatefulSet
controller retries the CREATE with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from kubeguard.admission.handler import Response, allowed, denied, patched
from kubeguard.admission.jsonpatch import set_map_entry
from kubeguard.admission.registry import Plugin
from kubeguard.admission.review import Request
from kubeguard.admission.webhook import HandlerSpec
from kubeguard.notify import events
from kubeguard.plugins.notice import send_notice
from kubeguard.plugins.podview import (
    IdentityError,
    PodView,
    label_key_error,
    label_value_error,
    pod_display_name,
    pod_of,
    statefulset_identity,
)
from kubeguard.plugins.specs import labelled_pod_create_spec
from kubeguard.runtime import Runtime

GATE = "StsNodeSelector"
PATH = "/mutate-sts-node-selector"
HANDLER_NAME = "sts-node-selector"
ANNOTATION_EXAMPLE = '{"key": "name", "even": "node1", "odd": "node2"}'
_FIELDS = ("key", "even", "odd")


@dataclass(frozen=True)
class NodeSelectorRule:
    """The parsed annotation: the nodeSelector key and the values for even and odd ordinals."""

    key: str
    even: str
    odd: str

    def value_for(self, ordinal: int) -> str:
        return self.even if ordinal % 2 == 0 else self.odd

    def to_annotation(self) -> str:
        return msgspec.json.encode({"key": self.key, "even": self.even, "odd": self.odd}).decode()


class AnnotationError(ValueError):
    """The annotation is not a usable rule; the message says exactly what is wrong."""


def parse_rule(text: str) -> NodeSelectorRule:
    """Parse and validate the annotation value, or raise AnnotationError."""
    try:
        data: Any = msgspec.json.decode(text.encode())
    except msgspec.DecodeError as exc:
        raise AnnotationError(f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"must be a JSON object, got {type(data).__name__} {text!r}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise AnnotationError(
            f"has unknown field(s) {', '.join(map(repr, unknown))}; only key, even and odd "
            "are allowed"
        )
    missing = [f for f in _FIELDS if f not in data]
    if missing:
        raise AnnotationError(f"is missing field(s) {', '.join(map(repr, missing))}")
    for name in _FIELDS:
        if not isinstance(data[name], str):
            raise AnnotationError(
                f"field {name!r} must be a string, got {type(data[name]).__name__} "
                f"{msgspec.json.encode(data[name]).decode()}"
            )
    key, even, odd = data["key"], data["even"], data["odd"]
    problem = label_key_error(key)
    if problem:
        raise AnnotationError(f"field 'key' {key!r} is not a valid label key: it {problem}")
    for name, value in (("even", even), ("odd", odd)):
        if not value:
            raise AnnotationError(f"field {name!r} must not be empty")
        problem = label_value_error(value)
        if problem:
            raise AnnotationError(
                f"field {name!r} {value!r} is not a valid label value: it {problem}"
            )
    return NodeSelectorRule(key, even, odd)


def opt_in_metadata(
    label_key: str, annotation: str, rule: NodeSelectorRule
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) a StatefulSet pod template needs to opt in (demos, docs)."""
    return {label_key: "true"}, {annotation: rule.to_annotation()}


class StsNodeSelector:
    """The mutating handler. Reads only labels, annotations, owners, name and nodeSelector."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.label_key = settings.sts_label_key
        self.annotation = settings.sts_annotation
        self.invalid_action = settings.sts_invalid_action

    def _hint(self) -> str:
        return (
            f"Expected annotation {self.annotation}: '{ANNOTATION_EXAMPLE}' on a pod of an "
            f"apps/v1 StatefulSet (pods with an even ordinal get nodeSelector name=node1, odd "
            f"ordinals name=node2). To opt out, remove the label {self.label_key}."
        )

    async def handle(self, request: Request) -> Response:
        pod = pod_of(request)
        if pod.labels.get(self.label_key) != "true":
            return allowed(reason="not-opted-in")  # the objectSelector normally filters these
        who = f"pod {pod_display_name(request, pod)}"
        try:
            identity = statefulset_identity(request, pod)
        except IdentityError as exc:
            return self._invalid(
                request, f"{who} has label {self.label_key}=true but {exc}", "not-statefulset-pod"
            )
        raw = pod.annotations.get(self.annotation)
        if raw is None:
            return self._invalid(
                request,
                f"{who} has label {self.label_key}=true but no annotation {self.annotation}",
                "annotation-missing",
            )
        try:
            rule = parse_rule(raw)
        except AnnotationError as exc:
            return self._invalid(
                request, f"{who}: annotation {self.annotation} {exc}", "annotation-invalid"
            )
        return self._place(request, pod, who, rule, identity.statefulset, identity.ordinal)

    def _place(
        self,
        request: Request,
        pod: PodView,
        who: str,
        rule: NodeSelectorRule,
        statefulset: str,
        ordinal: int,
    ) -> Response:
        value = rule.value_for(ordinal)
        parity = "even" if ordinal % 2 == 0 else "odd"
        current = pod.spec.node_selector
        previous = None if current is None else current.get(rule.key)
        if previous == value:
            return allowed(reason="node-selector-present")
        ops = set_map_entry(
            None if current is None else dict(current), "/spec/nodeSelector", rule.key, value
        )
        message = f"nodeSelector {rule.key}={value} for {parity} ordinal {ordinal}"
        # The API server records it as "sts-node-selector.kubeguard.io/node-selector".
        response = patched(ops, reason="node-selector-set").with_audit(
            "node-selector", f"{rule.key}={value}"
        )
        if previous is not None:
            response = response.with_warnings(
                f"kubeguard replaced nodeSelector {rule.key}={previous} with {rule.key}={value} "
                f"(annotation {self.annotation}, {parity} ordinal {ordinal})"
            )
        send_notice(
            self.runtime,
            request,
            events.PLUGIN_MUTATION,
            "StatefulSet pod placed",
            f"{who}: set {message}",
            statefulset=statefulset,
            ordinal=str(ordinal),
            nodeSelector=f"{rule.key}={value}",
        )
        return response

    def _invalid(self, request: Request, problem: str, reason: str) -> Response:
        message = f"{problem}. {self._hint()}"
        if self.invalid_action == "warn":
            send_notice(
                self.runtime,
                request,
                events.PLUGIN_WARNING,
                "StatefulSet pod admitted without placement",
                message,
            )
            return allowed(reason=reason).with_warnings(
                f"kubeguard did not set a nodeSelector: {message}"
            )
        send_notice(self.runtime, request, events.PLUGIN_DENIAL, "StatefulSet pod denied", message)
        return denied(message, code=400, reason=reason)


def build(runtime: Runtime) -> list[HandlerSpec]:
    return labelled_pod_create_spec(
        name=HANDLER_NAME,
        path=PATH,
        handler=StsNodeSelector(runtime),
        label_key=runtime.settings.sts_label_key,
        reinvocation_policy="Never",
    )


PLUGIN: Plugin[Runtime] = Plugin(
    gate=GATE,
    description="Set a StatefulSet pod's nodeSelector from its ordinal's parity (seed 004).",
    build=build,
)
