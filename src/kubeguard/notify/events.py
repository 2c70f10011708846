"""The notification events kubeguard emits, and the filter that `--notify-events` configures."""

from __future__ import annotations

from collections.abc import Iterable

PROTECTION_ENGAGED = "protection-engaged"
PROTECTION_RELEASED = "protection-released"
REDRIVE_DONE = "redrive-done"
PLUGIN_MUTATION = "plugin-mutation"  # a plugin changed an object (e.g. set a nodeSelector)
PLUGIN_DENIAL = "plugin-denial"  # a plugin denied a request (e.g. a protected deletion)
PLUGIN_WARNING = "plugin-warning"  # a plugin allowed a request it could not handle, with a warning

KNOWN_EVENTS = frozenset(
    {
        PROTECTION_ENGAGED,
        PROTECTION_RELEASED,
        REDRIVE_DONE,
        PLUGIN_MUTATION,
        PLUGIN_DENIAL,
        PLUGIN_WARNING,
    }
)
ALL = ("*", "all")


class EventFilter:
    """Which events are delivered. `*` (or `all`) selects every event."""

    def __init__(self, events: Iterable[str]) -> None:
        names = {e.strip() for e in events if e.strip()}
        self.everything = any(n in ALL for n in names)
        self.events = frozenset(n for n in names if n not in ALL)

    def __call__(self, event: str) -> bool:
        return self.everything or event in self.events

    def unknown(self) -> list[str]:
        """Configured names that kubeguard never emits (most likely typos)."""
        return sorted(self.events - KNOWN_EVENTS)
