"""kubeguard.server."""
