"""Reusable test helpers: a fast simulated cluster and a recording HTTPS webhook.

    async with sim_cluster() as cluster, RecordingWebhook() as hook:
        await cluster.register_webhook(hook.configuration("deny.example.com", rules=[...]))

Both are plain async context managers, usable from any test folder.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from .. import certs
from .apiserver import stop_uvicorn
from .cluster import SimCluster
from .config import SimConfig, Timings

Decision = tuple[bool, int | None, str]  # (allowed, status code when denied, message)
Decider = Callable[[dict[str, Any]], Decision | dict[str, Any]]


@contextlib.asynccontextmanager
async def sim_cluster(config: SimConfig | None = None, **timings: Any) -> AsyncIterator[SimCluster]:
    """A started SimCluster with `Timings.fast(**timings)` (unless a config is given)."""
    cfg = config or SimConfig(timings=Timings.fast(**timings))
    async with SimCluster(cfg) as cluster:
        yield cluster


def allow_all(_request: dict[str, Any]) -> Decision:
    return True, None, ""


@dataclass
class Review:
    """One AdmissionReview request received by `RecordingWebhook` (the `request` object)."""

    request: dict[str, Any]
    path: str
    query: str

    @property
    def operation(self) -> str:
        return str(self.request.get("operation", ""))

    @property
    def resource(self) -> str:
        res = str(self.request.get("resource", {}).get("resource", ""))
        sub = self.request.get("subResource")
        return f"{res}/{sub}" if sub else res

    @property
    def username(self) -> str:
        return str(self.request.get("userInfo", {}).get("username", ""))

    @property
    def name(self) -> str:
        return str(self.request.get("name", ""))


class RecordingWebhook:
    """A tiny HTTPS admission webhook (uvicorn, 127.0.0.1, cert from `kubeguard.certs`) that
    records every AdmissionReview and answers with `decide(request)`: a `(allowed, code,
    message)` tuple, or a full `response` dict (uid is filled in)."""

    def __init__(self, decide: Decider = allow_all, *, path: str = "/validate") -> None:
        self.decide = decide
        self.path = path
        self.reviews: list[Review] = []
        self.ca = certs.generate_ca("recording-webhook-ca")
        self._dir = Path(tempfile.mkdtemp(prefix="kubeguard-hook-"))
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{self.path}"

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.ca.cert_pem).decode()

    def configuration(
        self,
        name: str = "recorder.sim.example.com",
        *,
        rules: list[dict[str, Any]] | None = None,
        failure_policy: str = "Fail",
        timeout_seconds: int = 5,
        namespace_selector: dict[str, Any] | None = None,
        object_selector: dict[str, Any] | None = None,
        match_conditions: list[dict[str, Any]] | None = None,
        mutating: bool = False,
    ) -> dict[str, Any]:
        """A Validating (or Mutating) WebhookConfiguration pointing at this server."""
        hook: dict[str, Any] = {
            "name": name,
            "clientConfig": {"url": self.url, "caBundle": self.ca_bundle},
            "rules": rules if rules is not None else FIXTURE_RULES,
            "failurePolicy": failure_policy,
            "matchPolicy": "Equivalent",
            "sideEffects": "None",
            "timeoutSeconds": timeout_seconds,
            "admissionReviewVersions": ["v1"],
        }
        if namespace_selector is not None:
            hook["namespaceSelector"] = namespace_selector
        if object_selector is not None:
            hook["objectSelector"] = object_selector
        if match_conditions is not None:
            hook["matchConditions"] = match_conditions
        kind = "MutatingWebhookConfiguration" if mutating else "ValidatingWebhookConfiguration"
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "webhooks": [hook],
        }

    def matching(
        self, operation: str | None = None, resource: str | None = None, username: str | None = None
    ) -> list[Review]:
        return [
            r
            for r in self.reviews
            if (operation is None or r.operation == operation)
            and (resource is None or r.resource == resource)
            and (username is None or r.username == username)
        ]

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] != self.path:
            await self._send(send, 404, {"error": "not found"})
            return
        try:
            review = msgspec.json.decode(body)
            request = review["request"]
        except (msgspec.DecodeError, KeyError, TypeError):
            await self._send(send, 400, {"error": "bad review"})
            return
        self.reviews.append(Review(request, scope["path"], scope["query_string"].decode()))
        decision = self.decide(request)
        if isinstance(decision, dict):
            response = {**decision, "uid": request["uid"]}
        else:
            allowed, code, text = decision
            response = {"uid": request["uid"], "allowed": allowed}
            if not allowed:
                response["status"] = {"code": code or 403, "message": text}
        await self._send(
            send,
            200,
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response},
        )

    @staticmethod
    async def _send(send: Any, code: int, payload: Any) -> None:
        data = msgspec.json.encode(payload)
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def __aenter__(self) -> RecordingWebhook:
        serving = certs.generate_serving(
            self.ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        certs.write_cert_dir(self._dir, self.ca, serving)
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=0,
            ssl_certfile=str(self._dir / certs.TLS_CERT_FILE),
            ssl_keyfile=str(self._dir / certs.TLS_KEY_FILE),
            loop="uvloop",
            http="httptools",
            lifespan="off",
            interface="asgi3",
            log_level="warning",
            log_config=None,
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server._serve())
        while not self._server.started:
            if self._task.done():
                raise RuntimeError(f"recording webhook did not start: {self._task.exception()}")
            await asyncio.sleep(0.01)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None and self._server is not None:
            await stop_uvicorn(self._server, self._task)
        shutil.rmtree(self._dir, ignore_errors=True)


# The rules of the webhook that captured the fixtures (see the fixtures README).
FIXTURE_RULES: list[dict[str, Any]] = [
    {
        "operations": ["CREATE", "UPDATE", "DELETE"],
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "resources": ["pods", "pods/status", "pods/eviction"],
    },
    {
        "operations": ["UPDATE"],
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "resources": ["nodes", "nodes/status"],
    },
]


# --------------------------------------------------------------------------- shape comparison

FREE_FORM_MAPS = frozenset({"labels", "annotations", "data", "binaryData", "stringData"})


def shape_differences(
    actual: Any,
    expected: Any,
    path: str = "",
    *,
    skip: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """Differences in keys and value types between two JSON documents.

    Values are not compared (uids, timestamps, names, resourceVersions differ by nature);
    `managedFields` is ignored (the simulator does not track field ownership); the keys of
    free-form maps (labels, annotations, data) are not compared; lists are compared element by
    element over their common prefix. `skip` lists paths (as reported) to leave out.
    """
    if path in skip:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path or '.'}: expected an object, got {type(actual).__name__}"]
        if path.rsplit(".", 1)[-1] in FREE_FORM_MAPS:
            return [
                f"{path}.{k}: expected a string"
                for k, v in actual.items()
                if not isinstance(v, str)
            ]
        diffs: list[str] = []
        keys_a = {k for k in actual if k != "managedFields"}
        keys_e = {k for k in expected if k != "managedFields"}
        for k in sorted(keys_e - keys_a):
            if f"{path}.{k}" not in skip:
                diffs.append(f"{path}.{k}: missing")
        for k in sorted(keys_a - keys_e):
            if f"{path}.{k}" not in skip:
                diffs.append(f"{path}.{k}: unexpected")
        for k in sorted(keys_a & keys_e):
            diffs.extend(shape_differences(actual[k], expected[k], f"{path}.{k}", skip=skip))
        return diffs
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {type(actual).__name__}"]
        diffs = []
        for i, (a, e) in enumerate(zip(actual, expected, strict=False)):
            diffs.extend(shape_differences(a, e, f"{path}[{i}]", skip=skip))
        return diffs
    if type(actual) is not type(expected):
        return [
            f"{path}: expected {type(expected).__name__} ({expected!r}), "
            f"got {type(actual).__name__} ({actual!r})"
        ]
    return []


def assert_same_shape(
    actual: Any, expected: Any, *, skip: frozenset[str] | set[str] = frozenset()
) -> None:
    diffs = shape_differences(actual, expected, skip=skip)
    assert not diffs, "shape differs from the fixture:\n  " + "\n  ".join(diffs)
