"""Decoding AdmissionReviews: the Request wrapper, and property tests that no input makes the
decoder or `Webhook.review` fail with anything but the clean 400 path."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from kubeguard.admission import HandlerSpec, Request, Response, allowed, decode_review
from kubeguard.admission.registry import group_webhooks
from kubeguard.admission.review import ReviewDecodeError, ReviewDecoder
from kubeguard.metrics import AdmissionMetrics


class Labels(msgspec.Struct):
    labels: dict[str, str] | None = None


class Pod(msgspec.Struct):
    metadata: Labels = msgspec.field(default_factory=Labels)


def _body(**request: Any) -> bytes:
    return json.dumps(
        {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request}
    ).encode()


def test_request_accessors() -> None:
    req = Request(
        decode_review(
            _body(
                uid="u1",
                operation="DELETE",
                resource={"resource": "pods"},
                subResource="",
                namespace="demo",
                name="web-0",
                userInfo={"username": "bob", "groups": ["g"], "uid": "x", "extra": {"k": ["v"]}},
                object=None,
                oldObject={"metadata": {"labels": {"a": "b"}}},
                dryRun=True,
                options={"kind": "DeleteOptions"},
            )
        )
    )
    assert (req.uid, req.operation, req.resource, req.namespace, req.name) == (
        "u1", "DELETE", "pods", "demo", "web-0"
    )  # fmt: skip
    assert req.user.username == "bob" and req.user.extra == {"k": ["v"]}
    assert req.dry_run is True
    assert req.object_as(Pod) is None  # JSON null
    old = req.old_object_as(Pod)
    assert old is not None and old.metadata.labels == {"a": "b"}
    assert req.describe() == "DELETE pods demo/web-0"


def test_absent_members_decode_as_none() -> None:
    req = Request(decode_review(_body(uid="u")))
    assert req.object_as(Pod) is None
    assert req.old_object_as(Pod) is None
    assert req.options_as(Pod) is None
    assert req.describe().strip() == ""  # nothing known; still no exception


def test_envelope_fields_default_when_kind_and_version_are_missing() -> None:
    # kube-apiserver always sends both; a missing one is tolerated, a wrong one is not.
    assert decode_review(b'{"request":{"uid":"u"}}').uid == "u"
    with pytest.raises(ReviewDecodeError, match="expected kind 'AdmissionReview', got 'Pod'"):
        decode_review(b'{"kind":"Pod","request":{"uid":"u"}}')


# --- property tests ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

request_like = st.fixed_dictionaries(
    {},
    optional={
        "uid": st.text(max_size=10) | json_values,
        "kind": json_values | st.fixed_dictionaries({"kind": st.text(max_size=5)}),
        "resource": json_values,
        "operation": st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]) | json_values,
        "subResource": json_values,
        "namespace": json_values,
        "name": json_values,
        "userInfo": json_values
        | st.fixed_dictionaries({"username": json_values, "groups": json_values}),
        "object": json_values,
        "oldObject": json_values,
        "dryRun": json_values,
        "options": json_values,
    },
)

review_like = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.just("AdmissionReview") | json_values,
        "apiVersion": st.just("admission.k8s.io/v1") | json_values,
        "request": request_like | json_values,
    },
)


class ReadsEverything:
    """A handler that reads every part of the request through narrow views."""

    async def handle(self, request: Request) -> Response:
        request.describe()
        _ = (request.user.username, request.kind.kind, request.dry_run)
        for getter in (request.object_as, request.old_object_as):
            with contextlib.suppress(msgspec.ValidationError):
                getter(Pod)
        return allowed()


_loop = asyncio.new_event_loop()  # one loop for all examples: asyncio.run() per call is slow


def teardown_module() -> None:
    _loop.close()


_registry = CollectorRegistry()
_webhook = group_webhooks(
    [HandlerSpec("reads", "/v", "validating", ReadsEverything())], AdmissionMetrics(_registry)
)[0]
# The same handler with its view declared: objects are decoded with the envelope, in one pass.
_typed = group_webhooks(
    [HandlerSpec("reads", "/t", "validating", ReadsEverything(), object_view=Pod)],
    AdmissionMetrics(CollectorRegistry()),
)[0]


def _check_review(body: bytes) -> None:
    try:
        raw = decode_review(body)
    except ReviewDecodeError as exc:
        assert str(exc)
        decoded = False
    else:
        assert isinstance(raw.uid, str) and raw.uid
        decoded = True
    status, out = _loop.run_until_complete(_webhook.review(body))
    # A declared view changes how, never whether, a body is decoded, nor the decision.
    typed_status, typed_out = _loop.run_until_complete(_typed.review(body))
    assert typed_status == status
    if status == 200:
        assert json.loads(typed_out) == json.loads(out)
    if decoded:
        assert status == 200
        response = json.loads(out)["response"]
        assert response["uid"] == raw.uid
        assert response["allowed"] is True
    else:
        assert status == 400
        assert out.decode()  # a readable reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_400(body: bytes) -> None:
    _check_review(body)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_decodes_or_400(value: Any) -> None:
    _check_review(json.dumps(value).encode())


@settings(max_examples=250, deadline=None)
@given(review_like)
def test_review_shaped_json_decodes_or_400(value: dict[str, Any]) -> None:
    _check_review(json.dumps(value).encode())


@settings(max_examples=200, deadline=None)
@given(review_like, st.integers(min_value=0, max_value=200), st.binary(max_size=8))
def test_truncated_or_corrupted_reviews_are_400(
    value: dict[str, Any], cut: int, junk: bytes
) -> None:
    body = json.dumps(value).encode()
    _check_review(body[:cut] + junk)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"request":' * 10_000,
        b'{"request":{"uid":"u","object":' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
        b'{"request":{"uid":"\\ud800"}}',
        b'{"request":{"uid":"u"}} trailing',
        b"\x00" * 64,
        b'{"request":{"uid":"u","dryRun":"yes"}}',
        b'{"request":{"uid":"u","object":NaN}}',
        b'{"kind": "\x80"}',  # not UTF-8 (hypothesis found it: a 500 instead of a 400)
        b'{"request":{"uid":"\xff\xfe"}}',
    ],
)
def test_pathological_bodies(body: bytes) -> None:
    _check_review(body)


# --- one-pass decoding into a declared view --------------------------------------------------


def test_view_is_decoded_with_the_envelope() -> None:
    decoder = ReviewDecoder(Pod)
    body = _body(
        uid="u",
        object={"metadata": {"labels": {"a": "b"}}, "spec": {"big": "x" * 1000}},
        oldObject=None,
    )
    request = decoder.decode(body)
    assert request.view is Pod
    assert request.object_as(Pod) == Pod(Labels({"a": "b"}))
    assert request.old_object_as(Pod) is None
    with pytest.raises(TypeError, match="decoded as Pod"):
        request.object_as(Labels)


def test_object_that_does_not_fit_the_view_falls_back_to_raw() -> None:
    body = _body(uid="u", object={"metadata": {"labels": "not-a-map"}})
    request = ReviewDecoder(Pod).decode(body)
    assert request.view is None  # decoded generically: the review itself is fine
    with pytest.raises(msgspec.ValidationError, match="labels"):
        request.object_as(Pod)  # the handler's own decode reports the misfit, as without a view


def test_errors_are_the_generic_ones_with_a_view() -> None:
    with pytest.raises(ReviewDecodeError, match="empty uid"):
        ReviewDecoder(Pod).decode(_body(uid=""))


def test_a_path_with_different_views_decodes_generically() -> None:
    specs = [
        HandlerSpec("a", "/m", "validating", ReadsEverything(), object_view=Pod),
        HandlerSpec("b", "/m", "validating", ReadsEverything(), object_view=Labels),
    ]
    [webhook] = group_webhooks(specs, AdmissionMetrics(CollectorRegistry()))
    assert webhook.decoder.view is None
    [same] = group_webhooks(specs[:1], AdmissionMetrics(CollectorRegistry()))
    assert same.decoder.view is Pod
