"""Test-only launcher: runs the real `run_server` with a test plugin registry in this process.

Usage: python tests/server/launcher.py STATE_DIR [--port N] (settings come from the environment
exactly as for `kubeguard serve`; --port may be 0, which `kubeguard serve` refuses).

The test plugin (gate `ServerTest`, on by default) decides by the label
`test.kubeguard.io/decision` of the object (or oldObject on DELETE):
  deny   -> denied (403, reason test-deny)
  deny429 -> denied (429)
  raise  -> the handler raises RuntimeError
  slow   -> allowed after `test.kubeguard.io/sleep` seconds
  other  -> allowed
It serves /validate (handler failure policy Fail), /validate-ignore (Ignore) and /mutate
(adds label `mutated=true`). Gate `ServerTestDisabled` (off by default) serves /disabled.

Files in STATE_DIR steer it: `handler-not-ready` and `runtime-not-ready` flip readiness; it
writes `task-ran` from a background task and `shutdown-hook-ran` from a shutdown hook.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

import msgspec

from kubeguard.admission import (
    HandlerSpec,
    Plugin,
    Registry,
    Request,
    Response,
    allowed,
    denied,
    patched,
)
from kubeguard.admission import jsonpatch as jp
from kubeguard.cli import run_async
from kubeguard.config import ConfigError, load_settings
from kubeguard.log import setup_logging
from kubeguard.runtime import HttpRequest, HttpResponse, Runtime
from kubeguard.server.run import run_server

LABEL = "test.kubeguard.io/decision"
SLEEP = "test.kubeguard.io/sleep"


class Meta(msgspec.Struct):
    labels: dict[str, str] | None = None


class Obj(msgspec.Struct):
    metadata: Meta = msgspec.field(default_factory=Meta)


def _labels(request: Request) -> dict[str, str]:
    obj = request.object_as(Obj) or request.old_object_as(Obj)
    return (obj.metadata.labels or {}) if obj else {}


class LabelHandler:
    async def handle(self, request: Request) -> Response:
        labels = _labels(request)
        decision = labels.get(LABEL, "")
        if decision == "deny":
            return denied(f"{request.describe()} is denied by the test", reason="test-deny")
        if decision == "deny429":
            return denied("come back later", code=429, reason="test-retry")
        if decision == "raise":
            raise RuntimeError(f"test handler exploded on {request.uid}")
        if decision == "slow":
            await asyncio.sleep(float(labels.get(SLEEP, "1")))
        return allowed()


class MutatingHandler:
    async def handle(self, request: Request) -> Response:
        obj = request.object_as(Obj)
        if obj is None:
            return allowed()
        return patched(jp.set_map_entry(obj.metadata.labels, "/metadata/labels", "mutated", "true"))


def build_registry(state: Path) -> Registry[Runtime]:
    def build(runtime: Runtime) -> list[HandlerSpec]:
        async def echo(req: HttpRequest) -> HttpResponse:
            body = msgspec.json.encode(
                {"method": req.method, "path": req.path, "query": req.query, "body": len(req.body)}
            )
            return HttpResponse(200, body, headers=(("X-Test", "yes"),))

        async def ticker() -> None:
            (state / "task-ran").write_text("yes")
            await asyncio.Event().wait()

        async def on_shutdown() -> None:
            (state / "shutdown-hook-ran").write_text("yes")

        runtime.add_route("/test/echo", {"POST"}, echo)
        runtime.add_route("/test/items/", {"GET", "DELETE"}, echo, prefix=True)
        runtime.add_task("ticker", ticker)
        runtime.add_readiness("test-cache", lambda: not (state / "runtime-not-ready").exists())
        runtime.on_shutdown(on_shutdown)

        def handler_ready() -> bool:
            return not (state / "handler-not-ready").exists()

        return [
            HandlerSpec(
                "test-validate", "/validate", "validating", LabelHandler(), ready=handler_ready
            ),
            HandlerSpec(
                "test-validate-ignore",
                "/validate-ignore",
                "validating",
                LabelHandler(),
                failure_policy="Ignore",
            ),
            HandlerSpec("test-mutate", "/mutate", "mutating", MutatingHandler()),
        ]

    def build_disabled(runtime: Runtime) -> list[HandlerSpec]:
        return [HandlerSpec("test-disabled", "/disabled", "validating", LabelHandler())]

    registry: Registry[Runtime] = Registry()
    registry.register(Plugin("ServerTest", "test plugin", build, default_enabled=True))
    registry.register(Plugin("ServerTestDisabled", "disabled by default", build_disabled))
    return registry


def main() -> int:
    state = Path(sys.argv[1])
    port: int | None = None
    if "--port" in sys.argv:
        port = int(sys.argv[sys.argv.index("--port") + 1])
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if port is not None:
        settings = dataclasses.replace(settings, port=port)
    setup_logging(settings.log_format, settings.log_level)
    try:
        code: int = run_async(run_server(settings, registry=build_registry(state)))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
