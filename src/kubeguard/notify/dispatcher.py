"""Asynchronous notification delivery, off the admission path.

`notify()` only filters the event and appends to a bounded per-channel queue: it never blocks,
never raises and never awaits, so an admission handler that notifies answers in the same time
whether the endpoint is fast, slow, failing or hanging (seed 004 posted to DingTalk inline,
inside the admission request, which made every pod CREATE wait for DingTalk).

One worker per channel delivers in order, with a per-attempt timeout and exponential backoff
between retries. A hanging DingTalk therefore delays only later DingTalk messages, never the
generic webhook; when a channel's queue is full, new notifications for it are dropped and
counted (`notifications_total{result="dropped"}`).

Wiring: `install_notifier(runtime)` builds the dispatcher from the settings, sets
`runtime.notifier`, registers the delivery task and a shutdown hook that flushes what is
queued (one attempt each, bounded time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from kubeguard.config import Settings
from kubeguard.notify import Notification
from kubeguard.notify.channel import Channel, DeliveryError
from kubeguard.notify.dingtalk import DingTalkChannel
from kubeguard.notify.events import EventFilter
from kubeguard.notify.webhook import WebhookChannel

if TYPE_CHECKING:
    from kubeguard.runtime import Runtime

log = logging.getLogger("kubeguard.notify")

Sleep = Callable[[float], Awaitable[None]]


class NotifyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter(
            "notifications_total",
            "Notifications by channel and final result (sent, failed, dropped: queue full).",
            ["channel", "result"],
            registry=registry,
        )
        self.attempts = Counter(
            "notification_attempts_total",
            "Delivery attempts by channel and outcome (ok, error, timeout).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.queued = Gauge(
            "notification_queue_length",
            "Notifications waiting for delivery, by channel.",
            ["channel"],
            registry=registry,
        )


class _Lane:
    """One channel's bounded queue and worker state."""

    def __init__(self, channel: Channel, maxsize: int) -> None:
        self.channel = channel
        self.name = channel.name
        self.queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize)


class NotificationDispatcher:
    """Implements `kubeguard.notify.Notifier`. Call `notify()` from anywhere; run `run()` as a
    background task (the runtime supervises it)."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        events: EventFilter | Sequence[str] = ("*",),
        registry: CollectorRegistry | None = None,
        queue_size: int = 256,
        attempts: int = 4,
        attempt_timeout: float = 5.0,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not channels:
            raise ValueError("a notification dispatcher needs at least one channel")
        names = [c.name for c in channels]
        if len(set(names)) != len(names):
            raise ValueError(f"notification channel names must be unique, got {names}")
        if queue_size < 1 or attempts < 1 or attempt_timeout <= 0:
            raise ValueError("queue_size and attempts must be >= 1, attempt_timeout > 0")
        self._lanes = [_Lane(c, queue_size) for c in channels]
        self.filter = events if isinstance(events, EventFilter) else EventFilter(events)
        self.metrics = NotifyMetrics(registry or CollectorRegistry())
        self.attempts = attempts
        self.attempt_timeout = attempt_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._idle = [asyncio.Event() for _ in self._lanes]
        for lane, idle in zip(self._lanes, self._idle, strict=True):
            idle.set()
            self.metrics.queued.labels(lane.name).set(0)
        for unknown in self.filter.unknown():
            log.warning("notify events: %r is not an event kubeguard emits", unknown)

    @property
    def channels(self) -> list[str]:
        return [lane.name for lane in self._lanes]

    # ------------------------------------------------------------------------- Notifier

    def notify(self, notification: Notification) -> None:
        """Queue `notification` for every channel. Never blocks, never raises."""
        try:
            if not self.filter(notification.event):
                return
            loop = self._loop
            if (
                loop is not None
                and threading.get_ident() != self._loop_thread
                and not loop.is_closed()
            ):
                # asyncio queues are not thread-safe: hand over to the loop's thread.
                loop.call_soon_threadsafe(self._enqueue, notification)
            else:
                self._enqueue(notification)
        except Exception:  # notify() must never fail its caller
            log.exception("could not queue notification %s", notification.event)

    def _enqueue(self, notification: Notification) -> None:
        for lane, idle in zip(self._lanes, self._idle, strict=True):
            try:
                lane.queue.put_nowait(notification)
            except asyncio.QueueFull:
                self.metrics.total.labels(lane.name, "dropped").inc()
                log.warning(
                    "notification queue of channel %s is full; dropped %s",
                    lane.name,
                    notification.event,
                    extra={"channel": lane.name, "event": notification.event},
                )
                continue
            idle.clear()
            self.metrics.queued.labels(lane.name).set(lane.queue.qsize())

    # ------------------------------------------------------------------------- delivery

    async def run(self) -> None:
        """Deliver until cancelled (one worker per channel)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        workers = [
            asyncio.create_task(self._work(i), name=f"notify-{lane.name}")
            for i, lane in enumerate(self._lanes)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self, index: int) -> None:
        lane, idle = self._lanes[index], self._idle[index]
        while True:
            notification = await lane.queue.get()
            self.metrics.queued.labels(lane.name).set(lane.queue.qsize())
            try:
                await self._deliver(lane, notification, self.attempts)
            finally:
                lane.queue.task_done()
                if lane.queue.empty():
                    idle.set()

    async def _deliver(self, lane: _Lane, notification: Notification, attempts: int) -> bool:
        last = ""
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.attempt_timeout):
                    await lane.channel.send(notification)
            except TimeoutError:
                self.metrics.attempts.labels(lane.name, "timeout").inc()
                last, retryable = f"no answer within {self.attempt_timeout:g}s", True
            except DeliveryError as exc:
                self.metrics.attempts.labels(lane.name, "error").inc()
                last, retryable = str(exc), exc.retryable
            except Exception as exc:  # a channel bug must not kill the worker
                self.metrics.attempts.labels(lane.name, "error").inc()
                log.exception("notification channel %s raised", lane.name)
                last, retryable = f"{type(exc).__name__}", False
            else:
                self.metrics.attempts.labels(lane.name, "ok").inc()
                self.metrics.total.labels(lane.name, "sent").inc()
                log.debug(
                    "notification sent",
                    extra={
                        "channel": lane.name,
                        "event": notification.event,
                        "attempt": attempt,
                        "seconds": round(time.monotonic() - started, 3),
                    },
                )
                return True
            if not retryable or attempt == attempts:
                break
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
            await self._sleep(delay * random.uniform(0.8, 1.2))
        self.metrics.total.labels(lane.name, "failed").inc()
        log.warning(
            "notification not delivered",
            extra={
                "channel": lane.name,
                "event": notification.event,
                "title": notification.title,
                "error": last,
            },
        )
        return False

    async def wait_idle(self) -> None:
        """Wait until every queue is empty and no delivery is in flight (tests, shutdown);
        bound it with `asyncio.timeout`."""
        for idle in self._idle:
            await idle.wait()

    async def aclose(self, flush_timeout: float = 5.0) -> None:
        """Deliver what is still queued (one attempt each, within `flush_timeout` overall),
        then close the channels' connections. Meant to run after `run()` was cancelled."""
        pending: list[tuple[_Lane, Notification]] = []
        for lane in self._lanes:
            while not lane.queue.empty():
                pending.append((lane, lane.queue.get_nowait()))
            self.metrics.queued.labels(lane.name).set(0)
        if pending:
            flush = asyncio.gather(*(self._deliver(lane, n, 1) for lane, n in pending))
            try:
                async with asyncio.timeout(flush_timeout):
                    await flush
            except TimeoutError:
                log.warning("shutdown: %d notification(s) were not delivered in time", len(pending))
        for idle in self._idle:
            idle.set()
        for lane in self._lanes:
            with contextlib.suppress(Exception):
                await lane.channel.aclose()


def channels_from_settings(
    settings: Settings, *, verify: ssl.SSLContext | bool = True
) -> list[Channel]:
    """The channels the settings configure (none when no URL is set)."""
    channels: list[Channel] = []
    if settings.dingtalk_url:
        channels.append(
            DingTalkChannel(
                settings.dingtalk_url,
                settings.dingtalk_secret,
                msgtype=settings.dingtalk_msgtype,
                verify=verify,
            )
        )
    if settings.notify_webhook_url:
        channels.append(WebhookChannel(settings.notify_webhook_url, verify=verify))
    return channels


def build_notifier(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    *,
    verify: ssl.SSLContext | bool = True,
) -> NotificationDispatcher | None:
    """The dispatcher for the configured channels, or None when no URL is configured.

    Its `run()` must be started as a background task (see `install_notifier`).
    Raises ValueError for an unusable URL or message type (a start-up error).
    """
    channels = channels_from_settings(settings, verify=verify)
    if not channels:
        return None
    return NotificationDispatcher(channels, events=settings.notify_events, registry=registry)


def install_notifier(
    runtime: Runtime, *, verify: ssl.SSLContext | bool = True
) -> NotificationDispatcher | None:
    """Build the dispatcher from `runtime.settings`, make it `runtime.notifier`, and register
    its delivery task and shutdown flush on the runtime. None when nothing is configured."""
    dispatcher = build_notifier(runtime.settings, runtime.registry, verify=verify)
    if dispatcher is None:
        return None
    runtime.notifier = dispatcher
    runtime.add_task("notifications", dispatcher.run)
    runtime.on_shutdown(dispatcher.aclose)
    log.info("notifications enabled", extra={"channels": dispatcher.channels})
    return dispatcher
