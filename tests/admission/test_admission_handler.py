"""Responses and their helpers, `to_wire`, handler composition and `Webhook.review`."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from kubeguard.admission import (
    HandlerSpec,
    MultiMutatingHandler,
    MultiValidatingHandler,
    Request,
    Response,
    allowed,
    decode_review,
    denied,
    errored,
    group_webhooks,
    patched,
)
from kubeguard.admission import jsonpatch as jp
from kubeguard.admission.review import encode_response
from kubeguard.admission.webhook import decode_patch, to_wire
from kubeguard.metrics import AdmissionMetrics

UID = "705ab4f5-6393-11e8-b7cc-42010a800002"


def review(obj: dict[str, Any] | None = None, **request: Any) -> bytes:
    req = {
        "uid": UID,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": "demo",
        "name": "web-0",
        "userInfo": {"username": "alice", "groups": ["dev"]},
        "object": obj if obj is not None else {"metadata": {"name": "web-0"}},
        **request,
    }
    return json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}
    ).encode()


def request() -> Request:
    return Request(decode_review(review()))


class Fixed:
    def __init__(self, response: Response) -> None:
        self.response = response
        self.calls = 0

    async def handle(self, request: Request) -> Response:
        self.calls += 1
        return self.response

    def __repr__(self) -> str:
        return f"Fixed({self.response.decision})"


class Raises:
    async def handle(self, request: Request) -> Response:
        raise ValueError("broken handler")


# --- helpers -------------------------------------------------------------------------------------


def test_helpers_and_decisions() -> None:
    assert allowed() == Response(allowed=True)
    assert allowed().decision == "allowed"
    d = denied("no", reason="protected")
    assert (d.allowed, d.code, d.message, d.reason, d.decision) == (
        False,
        403,
        "no",
        "protected",
        "denied",
    )
    assert denied("later", code=429).reason == "denied"
    p = patched([jp.add("/a", 1)])
    assert (p.allowed, p.decision, p.patch) == (
        True,
        "patched",
        ({"op": "add", "path": "/a", "value": 1},),
    )
    assert patched([]).decision == "allowed"
    e = errored(422, ValueError("bad object"))
    assert (e.allowed, e.code, e.message, e.decision) == (False, 422, "bad object", "denied")
    assert errored(500, "x").decision == "error"
    with pytest.raises(ValueError, match="needs an HTTP error code, got 200"):
        denied("x", code=200)


def test_warnings_and_audit_annotations_accumulate_immutably() -> None:
    base = allowed()
    w = base.with_warnings("a").with_warnings("b", "c").with_audit("k", "v")
    assert w.warnings == ("a", "b", "c")
    assert w.audit_annotations == (("k", "v"),)
    assert base.warnings == ()


# --- to_wire -------------------------------------------------------------------------------------


def test_to_wire_allowed_has_no_status() -> None:
    out = msgspec.json.decode(encode_response(to_wire(UID, allowed())))
    assert out == {
        "response": {"uid": UID, "allowed": True},
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
    }


def test_to_wire_denied_status_code_message_reason() -> None:
    out = msgspec.to_builtins(to_wire(UID, denied("protected", code=429)))
    assert out == {
        "uid": UID,
        "allowed": False,
        "status": {"code": 429, "message": "protected", "reason": "TooManyRequests"},
    }
    out = msgspec.to_builtins(to_wire(UID, denied("nope", code=418)))
    assert out["status"] == {"code": 418, "message": "nope"}  # no standard reason for 418


def test_to_wire_patch_is_base64_json_with_patch_type() -> None:
    ops = [jp.add("/metadata/labels/a", "b"), jp.remove("/spec/x")]
    wire = json.loads(encode_response(to_wire(UID, patched(ops, "labelled"))))["response"]
    assert wire["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(wire["patch"])) == ops
    assert decode_patch(wire["patch"]) == ops
    assert wire["status"] == {"code": 200, "message": "labelled"}


def test_to_wire_warnings_and_audit_annotations() -> None:
    resp = allowed().with_warnings("careful").with_audit("kubeguard.io/why", "break-glass")
    wire = msgspec.to_builtins(to_wire(UID, resp))
    assert wire["warnings"] == ["careful"]
    assert wire["auditAnnotations"] == {"kubeguard.io/why": "break-glass"}


# --- composition ---------------------------------------------------------------------------------


async def test_multi_validating_first_denial_wins_and_keeps_earlier_warnings() -> None:
    first = Fixed(allowed().with_warnings("w1"))
    deny = Fixed(denied("stop", reason="r"))
    never = Fixed(allowed())
    out = await MultiValidatingHandler([first, deny, never]).handle(request())
    assert (out.allowed, out.message, out.reason, out.warnings) == (False, "stop", "r", ("w1",))
    assert never.calls == 0


async def test_multi_validating_all_allowed_merges_warnings() -> None:
    out = await MultiValidatingHandler(
        [Fixed(allowed().with_warnings("a")), Fixed(allowed().with_warnings("b"))]
    ).handle(request())
    assert out == Response(allowed=True, warnings=("a", "b"))


async def test_multi_validating_refuses_a_patch() -> None:
    out = await MultiValidatingHandler([Fixed(patched([jp.add("/a", 1)]))]).handle(request())
    assert (out.allowed, out.code) == (False, 500)
    assert "returned a patch" in out.message


async def test_multi_mutating_concatenates_patches_and_messages() -> None:
    a = Fixed(patched([jp.add("/a", 1)], "set a").with_warnings("wa"))
    b = Fixed(patched([jp.add("/b", 2)], "set b"))
    out = await MultiMutatingHandler([a, b, Fixed(allowed())]).handle(request())
    assert out.patch == (jp.add("/a", 1), jp.add("/b", 2))
    assert out.message == "set a; set b"
    assert out.warnings == ("wa",)
    assert out.decision == "patched"


async def test_multi_mutating_first_denial_wins() -> None:
    last = Fixed(patched([jp.add("/b", 2)]))
    out = await MultiMutatingHandler(
        [Fixed(patched([jp.add("/a", 1)]).with_warnings("w")), Fixed(denied("no")), last]
    ).handle(request())
    assert (out.allowed, out.patch, out.warnings) == (False, (), ("w",))
    assert last.calls == 0


# --- Webhook.review ------------------------------------------------------------------------------


def _webhook(*specs: HandlerSpec) -> tuple[Any, CollectorRegistry]:
    registry = CollectorRegistry()
    return group_webhooks(specs, AdmissionMetrics(registry))[0], registry


def _count(registry: CollectorRegistry, handler: str, decision: str, path: str = "/v") -> float:
    labels = {"webhook": path, "handler": handler, "decision": decision}
    return registry.get_sample_value("admission_requests_total", labels) or 0.0


async def test_review_round_trip_metrics_and_decision_log(caplog: pytest.LogCaptureFixture) -> None:
    webhook, registry = _webhook(
        HandlerSpec("deny", "/v", "validating", Fixed(denied("no", reason="because")))
    )
    with caplog.at_level(logging.INFO, logger="kubeguard.admission"):
        status, body = await webhook.review(review())
    assert status == 200
    out = json.loads(body)["response"]
    assert out == {
        "uid": UID,
        "allowed": False,
        "status": {"code": 403, "message": "no", "reason": "Forbidden"},
    }
    assert _count(registry, "deny", "denied") == 1
    assert (
        registry.get_sample_value(
            "admission_request_duration_seconds_count", {"webhook": "/v", "handler": "deny"}
        )
        == 1
    )
    [line] = [r for r in caplog.records if r.getMessage() == "admission decision"]
    fields = {k: getattr(line, k) for k in (
        "uid", "operation", "resource", "namespace", "object_name", "user", "decision", "reason"
    )}  # fmt: skip
    assert fields == {
        "uid": UID, "operation": "CREATE", "resource": "pods", "namespace": "demo",
        "object_name": "web-0", "user": "alice", "decision": "denied", "reason": "because",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("response", "level"),
    [
        (allowed(), logging.DEBUG),  # the bulk of the traffic
        (allowed().with_warnings("careful"), logging.INFO),
        (allowed("allowed because"), logging.INFO),
        (patched([jp.add("/a", 1)]), logging.INFO),
        (denied("no"), logging.INFO),
    ],
    ids=["plain-allow", "warning", "message", "patched", "denied"],
)
async def test_decision_log_level(
    caplog: pytest.LogCaptureFixture, response: Response, level: int
) -> None:
    webhook, _ = _webhook(HandlerSpec("h", "/v", "validating", Fixed(response)))
    with caplog.at_level(logging.INFO, logger="kubeguard.admission"):
        await webhook.review(review())
    at_info = [r for r in caplog.records if r.getMessage() == "admission decision"]
    assert len(at_info) == (1 if level == logging.INFO else 0)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="kubeguard.admission"):
        await webhook.review(review())
    [line] = [r for r in caplog.records if r.getMessage() == "admission decision"]
    assert line.levelno == level


async def test_review_handler_exception_fail_policy(caplog: pytest.LogCaptureFixture) -> None:
    webhook, registry = _webhook(HandlerSpec("boom", "/v", "validating", Raises()))
    with caplog.at_level(logging.INFO, logger="kubeguard.admission"):
        status, body = await webhook.review(review())
    out = json.loads(body)["response"]
    assert status == 200
    assert out["allowed"] is False
    assert out["status"]["code"] == 500
    assert out["status"]["message"] == "kubeguard handler boom failed: ValueError: broken handler"
    assert _count(registry, "boom", "error") == 1
    failure = next(r for r in caplog.records if r.getMessage() == "admission handler failed")
    assert failure.uid == UID  # type: ignore[attr-defined]
    assert failure.exc_info is not None


async def test_review_handler_exception_ignore_policy_allows_with_500_message() -> None:
    webhook, registry = _webhook(
        HandlerSpec("boom", "/v", "validating", Raises(), failure_policy="Ignore"),
        HandlerSpec("ok", "/v", "validating", Fixed(allowed())),
    )
    status, body = await webhook.review(review())
    out = json.loads(body)["response"]
    assert status == 200
    assert out["allowed"] is True
    assert out["status"]["code"] == 500
    assert "ValueError: broken handler" in out["status"]["message"]
    assert out["warnings"] == [
        "kubeguard handler boom failed: ValueError: broken handler (failure policy Ignore: allowed)"
    ]
    assert _count(registry, "boom", "error") == 1
    assert _count(registry, "ok", "allowed") == 1


async def test_review_mutating_webhook_with_an_ignored_failure_keeps_other_patches() -> None:
    webhook, _ = _webhook(
        HandlerSpec("boom", "/m", "mutating", Raises(), failure_policy="Ignore"),
        HandlerSpec(
            "label", "/m", "mutating", Fixed(patched([jp.add("/metadata/labels", {"a": "b"})]))
        ),
    )
    _, body = await webhook.review(review())
    out = json.loads(body)["response"]
    assert out["allowed"] is True
    assert out["status"]["code"] == 500
    assert decode_patch(out["patch"]) == [jp.add("/metadata/labels", {"a": "b"})]


async def test_review_bad_body_is_400_and_counted() -> None:
    webhook, registry = _webhook(HandlerSpec("ok", "/v", "validating", Fixed(allowed())))
    status, body = await webhook.review(b'{"kind":"AdmissionReview"}')
    assert (status, body) == (400, b"AdmissionReview has no request")
    assert (
        registry.get_sample_value("admission_bad_requests_total", {"path": "/v", "code": "400"})
        == 1
    )


async def test_object_view_decoding_error_in_a_handler_is_a_handler_error() -> None:
    class View(msgspec.Struct):
        metadata: dict[str, int]

    class Reads:
        async def handle(self, request: Request) -> Response:
            request.object_as(View)
            return allowed()

    webhook, registry = _webhook(HandlerSpec("reads", "/v", "validating", Reads()))
    status, body = await webhook.review(review())
    assert status == 200
    assert json.loads(body)["response"]["status"]["code"] == 500
    assert _count(registry, "reads", "error") == 1
