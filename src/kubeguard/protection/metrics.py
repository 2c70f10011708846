"""Prometheus metrics of pod eviction protection (seed 000's names kept verbatim)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ProtectionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.node_notready = Gauge(
            "node_notready_count",
            "Worker nodes whose Ready condition is False or Unknown.",
            registry=registry,
        )
        self.intercepted = Counter(
            "eviction_intercepted",
            "Disruptive admission requests denied by pod eviction protection (one eviction "
            "can reach the webhook several times), by operation and reason.",
            ["operation", "reason"],
            registry=registry,
        )
        self.allowed = Counter(
            "eviction_allowed",
            "Disruptive admission requests allowed (deletions, evictions, DisruptionTarget / "
            "Failed / Ready=False status updates), by operation and reason.",
            ["operation", "reason"],
            registry=registry,
        )
        self.engaged = Gauge(
            "protection_engaged",
            "1 while pod eviction protection is engaged and interception is enabled.",
            registry=registry,
        )
        self.enabled = Gauge(
            "protection_interception_enabled",
            "1 while the operator switch (callback API) enables interception.",
            registry=registry,
        )
        self.protected_pods = Gauge(
            "protected_pods",
            "Distinct pods bound to protected NotReady nodes while protection is engaged.",
            registry=registry,
        )
        self.redrive_pods = Counter(
            "redrive_pods",
            "Stranded pods handled by the re-drive after a release, by result.",
            ["result"],
            registry=registry,
        )
        self.redrive_pending = Gauge(
            "redrive_pending_pods",
            "Stranded pods the current re-drive still has to evict.",
            registry=registry,
        )
        self.redrive_active = Gauge(
            "redrive_active",
            "1 while this replica runs a re-drive.",
            registry=registry,
        )
        self.state_errors = Counter(
            "protection_state_errors",
            "Failures reading or writing the shared protection state, by operation.",
            ["operation"],
            registry=registry,
        )
