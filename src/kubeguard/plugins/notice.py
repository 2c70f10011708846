"""Plugins' notifications: one call that adds the request's identity and respects dry runs."""

from __future__ import annotations

from kubeguard.admission.review import Request
from kubeguard.notify import Notification
from kubeguard.runtime import Runtime


def send_notice(
    runtime: Runtime, request: Request, event: str, title: str, text: str, **fields: str
) -> None:
    """Queue a notification unless the request is a dry run (the webhook entries declare
    `sideEffects: NoneOnDryRun`). Never blocks: `Notifier.notify` only enqueues."""
    notifier = runtime.notifier  # read per call: the notifier may be installed after build
    if notifier is None or request.dry_run:
        return
    notifier.notify(
        Notification(
            event=event,
            title=title,
            text=text,
            fields={
                "request": request.describe(),
                "user": request.user.username,
                **fields,
            },
        )
    )
