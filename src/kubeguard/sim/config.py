"""Configuration of the simulated cluster: controller timings and server settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .auth import SimUser, default_users


@dataclass
class Timings:
    """Controller timings in seconds. Defaults are kube-controller-manager's and the kubelet's
    real defaults; `Timings.fast()` shrinks them so that an incident plays in seconds."""

    node_monitor_period: float = 5.0  # --node-monitor-period
    node_monitor_grace_period: float = 50.0  # --node-monitor-grace-period
    lease_renew_interval: float = 10.0  # kubelet: 0.25 x leaseDurationSeconds
    lease_duration_seconds: int = 40
    default_toleration_seconds: int = 300  # DefaultTolerationSeconds admission plugin
    eviction_rate_interval: float = 10.0  # 1 / --node-eviction-rate: one NoExecute taint per
    taint_eviction_retries: int = 5  # TaintEvictionController: attempts per eviction
    taint_eviction_retry_interval: float = 0.06  # observed ~60 ms between attempts
    podgc_period: float = 20.0  # podgc check interval
    podgc_quarantine: float = 40.0  # podgc: delay before deleting pods of a deleted node
    disruption_reset_delay: float = 120.0  # stale DisruptionTarget reset (disruption controller)
    pod_start_delay: float = 0.0  # kubelet: creation -> Running/Ready status
    pod_termination_delay: float = 1.0  # kubelet: max time to stop containers before final DELETE
    bookmark_interval: float = 60.0  # watch BOOKMARK period (allowWatchBookmarks=true)
    drain_retry_interval: float = 5.0  # kubectl drain: retry after a 429 eviction answer

    @classmethod
    def fast(cls, **overrides: Any) -> Timings:
        """Sub-second timings for tests and the demo (ratios kept close to the real ones)."""
        base = cls(
            node_monitor_period=0.1,
            node_monitor_grace_period=1.0,
            lease_renew_interval=0.2,
            default_toleration_seconds=300,
            eviction_rate_interval=0.5,
            taint_eviction_retry_interval=0.06,
            podgc_period=0.2,
            podgc_quarantine=0.5,
            disruption_reset_delay=2.0,
            pod_start_delay=0.0,
            pod_termination_delay=0.1,
            bookmark_interval=1.0,
            drain_retry_interval=0.5,
        )
        return dataclasses.replace(base, **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, fast: bool = False) -> Timings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown timing(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"timing {key} must be a non-negative number, got {value!r}")
            values[key] = (
                int(value)
                if key
                in (
                    "lease_duration_seconds",
                    "default_toleration_seconds",
                    "taint_eviction_retries",
                )
                else float(value)
            )
        return cls.fast(**values) if fast else dataclasses.replace(cls(), **values)


@dataclass
class SimConfig:
    """Everything a `SimCluster` needs. All servers bind 127.0.0.1."""

    port: int = 0  # 0 = pick a free port
    kubeconfig_path: Path | None = None  # default: <workdir>/kubeconfig
    workdir: Path | None = None  # default: a temporary directory removed on stop
    timings: Timings = field(default_factory=Timings.fast)
    users: list[SimUser] = field(default_factory=default_users)
    # Webhook configurations (Validating/MutatingWebhookConfiguration dicts) created at start.
    webhook_configurations: list[dict[str, Any]] = field(default_factory=list)
    # clientConfig.service -> base URL, keyed "namespace/name" or "namespace/name:port".
    service_urls: dict[str, str] = field(default_factory=dict)
    watch_history_size: int = 10_000
    controllers: bool = True  # run kubelets and kube-controller-manager loops
    namespaces: tuple[str, ...] = ("default", "kube-system", "kube-public", "kube-node-lease")
