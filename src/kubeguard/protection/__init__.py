"""kubeguard.protection."""
