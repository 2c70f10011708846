"""Pure pieces: taint/toleration timing of the re-drive, node classification, the CLI."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml
from click.testing import CliRunner

from kubeguard import certs
from kubeguard.cli import cli
from kubeguard.kube.objects import (
    NodeCondition,
    NodeSpec,
    NodeStatus,
    NodeView,
    ObjectMeta,
    PodSpec,
    PodView,
    Taint,
    Toleration,
    parse_label_selector,
)
from kubeguard.protection.cli import render_status
from kubeguard.protection.nodes import classify
from kubeguard.protection.redrive import eviction_due

T0 = dt.datetime(2026, 11, 22, 2, 0, 0, tzinfo=dt.UTC)
UNREACHABLE = Taint(key="node.kubernetes.io/unreachable", effect="NoExecute", time_added=T0)
NOW = T0.timestamp() + 100


def pod(*tolerations: Toleration) -> PodView:
    return PodView(spec=PodSpec(node_name="n", tolerations=list(tolerations)))


def test_eviction_due_follows_the_taint_eviction_controller() -> None:
    assert eviction_due(pod(), [UNREACHABLE], NOW) == NOW  # untolerated: at once
    tol = Toleration(
        key=UNREACHABLE.key, operator="Exists", effect="NoExecute", toleration_seconds=30
    )
    assert eviction_due(pod(tol), [UNREACHABLE], NOW) == T0.timestamp() + 30
    forever = Toleration(operator="Exists")  # tolerates everything forever (DaemonSet style)
    assert eviction_due(pod(forever), [UNREACHABLE], NOW) is None
    assert eviction_due(pod(), [], NOW) is None  # no NoExecute taint: nothing to re-drive
    noschedule = Taint(key=UNREACHABLE.key, effect="NoSchedule", time_added=T0)
    assert eviction_due(pod(), [noschedule], NOW) is None


def node(
    ready: str,
    *,
    reason: str = "",
    labels: dict[str, str] | None = None,
    created: dt.datetime = T0,
    changed: dt.datetime | None = None,
) -> NodeView:
    conds = (
        []
        if not ready
        else [
            NodeCondition(
                type="Ready",
                status=ready,
                reason=reason,
                last_transition_time=changed or created + dt.timedelta(hours=1),
            )
        ]
    )
    return NodeView(
        metadata=ObjectMeta(name="n", labels=labels or {}, creation_timestamp=created),
        spec=NodeSpec(),
        status=NodeStatus(conditions=conds),
    )


def test_classify() -> None:
    workers = parse_label_selector("!node-role.kubernetes.io/control-plane")
    assert classify(node("Unknown"), workers).not_ready
    assert classify(node("False"), workers).not_ready
    assert not classify(node("True"), workers).not_ready
    # never Ready: no condition, NodeStatusNeverUpdated, NotReady since registration
    assert not classify(node(""), workers).not_ready
    assert classify(node("Unknown", reason="NodeStatusNeverUpdated"), workers).never_ready
    assert classify(node("False", changed=T0 + dt.timedelta(seconds=1)), workers).never_ready
    cp = classify(node("Unknown", labels={"node-role.kubernetes.io/control-plane": ""}), workers)
    assert not cp.worker and not cp.protected
    excluded = classify(
        node("Unknown", labels={"node.kubernetes.io/exclude-disruption": ""}), workers
    )
    assert excluded.protected and not excluded.counted()


def test_render_status_table() -> None:
    text = render_status(
        {
            "intercepting": True,
            "state": "engaged",
            "mode": "enforce",
            "notReadyNodes": ["a", "b"],
            "threshold": "3",
            "window": 300.0,
            "requiredNodes": 3,
            "workerNodes": 8,
            "cause": "3 of 8",
            "redrive": {"generation": 1, "phase": "running", "evicted": 2, "total": 5},
            "strandedPods": [
                {
                    "namespace": "demo",
                    "name": "p1",
                    "node": "a",
                    "state": "blocked",
                    "detail": "PodDisruptionBudget",
                }
            ],
        }
    )
    assert "Intercepting:         yes" in text
    assert "a, b" in text and "#1 running: 2 evicted" in text
    assert "demo" in text and "blocked" in text


def test_webhook_config_command(tmp_path: Path) -> None:
    ca = certs.generate_ca()
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    result = CliRunner().invoke(
        cli,
        [
            "webhook-config",
            "--url",
            "https://10.1.2.3:8443",
            "--ca-bundle",
            str(ca_file),
            "--namespace",
            "guard",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.output)
    assert doc["kind"] == "ValidatingWebhookConfiguration"
    hooks = {h["name"]: h for h in doc["webhooks"]}
    assert set(hooks) == {
        "pods.pod-eviction-protection.kubeguard.io",
        "pods-status.pod-eviction-protection.kubeguard.io",
        "pods-update.pod-eviction-protection.kubeguard.io",
        "evictions.pod-eviction-protection.kubeguard.io",
    }
    for h in hooks.values():
        assert h["clientConfig"]["url"] == "https://10.1.2.3:8443/validate"
        assert h["sideEffects"] == "None" and h["timeoutSeconds"] == 5
        assert h["matchConditions"][0]["expression"].startswith("!request.userInfo.username")
        assert h["namespaceSelector"]["matchExpressions"][0]["values"] == ["guard", "kube-system"]
    assert hooks["evictions.pod-eviction-protection.kubeguard.io"]["failurePolicy"] == "Fail"
    bad = CliRunner().invoke(
        cli, ["webhook-config", "--url", "http://x", "--ca-bundle", str(ca_file)]
    )
    assert bad.exit_code != 0 and "HTTPS" in bad.output
