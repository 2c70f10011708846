"""An embedded simulated Kubernetes control plane (API server subset, admission webhooks,
kubelets and kube-controller-manager behaviour) for `kubeguard demo` and integration tests."""

from .cluster import SimCluster, pod_manifest
from .config import SimConfig, Timings

__all__ = ["SimCluster", "SimConfig", "Timings", "pod_manifest"]
