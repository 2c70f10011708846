"""DingTalk signing and delivery against a local HTTPS robot, the JSON webhook channel, and
the asynchronous dispatcher (bounded queue, retries, counters, never blocking)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import urllib.parse
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kubeguard.config import Settings
from kubeguard.notify import Notification
from kubeguard.notify.channel import DeliveryError
from kubeguard.notify.dingtalk import DingTalkChannel, message_body, sign, signed_url
from kubeguard.notify.dispatcher import NotificationDispatcher, build_notifier, install_notifier
from kubeguard.notify.events import PLUGIN_DENIAL, PLUGIN_MUTATION, EventFilter
from kubeguard.notify.webhook import WebhookChannel
from kubeguard.runtime import Runtime

from .endpoint import FakeRobot

SECRET = "SEC0123456789abcdef"
NOTE = Notification(
    PLUGIN_MUTATION, "StatefulSet pod placed", "pod demo/web-2: name=node1", {"ordinal": "2"}
)


def counter(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return value or 0.0


def test_sign_matches_dingtalk_reference() -> None:
    # DingTalk's documented algorithm, computed independently here.
    ts = 1700000000000
    digest = hmac.new(SECRET.encode(), f"{ts}\n{SECRET}".encode(), hashlib.sha256).digest()
    assert urllib.parse.unquote_plus(sign(SECRET, ts)) == base64.b64encode(digest).decode()
    assert "+" not in sign(SECRET, ts) and "/" not in sign(SECRET, ts)


def test_signed_url_appends_to_existing_query() -> None:
    url = signed_url("https://oapi.dingtalk.com/robot/send?access_token=abc", SECRET, 5)
    assert url.startswith("https://oapi.dingtalk.com/robot/send?access_token=abc&timestamp=5&sign=")
    assert signed_url("https://h/robot", SECRET, 5).startswith("https://h/robot?timestamp=5&sign=")
    assert signed_url("https://h/robot?access_token=a", "", 5) == "https://h/robot?access_token=a"


def test_message_bodies() -> None:
    md = message_body(NOTE, "markdown")
    assert md["msgtype"] == "markdown" and md["markdown"]["title"] == NOTE.title
    assert "### StatefulSet pod placed" in md["markdown"]["text"]
    assert "- **ordinal**: 2" in md["markdown"]["text"]
    text = message_body(NOTE, "text")
    assert text == {
        "msgtype": "text",
        "text": {"content": f"{NOTE.title}\n{NOTE.text}\nordinal: 2\nevent: {PLUGIN_MUTATION}"},
    }


async def test_dingtalk_delivers_correctly_signed_markdown() -> None:
    async with FakeRobot(secret=SECRET) as robot:
        channel = DingTalkChannel(robot.url, SECRET, verify=robot.client_context())
        try:
            await channel.send(NOTE)
        finally:
            await channel.aclose()
        [got] = robot.received
        assert got.signature_ok is True
        assert got.path == "/robot/send" and got.query["access_token"] == robot.token
        assert got.body["msgtype"] == "markdown"
        assert "pod demo/web-2" in got.body["markdown"]["text"]


async def test_dingtalk_errcode_is_a_failure_without_leaking_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakeRobot(secret=SECRET) as robot:
        # The robot is configured with another secret: DingTalk answers 200 + errcode 310000.
        channel = DingTalkChannel(robot.url, "wrong-secret", verify=robot.client_context())
        try:
            with pytest.raises(DeliveryError) as info:
                await channel.send(NOTE)
        finally:
            await channel.aclose()
        assert robot.received[0].signature_ok is False
        assert "errcode 310000" in str(info.value) and not info.value.retryable
        assert robot.token not in str(info.value) and "wrong-secret" not in str(info.value)


async def test_dispatcher_delivers_retries_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with FakeRobot(secret=SECRET, mode="http500") as robot:
        dispatcher = NotificationDispatcher(
            [DingTalkChannel(robot.url, SECRET, verify=robot.client_context())],
            registry=registry,
            attempts=3,
            sleep=fake_sleep,
        )
        runner = asyncio.create_task(dispatcher.run())
        try:
            with caplog.at_level(logging.DEBUG, logger="kubeguard.notify"):
                dispatcher.notify(NOTE)
                async with asyncio.timeout(10):
                    await dispatcher.wait_idle()
            assert robot.attempts == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0]
            assert (
                counter(registry, "notifications_total", channel="dingtalk", result="failed") == 1
            )
            robot.mode = "ok"
            dispatcher.notify(NOTE)
            async with asyncio.timeout(10):
                await dispatcher.wait_idle()
            assert counter(registry, "notifications_total", channel="dingtalk", result="sent") == 1
            assert all(r.signature_ok for r in robot.received)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await dispatcher.aclose()
        logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
        assert "HTTP 500" in logged
        assert robot.token not in logged and SECRET not in logged


async def test_hanging_endpoint_never_blocks_notify_and_full_queue_drops() -> None:
    registry = CollectorRegistry()
    async with FakeRobot(secret=SECRET, mode="hang") as robot:
        dispatcher = NotificationDispatcher(
            [DingTalkChannel(robot.url, SECRET, verify=robot.client_context())],
            registry=registry,
            queue_size=2,
            attempts=1,
            attempt_timeout=30,
        )
        runner = asyncio.create_task(dispatcher.run())
        try:
            dispatcher.notify(NOTE)
            async with asyncio.timeout(10):
                await robot.arrived.wait()  # the worker is stuck inside the first attempt
            for _ in range(5):  # returns at once although the endpoint hangs
                dispatcher.notify(NOTE)
            assert (
                counter(registry, "notifications_total", channel="dingtalk", result="dropped") == 3
            )
            assert counter(registry, "notification_queue_length", channel="dingtalk") == 2
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            robot.mode = "ok"
            robot.release.set()
            await dispatcher.aclose(flush_timeout=5)


async def test_attempt_timeout_then_retry_succeeds() -> None:
    registry = CollectorRegistry()

    class Flaky:
        name = "flaky"

        def __init__(self) -> None:
            self.calls = 0

        async def send(self, notification: Notification) -> None:
            self.calls += 1
            if self.calls == 1:
                await asyncio.sleep(60)  # hangs: cut by the per-attempt timeout

        async def aclose(self) -> None:
            pass

    async def no_sleep(_: float) -> None:
        pass

    flaky = Flaky()
    dispatcher = NotificationDispatcher(
        [flaky], registry=registry, attempt_timeout=0.05, sleep=no_sleep
    )
    runner = asyncio.create_task(dispatcher.run())
    try:
        dispatcher.notify(NOTE)
        async with asyncio.timeout(10):
            await dispatcher.wait_idle()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert flaky.calls == 2
    assert counter(registry, "notification_attempts_total", channel="flaky", outcome="timeout") == 1
    assert counter(registry, "notifications_total", channel="flaky", result="sent") == 1


async def test_events_are_filtered_and_notify_is_safe_before_run() -> None:
    sent: list[str] = []

    class Recorder:
        name = "rec"

        async def send(self, notification: Notification) -> None:
            sent.append(notification.event)

        async def aclose(self) -> None:
            pass

    dispatcher = NotificationDispatcher([Recorder()], events=[PLUGIN_DENIAL])
    dispatcher.notify(NOTE)  # filtered out
    dispatcher.notify(Notification(PLUGIN_DENIAL, "t", "x"))  # queued before the worker runs
    runner = asyncio.create_task(dispatcher.run())
    try:
        async with asyncio.timeout(10):
            await dispatcher.wait_idle()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert sent == [PLUGIN_DENIAL]


async def test_notify_from_another_thread_is_handed_to_the_loop() -> None:
    sent: list[str] = []

    class Recorder:
        name = "rec"

        async def send(self, notification: Notification) -> None:
            sent.append(notification.title)

        async def aclose(self) -> None:
            pass

    dispatcher = NotificationDispatcher([Recorder()])
    runner = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.sleep(0)
        await asyncio.to_thread(dispatcher.notify, Notification("e", "from-thread", ""))
        async with asyncio.timeout(10):
            await dispatcher.wait_idle()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert sent == ["from-thread"]


async def test_webhook_channel_posts_json() -> None:
    received: list[dict[str, Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import json

        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        received.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = WebhookChannel(f"http://127.0.0.1:{port}/hook?key=s3cret")
    try:
        await channel.send(NOTE)
    finally:
        await channel.aclose()
        server.close()
        await server.wait_closed()
    [body] = received
    assert body["event"] == PLUGIN_MUTATION and body["fields"] == {"ordinal": "2"}
    assert body["source"] == "kubeguard" and body["time"].endswith("Z")


async def test_webhook_channel_errors_are_redacted() -> None:
    channel = WebhookChannel("http://127.0.0.1:9/hook?key=s3cret", timeout=2)
    try:
        with pytest.raises(DeliveryError) as info:
            await channel.send(NOTE)
    finally:
        await channel.aclose()
    assert info.value.retryable and "s3cret" not in str(info.value)


def test_build_and_install_notifier() -> None:
    assert build_notifier(Settings()) is None
    settings = Settings(
        dingtalk_url="https://oapi.dingtalk.com/robot/send?access_token=x",
        dingtalk_secret=SECRET,
        notify_webhook_url="https://hooks.example.com/kubeguard",
    )
    runtime = Runtime(settings)
    dispatcher = install_notifier(runtime)
    assert dispatcher is not None and runtime.notifier is dispatcher
    assert dispatcher.channels == ["dingtalk", "webhook"]
    assert [t.name for t in runtime.tasks] == ["notifications"]
    assert runtime.shutdown_hooks == [dispatcher.aclose]
    with pytest.raises(ValueError, match="must start with https://"):
        build_notifier(Settings(dingtalk_url="oapi.dingtalk.com/robot"))


def test_event_filter() -> None:
    assert EventFilter(["*"])("anything")
    only = EventFilter(["plugin-denial", "typo-event"])
    assert only("plugin-denial") and not only("plugin-mutation")
    assert only.unknown() == ["typo-event"]
