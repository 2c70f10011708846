"""Prometheus metrics shared by the framework.

Every component takes a `CollectorRegistry` (one per server instance) instead of using the
global default registry, so tests and the demo can run several instances in one process.
Metric names of seed 000 (`node_notready_count`, `eviction_intercepted_total`,
`eviction_allowed_total`) are kept verbatim; they live in `kubeguard.protection`.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

# Admission decisions are sub-millisecond; the tail matters up to the 5 s API server timeout.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class LabelledChildren:
    """The children of one labelled metric, cached by label values.

    `metric.labels(...)` takes a lock and validates the values on every call: a few µs that
    the admission path pays per request unless the child is kept.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class AdmissionMetrics:
    """Per-handler request counts by decision, and latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "admission_requests_total",
            "Admission requests handled, by webhook, handler and decision.",
            ["webhook", "handler", "decision"],
            registry=registry,
        )
        self.duration = Histogram(
            "admission_request_duration_seconds",
            "Time to decide one admission request, by webhook and handler.",
            ["webhook", "handler"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.bad_requests = Counter(
            "admission_bad_requests_total",
            "Requests to an admission path rejected before any handler ran, by HTTP status.",
            ["path", "code"],
            registry=registry,
        )


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(registry)
