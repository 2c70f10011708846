"""The real server process over HTTPS: decisions, routing, bad input, health, readiness, metrics.

One launcher process (tests/server/launcher.py) serves the whole module; see its docstring for
how the test handler decides.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import time
import uuid
from typing import Any

import httpx2
import pytest
from serverproc import DECISION, ServerProcess, client_context, fixture_review

from kubeguard.admission.jsonpatch import apply
from kubeguard.certs import KeyPair

UPDATE = "pod-update-label-by-user.json"
DELETE = "pod-delete-by-user-denied.json"
JSON = {"Content-Type": "application/json"}


def post(client: httpx2.Client, path: str, review: dict[str, Any]) -> httpx2.Response:
    return client.post(path, content=json.dumps(review).encode(), headers=JSON)


def response_of(resp: httpx2.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    out: dict[str, Any] = body["response"]
    return out


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
        if sample.split("{")[0] == name and found == labels:
            return float(value)
    return 0.0


# --- decisions -----------------------------------------------------------------------------------


def test_allowed_review_echoes_uid_through_the_query_string(client: httpx2.Client) -> None:
    review = fixture_review(UPDATE)
    out = response_of(post(client, "/validate?timeout=5s", review))
    assert out == {"uid": review["request"]["uid"], "allowed": True}


def test_denied_review_carries_code_and_message(client: httpx2.Client) -> None:
    review = fixture_review(UPDATE, {DECISION: "deny"})
    out = response_of(post(client, "/validate?timeout=5s", review))
    assert out["uid"] == review["request"]["uid"]
    assert out["allowed"] is False
    assert out["status"] == {
        "code": 403,
        "message": "UPDATE pods demo/label-me is denied by the test",
        "reason": "Forbidden",
    }


def test_denial_with_429_for_retrying_clients(client: httpx2.Client) -> None:
    out = response_of(post(client, "/validate", fixture_review(UPDATE, {DECISION: "deny429"})))
    assert out["allowed"] is False
    assert out["status"]["code"] == 429
    assert out["status"]["reason"] == "TooManyRequests"


def test_delete_review_is_decided_from_the_old_object(client: httpx2.Client) -> None:
    review = fixture_review(DELETE, {DECISION: "deny"})
    assert review["request"]["object"] is None
    out = response_of(post(client, "/validate", review))
    assert out["allowed"] is False
    assert out["status"]["message"] == "DELETE pods demo/user-del-denied is denied by the test"


def test_mutating_path_returns_a_base64_json_patch_that_applies(client: httpx2.Client) -> None:
    review = fixture_review(UPDATE)
    out = response_of(post(client, "/mutate?timeout=10s", review))
    assert out["allowed"] is True
    assert out["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(out["patch"]))
    assert ops == [{"op": "add", "path": "/metadata/labels/mutated", "value": "true"}]
    patched = apply(review["request"]["object"], ops)
    assert patched["metadata"]["labels"]["mutated"] == "true"
    assert patched["metadata"]["labels"]["tier"] == "backend"


def test_handler_exception_fails_closed_with_500_and_logs_the_uid(
    client: httpx2.Client, server: ServerProcess
) -> None:
    review = fixture_review(UPDATE, {DECISION: "raise"})
    uid = review["request"]["uid"]
    out = response_of(post(client, "/validate", review))
    assert out["uid"] == uid
    assert out["allowed"] is False
    assert out["status"]["code"] == 500
    assert out["status"]["reason"] == "InternalError"
    assert "test-validate failed: RuntimeError: test handler exploded" in out["status"]["message"]
    failure = server.wait_for(
        lambda r: r.get("msg") == "admission handler failed" and r.get("uid") == uid
    )
    assert failure["level"] == "error"
    assert "RuntimeError" in failure["exc"]
    decision = server.wait_for(
        lambda r: r.get("msg") == "admission decision" and r.get("uid") == uid
    )
    assert decision["decision"] == "error"


def test_handler_exception_with_failure_policy_ignore_allows_with_500_message(
    client: httpx2.Client, server: ServerProcess
) -> None:
    review = fixture_review(UPDATE, {DECISION: "raise"})
    uid = review["request"]["uid"]
    out = response_of(post(client, "/validate-ignore", review))
    assert out["allowed"] is True
    assert out["status"]["code"] == 500
    assert "RuntimeError" in out["status"]["message"]
    assert any("failure policy Ignore: allowed" in w for w in out["warnings"])
    server.wait_for(lambda r: r.get("msg") == "admission handler failed" and r.get("uid") == uid)


def test_one_decision_log_line_per_request(client: httpx2.Client, server: ServerProcess) -> None:
    review = fixture_review(UPDATE, {DECISION: "deny"})
    uid = review["request"]["uid"]
    post(client, "/validate", review)
    line = server.wait_for(lambda r: r.get("msg") == "admission decision" and r.get("uid") == uid)
    assert line["level"] == "info"
    assert {k: line[k] for k in ("operation", "resource", "namespace", "object_name", "user")} == {
        "operation": "UPDATE",
        "resource": "pods",
        "namespace": "demo",
        "object_name": "label-me",
        "user": "alice",
    }
    assert (line["decision"], line["reason"], line["path"]) == ("denied", "test-deny", "/validate")
    time.sleep(0.2)
    assert len([r for r in server.messages("admission decision") if r.get("uid") == uid]) == 1


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405_with_allow_header(client: httpx2.Client, method: str) -> None:
    resp = client.request(method, "/validate?timeout=5s")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "POST"
    assert f"method {method} not allowed on /validate" in resp.text


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/yaml"]
)
def test_wrong_content_type_is_415(client: httpx2.Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps(fixture_review(UPDATE)).encode()
    resp = client.post("/validate", content=body, headers=headers)
    assert resp.status_code == 415
    assert "application/json" in resp.text


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json;"]
)
def test_json_content_type_variants_are_accepted(client: httpx2.Client, content_type: str) -> None:
    review = fixture_review(UPDATE)
    body = json.dumps(review).encode()
    resp = client.post("/validate", content=body, headers={"Content-Type": content_type})
    assert response_of(resp)["uid"] == review["request"]["uid"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "invalid AdmissionReview"),
        (b"{not json", "invalid AdmissionReview"),
        (b"[]", "invalid AdmissionReview"),
        (b'{"kind":"Pod","apiVersion":"v1"}', "expected kind 'AdmissionReview', got 'Pod'"),
        (
            b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"a"}}',
            "only admission.k8s.io/v1 is served",
        ),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}', "has no request"),
        (b'{"request":{"uid":""}}', "empty uid"),
        (b'{"request":{"uid":42}}', "Expected `str`, got `int` - at `$.request.uid`"),
        (b'{"request":{"uid":"a","userInfo":[]}}', "at `$.request.userInfo`"),
        (b"\xff\xfe\x00", "invalid AdmissionReview"),
    ],
)
def test_not_an_admission_review_is_400_with_the_reason(
    client: httpx2.Client, body: bytes, reason: str
) -> None:
    resp = client.post("/validate", content=body, headers=JSON)
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("text/plain")
    assert reason in resp.text


def test_declared_body_over_7_mib_is_413_without_reading_it(
    server: ServerProcess, ca: KeyPair
) -> None:
    ctx = client_context(ca)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            b"POST /validate?timeout=5s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (7 * 1024 * 1024 + 1)
        )
        # No body is sent: the answer must come from the headers alone, then the server closes.
        data = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n", 1)[0]
    assert head == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"connection: close" in data.lower()
    assert b"larger than the 7340032 byte limit" in data


def test_streamed_body_over_7_mib_is_413(client: httpx2.Client) -> None:
    def chunks() -> Any:
        block = b" " * (1024 * 1024)
        for _ in range(8):
            yield block

    try:
        resp = client.post("/validate", content=chunks(), headers=JSON)
    except httpx2.TransportError:
        pytest.fail("the server must answer 413, not drop the connection")
    assert resp.status_code == 413


def test_body_of_exactly_7_mib_is_read_and_decoded(client: httpx2.Client) -> None:
    review = fixture_review(UPDATE)
    body = json.dumps(review).encode()
    body = body + b" " * (7 * 1024 * 1024 - len(body))  # trailing whitespace is valid JSON
    resp = client.post("/validate", content=body, headers=JSON)
    assert response_of(resp)["uid"] == review["request"]["uid"]


@pytest.mark.parametrize(
    "path", ["/", "/nope", "/validate/", "/validatex", "/disabled", "/VALIDATE"]
)
def test_unknown_path_is_404(client: httpx2.Client, path: str) -> None:
    resp = client.post(path, content=json.dumps(fixture_review(UPDATE)).encode(), headers=JSON)
    assert resp.status_code == 404
    assert "no handler for path" in resp.text


def test_connection_is_reused_after_bad_requests(client: httpx2.Client) -> None:
    seen: set[Any] = set()
    for body in (b"{", b"[]", json.dumps(fixture_review(UPDATE)).encode()):
        with client.stream("POST", "/validate", content=body, headers=JSON) as resp:
            resp.read()
            seen.add(id(resp.extensions["network_stream"]))
    assert len(seen) == 1


# --- health, readiness, metrics, extra routes ----------------------------------------------------


def test_healthz(client: httpx2.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.head("/healthz").status_code == 200
    resp = client.post("/healthz")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, HEAD"


def _ready(client: httpx2.Client, want: int) -> httpx2.Response:
    deadline = time.monotonic() + 10
    while True:
        resp = client.get("/readyz")
        if resp.status_code == want or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


def test_readyz_follows_handler_and_runtime_checks(
    client: httpx2.Client, server: ServerProcess
) -> None:
    assert client.get("/readyz").json() == {"ready": True}
    handler_flag = server.state_dir / "handler-not-ready"
    runtime_flag = server.state_dir / "runtime-not-ready"
    try:
        handler_flag.touch()
        resp = _ready(client, 503)
        assert resp.status_code == 503
        assert resp.json() == {"ready": False, "notReady": ["handler test-validate (/validate)"]}
        runtime_flag.touch()
        assert resp.status_code == 503
        assert client.get("/readyz").json()["notReady"] == [
            "handler test-validate (/validate)",
            "test-cache",
        ]
        handler_flag.unlink()
        assert client.get("/readyz").json()["notReady"] == ["test-cache"]
    finally:
        handler_flag.unlink(missing_ok=True)
        runtime_flag.unlink(missing_ok=True)
    assert _ready(client, 200).json() == {"ready": True}


def test_metrics_count_decisions_per_handler(client: httpx2.Client, server: ServerProcess) -> None:
    before = client.get("/metrics").text
    post(client, "/validate", fixture_review(UPDATE))
    post(client, "/validate", fixture_review(UPDATE))
    post(client, "/validate", fixture_review(UPDATE, {DECISION: "deny"}))
    post(client, "/validate", fixture_review(UPDATE, {DECISION: "raise"}))
    post(client, "/mutate", fixture_review(UPDATE))
    client.post("/validate", content=b"{", headers=JSON)
    client.post("/validate", content=b"{}", headers={"Content-Type": "text/plain"})
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    after = resp.text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    by = {"webhook": "/validate", "handler": "test-validate"}
    assert delta("admission_requests_total", **by, decision="allowed") == 2
    assert delta("admission_requests_total", **by, decision="denied") == 1
    assert delta("admission_requests_total", **by, decision="error") == 1
    assert (
        delta(
            "admission_requests_total", webhook="/mutate", handler="test-mutate", decision="patched"
        )
        == 1
    )
    assert delta("admission_request_duration_seconds_count", **by) == 4
    assert delta("admission_bad_requests_total", path="/validate", code="400") == 1
    assert delta("admission_bad_requests_total", path="/validate", code="415") == 1
    assert metric(after, "cert_reloads_total", result="success") == 1
    assert metric(after, "cert_reloads_total", result="error") == 0
    assert metric(after, "serving_cert_expiry_timestamp_seconds") > time.time() + 300 * 86400


def test_extra_routes_exact_and_prefix(client: httpx2.Client) -> None:
    resp = client.post("/test/echo?x=1", content=b"hello")
    assert resp.status_code == 200
    assert resp.headers["x-test"] == "yes"
    assert resp.json() == {"method": "POST", "path": "/test/echo", "query": "x=1", "body": 5}
    resp = client.get("/test/echo")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "POST"
    assert client.get("/test/items/a/b").json()["path"] == "/test/items/a/b"
    assert client.delete("/test/items").json()["method"] == "DELETE"
    assert client.get("/test/itemsx").status_code == 404


def test_background_tasks_run(server: ServerProcess) -> None:
    deadline = time.monotonic() + 10
    while not (server.state_dir / "task-ran").exists():
        assert time.monotonic() < deadline, "the runtime's background task never ran"
        time.sleep(0.05)


def test_start_up_line_lists_gates_and_webhooks(server: ServerProcess) -> None:
    line = server.wait_for(lambda r: r.get("msg") == "kubeguard starting")
    assert line["feature_gates"] == "ServerTest=true,ServerTestDisabled=false"
    assert line["webhooks"] == {
        "/validate": ["test-validate"],
        "/validate-ignore": ["test-validate-ignore"],
        "/mutate": ["test-mutate"],
    }
    assert line["settings"]["bind_address"] == "127.0.0.1"
    assert line["settings"]["port"] == 0


def test_uids_are_never_mixed_up_under_concurrency(server: ServerProcess, ca: KeyPair) -> None:
    import concurrent.futures

    def one(i: int) -> tuple[str, dict[str, Any]]:
        review = fixture_review(UPDATE, {DECISION: "deny" if i % 2 else "allow"})
        review["request"]["uid"] = str(uuid.uuid4())
        with httpx2.Client(base_url=server.url, verify=client_context(ca), timeout=10) as c:
            return review["request"]["uid"], response_of(post(c, "/validate", review))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(40)))
    for i, (uid, out) in enumerate(results):
        assert out["uid"] == uid
        assert out["allowed"] is (i % 2 == 0)
