"""Engagement detection: a pure function of node states, the settings and the current time.

Protection engages when at least `threshold` counted worker nodes went NotReady within the
last `window` seconds. "Went NotReady" is read from each node's `Ready` lastTransitionTime,
never from when kubeguard happened to see the change, so every replica and a restarted
replica reach the same answer. The detector only *proposes* engagement; the shared state
(`protection.state`) decides, and engagement latches there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubeguard.config import Threshold
from kubeguard.protection.nodes import NodeState

# Node clocks and the API server's may disagree a little: a transition stamped slightly in
# the future is still "within the window", not ignored.
CLOCK_SKEW = 60.0


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    threshold: Threshold
    window: float
    count_cordoned: bool = False
    count_excluded: bool = False


@dataclass(frozen=True, slots=True)
class Detection:
    """The detector's view at one instant."""

    engage: bool
    required: int  # NotReady transitions within the window that engage
    counted: int  # counted worker nodes (the percentage's base)
    recent: tuple[str, ...]  # counted nodes that went NotReady within the window
    not_ready: tuple[str, ...]  # every NotReady worker node, however long ago

    @property
    def cause(self) -> str:
        return (
            f"{len(self.recent)} of {self.counted} worker nodes went NotReady within the "
            f"window (threshold {self.required}): {', '.join(self.recent)}"
        )


def detect(nodes: Iterable[NodeState], config: DetectorConfig, now: float) -> Detection:
    nodes = list(nodes)
    counted = [
        n
        for n in nodes
        if n.counted(count_cordoned=config.count_cordoned, count_excluded=config.count_excluded)
    ]
    recent = sorted(
        n.name
        for n in counted
        if n.not_ready
        and n.since is not None
        and now - config.window <= n.since <= now + CLOCK_SKEW
    )
    required = config.threshold.resolve(len(counted))
    return Detection(
        engage=len(recent) >= required and bool(recent),
        required=required,
        counted=len(counted),
        recent=tuple(recent),
        not_ready=tuple(sorted(n.name for n in nodes if n.worker and n.not_ready)),
    )


def all_ready_since(nodes: Iterable[NodeState]) -> float | None:
    """When the last worker node became Ready, if every worker node is Ready now (for the
    optional auto-release); None while any worker node is NotReady."""
    latest = 0.0
    for n in nodes:
        if not n.worker or n.never_ready:
            continue
        if n.not_ready:
            return None
        if n.since is not None:
            latest = max(latest, n.since)
    return latest
