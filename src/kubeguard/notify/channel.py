"""What a notification channel is: something that delivers one notification or says why not."""

from __future__ import annotations

from typing import Protocol

from kubeguard.notify import Notification


class DeliveryError(Exception):
    """One delivery attempt failed. `retryable` says whether trying again may help (a timeout,
    a 5xx or a rate limit) or not (a rejected signature, a 4xx). The message never contains
    the endpoint URL or a secret."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Channel(Protocol):
    """Delivers notifications to one endpoint. `send` raises DeliveryError on failure."""

    @property
    def name(self) -> str:
        """Short channel name used in metrics and logs (`dingtalk`, `webhook`)."""
        ...

    async def send(self, notification: Notification) -> None: ...

    async def aclose(self) -> None: ...


def redact(text: str, *secrets: str) -> str:
    """`text` with every non-empty secret (URL, token, signing secret) replaced by `***`."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def http_status_error(status: int, body: bytes) -> DeliveryError:
    """A DeliveryError for an unexpected HTTP status (5xx and 429 are retryable)."""
    snippet = body[:200].decode("utf-8", "replace")
    return DeliveryError(
        f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}",
        retryable=status >= 500 or status == 429,
    )
