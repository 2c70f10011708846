"""Kubernetes access: client set-up, reflectors, the shared state store, events."""
