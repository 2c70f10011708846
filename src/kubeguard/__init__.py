"""kubeguard: Kubernetes admission webhooks with pod eviction protection."""

__version__ = "0.1.0"
