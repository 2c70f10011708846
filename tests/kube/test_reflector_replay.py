"""The reflector fed the real v1.36 wire bytes, in-process (httpx2 MockTransport, no server):
the captured watch stream (adds, updates, the gc-node delete, two BOOKMARKs), then the captured
410 `ERROR` event inside an HTTP 200 stream, then the captured list. The only bytes not taken
from a capture are the initial empty list: the capture's watch was opened at resourceVersion
267 before any node existed, which is exactly what an empty list at 267 means."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
from prometheus_client import CollectorRegistry

from kubeguard.kube.objects import NodeView
from kubeguard.kube.reflector import Backoff, Reflector

from .conftest import eventually, fixture_bytes, metric


class _Chunked(httpx2.AsyncByteStream):
    """Serves `data` in awkward chunk sizes (lines split across chunks), then optionally
    stays open until the client goes away (a watch that has nothing more to say)."""

    def __init__(self, data: bytes, *, hang: bool = False, chunk: int = 777) -> None:
        self.data = data
        self.hang = hang
        self.chunk = chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.chunk):
            yield self.data[i : i + self.chunk]
            await asyncio.sleep(0)
        if self.hang:
            await asyncio.Event().wait()


@dataclass
class ReplayServer:
    lists: list[bytes]
    watches: list[bytes]
    requests: list[httpx2.Request] = field(default_factory=list)

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        headers = {"content-type": "application/json"}
        if request.url.params.get("watch") == "true":
            if self.watches:
                return httpx2.Response(200, headers=headers, stream=_Chunked(self.watches.pop(0)))
            return httpx2.Response(200, headers=headers, stream=_Chunked(b"", hang=True))
        return httpx2.Response(200, headers=headers, content=self.lists.pop(0))


@dataclass
class FakeKube:
    http: httpx2.AsyncClient


async def test_replay_real_watch_stream_bookmarks_and_expired() -> None:
    empty_list = (
        b'{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"267"},"items":[]}'
    )
    server = ReplayServer(
        lists=[empty_list, fixture_bytes("api/nodes-list.json")],
        watches=[
            fixture_bytes("api/watch-nodes.jsonl"),
            fixture_bytes("api/watch-nodes-too-old-resource-version.jsonl"),
        ],
    )
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(server), base_url="https://k8s")
    registry = CollectorRegistry()
    refl: Reflector[NodeView] = Reflector(
        FakeKube(http),
        "/api/v1/nodes",
        NodeView,
        resource="nodes",  # type: ignore[arg-type]
        registry=registry,
        backoff=Backoff(initial=0.01, maximum=0.05),
    )
    seen: list[tuple[str, Any, ...]] = []
    refl.add_handler(
        on_add=lambda n: seen.append(("add", n.metadata.name)),
        on_update=lambda o, n: seen.append(
            ("update", n.metadata.name, o.metadata.resource_version, n.metadata.resource_version)
        ),
        on_delete=lambda n: seen.append(("delete", n.metadata.name)),
    )
    task = refl.start()
    try:
        # The relist after the ERROR event is the second list request.
        await eventually(
            lambda: len(server.lists) == 0 and refl.resource_version == "690",
            message="relist after 410",
        )
    finally:
        await refl.aclose()
        await http.aclose()
    assert task.done() and not task.cancelled()  # stop() makes run() return normally

    assert sum(1 for s in seen if s[0] == "add") == 5
    assert sum(1 for s in seen if s[0] == "update") == 20
    assert ("delete", "gc-node") in seen
    # The captured list equals the state the watch had built: the relist synthesizes nothing.
    assert len(seen) == 26
    assert {k: refl.get(k).metadata.resource_version for k in refl.keys()} == {  # noqa: SIM118  # type: ignore[union-attr]
        "drain-node": "447",
        "steady-1": "275",
        "steady-2": "288",
        "victim-node": "388",
    }

    watches = [r for r in server.requests if r.url.params.get("watch") == "true"]
    first, second, third = watches[:3]
    assert first.url.params["resourceVersion"] == "267"
    assert first.url.params["allowWatchBookmarks"] == "true"
    assert int(first.url.params["timeoutSeconds"]) >= 300
    # Resumed from the last BOOKMARK (556), not from the last object (468).
    assert second.url.params["resourceVersion"] == "556"
    # After the 410 ERROR event: a new list, then a watch from the list's resourceVersion.
    assert third.url.params["resourceVersion"] == "690"
    lists = [r for r in server.requests if r.url.params.get("watch") != "true"]
    assert [r.url.params.get("limit") for r in lists] == ["500", "500"]
    assert metric(registry, "reflector_relists_total", resource="nodes") == 1
    assert (
        metric(registry, "reflector_watch_restarts_total", resource="nodes", reason="expired") == 1
    )
    assert (
        metric(registry, "reflector_watch_restarts_total", resource="nodes", reason="closed") == 1
    )
    assert metric(registry, "reflector_last_sync_timestamp_seconds", resource="nodes") > 0
