"""Runtime: background task supervision, readiness and routes."""

from __future__ import annotations

import asyncio

import pytest

from kubeguard.config import Settings
from kubeguard.runtime import BackgroundTask, HttpRequest, HttpResponse, Runtime, run_tasks


async def test_crashing_task_is_restarted_and_others_keep_running() -> None:
    stop = asyncio.Event()
    attempts = 0
    ticks = 0

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 2:
            raise RuntimeError("boom")
        await stop.wait()

    async def steady() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    runner = asyncio.create_task(
        run_tasks([BackgroundTask("flaky", flaky), BackgroundTask("steady", steady)], stop)
    )
    for _ in range(300):
        if attempts >= 2:
            break
        await asyncio.sleep(0.01)
    assert attempts == 2
    assert ticks > 0
    stop.set()
    await asyncio.wait_for(runner, 5)


def test_readiness_reports_failing_and_raising_checks() -> None:
    rt = Runtime(Settings())
    state = {"synced": False}
    rt.add_readiness("node-cache", lambda: state["synced"])

    def broken() -> bool:
        raise ValueError("bug")

    rt.add_readiness("broken", broken)
    assert rt.not_ready() == ["node-cache", "broken"]
    state["synced"] = True
    assert rt.not_ready() == ["broken"]


def test_duplicate_route_is_refused() -> None:
    rt = Runtime(Settings())

    async def handler(req: HttpRequest) -> HttpResponse:
        return HttpResponse(200)

    rt.add_route("/callback/status", {"get"}, handler)
    assert rt.routes[0].methods == frozenset({"GET"})
    with pytest.raises(ValueError, match="registered twice"):
        rt.add_route("/callback/status", {"GET"}, handler)


def test_bearer_token_parsing() -> None:
    def req(auth: str) -> HttpRequest:
        return HttpRequest("GET", "/", "", {"authorization": auth}, b"")

    assert req("Bearer abc").bearer_token == "abc"
    assert req("bearer  abc ").bearer_token == "abc"
    assert req("Basic abc").bearer_token is None
    assert req("Bearer ").bearer_token is None


def test_require_kube_names_the_caller() -> None:
    with pytest.raises(RuntimeError, match="re-drive needs Kubernetes API access"):
        Runtime(Settings()).require_kube("re-drive")
