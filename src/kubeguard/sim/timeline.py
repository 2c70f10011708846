"""What happened in the simulated cluster, in order, with wall-clock and relative timestamps."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Entry kinds
WEBHOOK = "webhook"  # one AdmissionReview sent: details has webhook, operation, allowed, code
DENIAL = "denial"  # an API request refused by admission (webhook denial or webhook failure)
EVICTION = "eviction"  # a pods/eviction request answered (allowed, blocked by PDB, denied)
DELETION = "deletion"  # an object actually removed from the store (or set Terminating)
NODE = "node"  # node condition or taint change made by the node lifecycle controller
POD_STATUS = "pod-status"  # controller/kubelet write to pods/status
STEP = "step"  # a scenario step started
INFO = "info"


@dataclass(frozen=True)
class TimelineEntry:
    t: float  # seconds since the timeline started
    wall: dt.datetime
    kind: str
    actor: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        return f"{self.t:8.3f}s  {self.kind:<10} {self.actor:<55} {self.message}"


class Timeline:
    def __init__(self, max_entries: int = 200_000) -> None:
        self.start_monotonic = time.monotonic()
        self.start_wall = dt.datetime.now(dt.UTC)
        self.entries: list[TimelineEntry] = []
        self.max_entries = max_entries
        self._subscribers: list[Callable[[TimelineEntry], None]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.start_monotonic

    def add(self, kind: str, actor: str, text: str, /, **details: Any) -> TimelineEntry:
        entry = TimelineEntry(self.elapsed(), dt.datetime.now(dt.UTC), kind, actor, text, details)
        if len(self.entries) < self.max_entries:
            self.entries.append(entry)
        for callback in list(self._subscribers):
            callback(entry)
        return entry

    def subscribe(self, callback: Callable[[TimelineEntry], None]) -> Callable[[], None]:
        """Call `callback` for every new entry; returns an unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def of_kind(self, *kinds: str) -> list[TimelineEntry]:
        return [e for e in self.entries if e.kind in kinds]

    def format(self, kinds: tuple[str, ...] | None = None) -> str:
        return "\n".join(e.format() for e in self.entries if kinds is None or e.kind in kinds)
