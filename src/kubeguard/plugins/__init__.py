"""The webhook plugins kubeguard ships, one module each, and the default registry.

Each plugin is registered behind its own feature gate. `default_registry()` is the single
list the server, `kubeguard manifests` and the tests build from.
"""

from __future__ import annotations

from kubeguard.admission.registry import Registry
from kubeguard.runtime import Runtime


def default_registry() -> Registry[Runtime]:
    """Every shipped plugin, in the order their handlers compose on a shared path."""
    registry: Registry[Runtime] = Registry()
    return registry
