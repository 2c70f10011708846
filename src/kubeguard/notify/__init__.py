"""Notifications (DingTalk robot, generic JSON webhook), sent off the admission path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Notification:
    """One thing worth telling people about, e.g. event `protection-engaged`."""

    event: str
    title: str
    text: str
    fields: dict[str, str] = field(default_factory=dict)


class Notifier(Protocol):
    def notify(self, notification: Notification) -> None:
        """Queue a notification. Never blocks and never raises: delivery is asynchronous."""
        ...
