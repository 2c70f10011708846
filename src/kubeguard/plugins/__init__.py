"""The webhook plugins kubeguard ships, one module each, and the default registry.

Each plugin is registered behind its own feature gate. `default_registry()` is the single
list the server, `kubeguard manifests` and the tests build from. Imports are local so that
`kubeguard.plugins.<module>` can be imported without loading every plugin.
"""

from __future__ import annotations

from kubeguard.admission.registry import Registry
from kubeguard.runtime import Runtime


def default_registry() -> Registry[Runtime]:
    """Every shipped plugin, in the order their handlers compose on a shared path."""
    from kubeguard.plugins import (
        deletion_protection,
        sidecar_injection,
        sts_node_selector,
        sts_ordinal_env,
    )
    from kubeguard.protection.plugin import PLUGIN as POD_EVICTION_PROTECTION

    registry: Registry[Runtime] = Registry()
    registry.register(POD_EVICTION_PROTECTION)
    registry.register(sts_node_selector.PLUGIN)
    registry.register(sts_ordinal_env.PLUGIN)
    registry.register(deletion_protection.PLUGIN)
    registry.register(sidecar_injection.PLUGIN)
    return registry
