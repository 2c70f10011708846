"""The admission framework: review types, handlers, responses, JSON patch, registry."""

from kubeguard.admission.handler import (
    Handler,
    MultiMutatingHandler,
    MultiValidatingHandler,
    Response,
    allowed,
    denied,
    errored,
    patched,
)
from kubeguard.admission.registry import (
    FeatureGateError,
    FeatureGates,
    Plugin,
    Registry,
    group_webhooks,
    parse_feature_gates,
)
from kubeguard.admission.review import AdmissionRequest, Request, UserInfo, decode_review
from kubeguard.admission.webhook import HandlerSpec, Rule, Webhook, WebhookEntry

__all__ = [
    "AdmissionRequest",
    "FeatureGateError",
    "FeatureGates",
    "Handler",
    "HandlerSpec",
    "MultiMutatingHandler",
    "MultiValidatingHandler",
    "Plugin",
    "Registry",
    "Request",
    "Response",
    "Rule",
    "UserInfo",
    "Webhook",
    "WebhookEntry",
    "allowed",
    "decode_review",
    "denied",
    "errored",
    "group_webhooks",
    "parse_feature_gates",
    "patched",
]
