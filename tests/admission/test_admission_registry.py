"""Feature gates, the plugin registry and grouping handlers into webhooks."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from kubeguard.admission import (
    FeatureGateError,
    FeatureGates,
    HandlerSpec,
    Plugin,
    Registry,
    Request,
    Response,
    allowed,
    group_webhooks,
    parse_feature_gates,
)
from kubeguard.admission.handler import MultiMutatingHandler, MultiValidatingHandler
from kubeguard.admission.webhook import Webhook
from kubeguard.metrics import AdmissionMetrics


class Allow:
    async def handle(self, request: Request) -> Response:
        return allowed()


def spec(name: str, path: str, kind: str = "validating") -> HandlerSpec:
    return HandlerSpec(name, path, kind, Allow())  # type: ignore[arg-type]


# --- parse_feature_gates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("   ", {}),
        ("A=true", {"A": True}),
        ("PodEvictionProtection=true,StsNodeSelector=false", {
            "PodEvictionProtection": True, "StsNodeSelector": False
        }),
        (" A = TRUE , B=False ,", {"A": True, "B": False}),
        ("A=true,A=false", {"A": False}),  # the last one wins, as in Kubernetes
        (",,A=true,,", {"A": True}),
    ],
)  # fmt: skip
def test_parse_feature_gates(text: str, expected: dict[str, bool]) -> None:
    assert parse_feature_gates(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A", "invalid feature gate 'A': expected Name=true or Name=false"),
        ("=true", "invalid feature gate '=true'"),
        ("A=yes", "invalid value 'yes' for feature gate A: expected true or false"),
        ("A=1", "invalid value '1' for feature gate A"),
        ("A=", "invalid value '' for feature gate A"),
        ("A=true,B", "invalid feature gate 'B'"),
    ],
)
def test_parse_feature_gates_errors(text: str, message: str) -> None:
    with pytest.raises(FeatureGateError) as info:
        parse_feature_gates(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_feature_gates_defaults_overrides_and_unknown() -> None:
    gates = FeatureGates({"A": True, "B": False}, {"B": True})
    assert gates.enabled("A") and gates.enabled("B")
    assert not gates.enabled("C")
    assert gates.as_dict() == {"A": True, "B": True}
    assert str(gates) == "A=true,B=true"
    with pytest.raises(
        FeatureGateError, match=r"unknown feature gate\(s\) C, D; known gates: A, B"
    ):
        FeatureGates({"A": True, "B": False}, {"D": True, "C": False})


# --- Registry ------------------------------------------------------------------------------------


def _registry(built: list[str]) -> Registry[str]:
    def builder(name: str, path: str) -> Plugin[str]:
        def build(ctx: str) -> list[HandlerSpec]:
            built.append(f"{name}:{ctx}")
            return [spec(name, path)]

        return Plugin(name, f"{name} plugin", build, default_enabled=(name != "Off"))

    registry: Registry[str] = Registry()
    registry.register(builder("On", "/validate"))
    registry.register(builder("Off", "/validate"))
    registry.register(builder("Other", "/other"))
    return registry


def test_registry_builds_only_enabled_plugins_in_order() -> None:
    built: list[str] = []
    registry = _registry(built)
    assert [p.gate for p in registry.plugins] == ["On", "Off", "Other"]
    gates = registry.gates("")
    assert gates.as_dict() == {"Off": False, "On": True, "Other": True}
    webhooks = registry.build(gates, "ctx", AdmissionMetrics(CollectorRegistry()))
    assert built == ["On:ctx", "Other:ctx"]
    assert [(w.path, w.names) for w in webhooks] == [("/validate", ["On"]), ("/other", ["Other"])]


def test_registry_gates_from_text_and_mapping() -> None:
    built: list[str] = []
    registry = _registry(built)
    gates = registry.gates("Off=true,On=false")
    specs = registry.build_specs(gates, "x")
    assert [s.name for s in specs] == ["Off", "Other"]
    assert registry.gates({"Other": False}).as_dict()["Other"] is False
    with pytest.raises(FeatureGateError, match="unknown feature gate"):
        registry.gates("Missing=true")


def test_registry_refuses_a_gate_twice() -> None:
    registry = _registry([])
    with pytest.raises(ValueError, match="feature gate On is registered twice"):
        registry.register(Plugin("On", "again", lambda ctx: []))


# --- group_webhooks / Webhook --------------------------------------------------------------------


def test_group_webhooks_by_path_keeps_order_and_composes_by_kind() -> None:
    metrics = AdmissionMetrics(CollectorRegistry())
    webhooks = group_webhooks(
        [
            spec("a", "/validate"),
            spec("m", "/mutate", "mutating"),
            spec("b", "/validate"),
        ],
        metrics,
    )
    assert [(w.path, w.kind, w.names) for w in webhooks] == [
        ("/validate", "validating", ["a", "b"]),
        ("/mutate", "mutating", ["m"]),
    ]
    assert isinstance(webhooks[0].handler, MultiValidatingHandler)
    assert isinstance(webhooks[1].handler, MultiMutatingHandler)


def test_group_webhooks_refuses_mixed_kinds_and_relative_paths() -> None:
    metrics = AdmissionMetrics(CollectorRegistry())
    with pytest.raises(ValueError, match="path /x mixes validating and mutating handlers: a, b"):
        group_webhooks([spec("a", "/x"), spec("b", "/x", "mutating")], metrics)
    with pytest.raises(ValueError, match="handler a: path 'x' must start with '/'"):
        group_webhooks([spec("a", "x")], metrics)
    with pytest.raises(ValueError, match="has no handlers"):
        Webhook(path="/x", kind="validating", specs=[], metrics=metrics)


def test_webhook_readiness_is_all_of_its_handlers() -> None:
    state = {"a": True, "b": True}
    specs = [
        HandlerSpec("a", "/v", "validating", Allow(), ready=lambda: state["a"]),
        HandlerSpec("b", "/v", "validating", Allow(), ready=lambda: state["b"]),
        HandlerSpec("c", "/v", "validating", Allow()),
    ]
    webhook = group_webhooks(specs, AdmissionMetrics(CollectorRegistry()))[0]
    assert webhook.is_ready()
    state["b"] = False
    assert not webhook.is_ready()
