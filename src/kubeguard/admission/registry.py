"""Plugin registry and feature gates (seed 003: Koordinator's handler registry + feature gates).

Every webhook is a plugin: a feature gate name, a default, and a builder that returns the
`HandlerSpec`s it serves. The registry builds only the enabled plugins and groups their
handlers by path into `Webhook`s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from kubeguard.admission.webhook import HandlerSpec, Webhook
from kubeguard.metrics import AdmissionMetrics

C = TypeVar("C")

_TRUE = {"true"}
_FALSE = {"false"}


class FeatureGateError(ValueError):
    """A --feature-gates value is malformed or names an unknown gate."""


def parse_feature_gates(text: str) -> dict[str, bool]:
    """Parse Kubernetes syntax `A=true,B=false` (whitespace tolerated, case-insensitive bool)."""
    result: dict[str, bool] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip().lower()
        if not sep or not name:
            raise FeatureGateError(
                f"invalid feature gate {item!r}: expected Name=true or Name=false"
            )
        if value in _TRUE:
            result[name] = True
        elif value in _FALSE:
            result[name] = False
        else:
            raise FeatureGateError(
                f"invalid value {value!r} for feature gate {name}: expected true or false"
            )
    return result


@dataclass(frozen=True)
class Plugin(Generic[C]):
    """A webhook plugin. `build` receives the runtime context and returns its handlers."""

    gate: str
    description: str
    build: Callable[[C], Sequence[HandlerSpec]]
    default_enabled: bool = False


class FeatureGates:
    """Resolved gates: the plugins' defaults overridden by the operator's settings."""

    def __init__(self, known: Mapping[str, bool], overrides: Mapping[str, bool]) -> None:
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise FeatureGateError(
                f"unknown feature gate(s) {', '.join(unknown)}; known gates: "
                + ", ".join(sorted(known))
            )
        self._state = {**known, **overrides}

    def enabled(self, gate: str) -> bool:
        return self._state.get(gate, False)

    def as_dict(self) -> dict[str, bool]:
        return dict(sorted(self._state.items()))

    def __str__(self) -> str:
        return ",".join(f"{k}={str(v).lower()}" for k, v in self.as_dict().items())


class Registry(Generic[C]):
    """Plugins by gate name, in registration order."""

    def __init__(self) -> None:
        self._plugins: dict[str, Plugin[C]] = {}

    def register(self, plugin: Plugin[C]) -> None:
        if plugin.gate in self._plugins:
            raise ValueError(f"feature gate {plugin.gate} is registered twice")
        self._plugins[plugin.gate] = plugin

    @property
    def plugins(self) -> list[Plugin[C]]:
        return list(self._plugins.values())

    def gates(self, overrides: Mapping[str, bool] | str = "") -> FeatureGates:
        if isinstance(overrides, str):
            overrides = parse_feature_gates(overrides)
        defaults = {p.gate: p.default_enabled for p in self._plugins.values()}
        return FeatureGates(defaults, overrides)

    def build_specs(self, gates: FeatureGates, context: C) -> list[HandlerSpec]:
        specs: list[HandlerSpec] = []
        for plugin in self._plugins.values():
            if gates.enabled(plugin.gate):
                specs.extend(plugin.build(context))
        return specs

    def build(self, gates: FeatureGates, context: C, metrics: AdmissionMetrics) -> list[Webhook]:
        return group_webhooks(self.build_specs(gates, context), metrics)


def group_webhooks(specs: Iterable[HandlerSpec], metrics: AdmissionMetrics) -> list[Webhook]:
    """Group handler specs by path (registration order kept) into Webhooks."""
    by_path: dict[str, list[HandlerSpec]] = {}
    for spec in specs:
        if not spec.path.startswith("/"):
            raise ValueError(f"handler {spec.name}: path {spec.path!r} must start with '/'")
        by_path.setdefault(spec.path, []).append(spec)
    webhooks = []
    for path, group in by_path.items():
        kinds = {s.kind for s in group}
        if len(kinds) > 1:
            names = ", ".join(s.name for s in group)
            raise ValueError(f"path {path} mixes validating and mutating handlers: {names}")
        webhooks.append(Webhook(path=path, kind=group[0].kind, specs=group, metrics=metrics))
    return webhooks
