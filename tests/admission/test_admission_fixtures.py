"""Every real AdmissionReview captured from Kubernetes 1.36 decodes, with the right key fields.

The fixtures live in `shared/` beside the repository (`../shared/fixtures/k8s-1.36`), or where
KUBEGUARD_FIXTURES points (the `k8s-1.36` directory).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from kubeguard.admission import HandlerSpec, Request, Response, allowed, decode_review
from kubeguard.admission.registry import group_webhooks
from kubeguard.admission.review import AdmissionRequest
from kubeguard.metrics import AdmissionMetrics

FIXTURES = Path(
    os.environ.get(
        "KUBEGUARD_FIXTURES", Path(__file__).parents[2] / ".." / "shared" / "fixtures" / "k8s-1.36"
    )
)
ADMISSION = FIXTURES / "admission"

NODE_CONTROLLER = "system:serviceaccount:kube-system:node-controller"
PODGC = "system:serviceaccount:kube-system:pod-garbage-collector"

# file: (operation, resource, subResource, user, has object, has oldObject, dryRun, kind)
EXPECTED: dict[str, tuple[str, str, str, str, bool, bool, bool, str]] = {
    "node-status-update-by-kubelet": (
        "UPDATE", "nodes", "status", "system:node:steady-1", True, True, False, "Node"
    ),
    "node-status-update-ready-unknown-by-node-controller": (
        "UPDATE", "nodes", "status", NODE_CONTROLLER, True, True, False, "Node"
    ),
    "node-update-add-unreachable-noexecute-taint-by-node-controller-lost-409": (
        "UPDATE", "nodes", "", NODE_CONTROLLER, True, True, False, "Node"
    ),
    "node-update-add-unreachable-noexecute-taint-by-node-controller": (
        "UPDATE", "nodes", "", NODE_CONTROLLER, True, True, False, "Node"
    ),
    "node-update-add-unreachable-noschedule-taint-by-node-controller": (
        "UPDATE", "nodes", "", NODE_CONTROLLER, True, True, False, "Node"
    ),
    "node-update-cordon-by-kubectl-drain": (
        "UPDATE", "nodes", "", "admin", True, True, False, "Node"
    ),
    "node-update-remove-not-ready-taint-by-node-controller": (
        "UPDATE", "nodes", "", NODE_CONTROLLER, True, True, False, "Node"
    ),
    "node-update-unschedulable-taint-by-node-controller": (
        "UPDATE", "nodes", "", NODE_CONTROLLER, True, True, False, "Node"
    ),
    "pod-create-by-statefulset-controller-web-2": (
        "CREATE", "pods", "", "system:serviceaccount:kube-system:statefulset-controller",
        True, False, False, "Pod",
    ),
    "pod-create-by-user": ("CREATE", "pods", "", "admin", True, False, False, "Pod"),
    "pod-delete-by-kubelet-grace-0-uid-precondition-third-admission-call": (
        "DELETE", "pods", "", "system:node:steady-1", False, True, False, "Pod"
    ),
    "pod-delete-by-kubelet-grace-0-uid-precondition": (
        "DELETE", "pods", "", "system:node:steady-1", False, True, False, "Pod"
    ),
    "pod-delete-by-node-controller-denied": (
        "DELETE", "pods", "", NODE_CONTROLLER, False, True, False, "Pod"
    ),
    "pod-delete-by-node-controller-during-full-disruption": (
        "DELETE", "pods", "", NODE_CONTROLLER, False, True, False, "Pod"
    ),
    "pod-delete-by-node-controller-second-admission-call": (
        "DELETE", "pods", "", NODE_CONTROLLER, False, True, False, "Pod"
    ),
    "pod-delete-by-node-controller": (
        "DELETE", "pods", "", NODE_CONTROLLER, False, True, False, "Pod"
    ),
    "pod-delete-by-pod-garbage-collector": ("DELETE", "pods", "", PODGC, False, True, False, "Pod"),
    "pod-delete-by-user-denied": ("DELETE", "pods", "", "alice", False, True, False, "Pod"),
    "pod-delete-by-user-kubectl-default-grace": (
        "DELETE", "pods", "", "alice", False, True, False, "Pod"
    ),
    "pod-delete-by-user-kubectl-force-grace-0": (
        "DELETE", "pods", "", "alice", False, True, False, "Pod"
    ),
    "pod-eviction-by-kubectl-drain-denied": (
        "CREATE", "pods", "eviction", "admin", True, False, False, "Eviction"
    ),
    "pod-eviction-by-kubectl-drain": (
        "CREATE", "pods", "eviction", "admin", True, False, False, "Eviction"
    ),
    "pod-eviction-denied": ("CREATE", "pods", "eviction", "alice", True, False, False, "Eviction"),
    "pod-eviction-dry-run": ("CREATE", "pods", "eviction", "alice", True, False, True, "Eviction"),
    "pod-eviction-policy-v1": (
        "CREATE", "pods", "eviction", "alice", True, False, False, "Eviction"
    ),
    "pod-eviction-policy-v1beta1-body": (
        "CREATE", "pods", "eviction", "alice", True, False, False, "Eviction"
    ),
    "pod-status-patch-by-pod-garbage-collector": (
        "UPDATE", "pods", "status", PODGC, True, True, False, "Pod"
    ),
    "pod-status-patch-disruption-target-by-node-controller": (
        "UPDATE", "pods", "status", NODE_CONTROLLER, True, True, False, "Pod"
    ),
    "pod-status-update-by-kubelet": (
        "UPDATE", "pods", "status", "system:node:victim-node", True, True, False, "Pod"
    ),
    "pod-status-update-disruption-target-reset-by-disruption-controller": (
        "UPDATE", "pods", "status", "system:serviceaccount:kube-system:disruption-controller",
        True, True, False, "Pod",
    ),
    "pod-status-update-mark-not-ready-by-node-controller": (
        "UPDATE", "pods", "status", NODE_CONTROLLER, True, True, False, "Pod"
    ),
    "pod-update-label-by-user": ("UPDATE", "pods", "", "alice", True, True, False, "Pod"),
}  # fmt: skip


def _files() -> list[Path]:
    if not ADMISSION.is_dir():
        pytest.fail(
            f"AdmissionReview fixtures not found at {ADMISSION}; check out shared/ beside the "
            "repository or set KUBEGUARD_FIXTURES to the k8s-1.36 directory"
        )
    return sorted(ADMISSION.glob("*.json"))


def test_the_table_covers_every_fixture() -> None:
    assert sorted(p.stem for p in _files()) == sorted(EXPECTED)


class Meta(msgspec.Struct):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    labels: dict[str, str] | None = None
    deletion_timestamp: str | None = msgspec.field(default=None, name="deletionTimestamp")


class View(msgspec.Struct):
    """A narrow view: only the fields a handler would read."""

    kind: str = ""
    metadata: Meta = msgspec.field(default_factory=Meta)


class Options(msgspec.Struct):
    kind: str = ""
    dry_run: list[str] | None = msgspec.field(default=None, name="dryRun")
    grace_period_seconds: int | None = msgspec.field(default=None, name="gracePeriodSeconds")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_decodes_with_its_key_fields(name: str) -> None:
    body = (ADMISSION / f"{name}.json").read_bytes()
    wire: dict[str, Any] = json.loads(body)["request"]
    raw = decode_review(body)
    req = Request(raw)
    operation, resource, sub, user, has_obj, has_old, dry_run, kind = EXPECTED[name]
    assert (req.operation, req.resource, req.sub_resource) == (operation, resource, sub)
    assert req.user.username == user
    assert req.dry_run is dry_run
    assert req.kind.kind == kind
    assert req.uid == wire["uid"]
    assert (req.namespace, req.name) == (wire.get("namespace", ""), wire["name"])
    assert req.user.groups == wire["userInfo"]["groups"]
    assert req.user.extra == wire["userInfo"].get("extra", {})

    obj = req.object_as(View)
    old = req.old_object_as(View)
    assert (obj is not None, old is not None) == (has_obj, has_old)
    for view, key in ((obj, "object"), (old, "oldObject")):
        if view is not None:
            assert view.metadata.name == wire[key]["metadata"]["name"]
            assert view.metadata.labels == wire[key]["metadata"].get("labels")
    assert req.object_as(View) is obj  # decoded once per type
    options = req.options_as(Options)
    assert options is not None
    assert options.kind == wire["options"]["kind"]


def test_eviction_specifics() -> None:
    v1beta1 = Request(
        decode_review((ADMISSION / "pod-eviction-policy-v1beta1-body.json").read_bytes())
    )
    # The API server converts the subresource body: requestKind is policy/v1 even for v1beta1.
    assert v1beta1.raw.request_kind is not None
    assert (v1beta1.raw.request_kind.group, v1beta1.raw.request_kind.version) == ("policy", "v1")
    assert v1beta1.raw.request_sub_resource == "eviction"
    dry = Request(decode_review((ADMISSION / "pod-eviction-dry-run.json").read_bytes()))
    options = dry.options_as(Options)
    assert options is not None and options.dry_run == ["All"]


def test_delete_options_and_second_admission_call() -> None:
    first = Request(decode_review((ADMISSION / "pod-delete-by-node-controller.json").read_bytes()))
    second = Request(
        decode_review(
            (ADMISSION / "pod-delete-by-node-controller-second-admission-call.json").read_bytes()
        )
    )
    assert first.uid != second.uid
    first_old, second_old = first.old_object_as(View), second.old_object_as(View)
    assert first_old is not None and second_old is not None
    assert first_old.metadata.deletion_timestamp is None
    assert second_old.metadata.deletion_timestamp is not None
    options = first.options_as(Options)
    assert options is not None and options.grace_period_seconds == 0


def test_user_identities() -> None:
    kubelet = decode_review((ADMISSION / "pod-status-update-by-kubelet.json").read_bytes())
    assert "system:nodes" in kubelet.user_info.groups
    assert kubelet.user_info.uid == ""  # X.509 users have no uid
    assert kubelet.user_info.extra["authentication.kubernetes.io/credential-id"][0].startswith(
        "X509SHA256="
    )
    controller = decode_review((ADMISSION / "pod-delete-by-node-controller.json").read_bytes())
    assert controller.user_info.uid != ""
    assert controller.user_info.extra["authentication.kubernetes.io/credential-id"][0].startswith(
        "JTI="
    )


class Allow:
    async def handle(self, request: Request) -> Response:
        return allowed()


def test_every_fixture_is_answered_by_a_webhook() -> None:
    registry = CollectorRegistry()
    webhook = group_webhooks(
        [HandlerSpec("allow", "/validate", "validating", Allow())], AdmissionMetrics(registry)
    )[0]
    for path in _files():
        status, body = asyncio.run(webhook.review(path.read_bytes()))
        assert status == 200
        out = json.loads(body)
        assert out["response"] == {
            "uid": json.loads(path.read_bytes())["request"]["uid"],
            "allowed": True,
        }
    assert registry.get_sample_value(
        "admission_requests_total",
        {"webhook": "/validate", "handler": "allow", "decision": "allowed"},
    ) == len(EXPECTED)


def test_decoded_request_keeps_raw_objects_lazily() -> None:
    raw: AdmissionRequest = decode_review(
        (ADMISSION / "pod-update-label-by-user.json").read_bytes()
    )
    assert isinstance(raw.object, msgspec.Raw)
    assert json.loads(bytes(raw.object))["metadata"]["name"] == "label-me"
