"""kubeguard.sim: the embedded simulated cluster."""
