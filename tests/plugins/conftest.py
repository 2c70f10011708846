"""Helpers of the plugin tests: fixture-derived reviews, a recording notifier, and a harness
that runs the real HTTPS server against the simulated cluster."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from kubeguard import certs
from kubeguard.admission.jsonpatch import apply
from kubeguard.admission.registry import Plugin, Registry
from kubeguard.admission.webhook import (
    HandlerSpec,
    Webhook,
    WebhookEntry,
    decode_patch,
    entry_to_wire,
)
from kubeguard.config import Settings
from kubeguard.kube.client import KubeClient
from kubeguard.metrics import AdmissionMetrics
from kubeguard.notify import Notification
from kubeguard.plugins import (
    deletion_protection,
    sidecar_injection,
    sts_node_selector,
    sts_ordinal_env,
)
from kubeguard.runtime import Runtime, run_tasks
from kubeguard.server.run import RunningServer, start_server
from kubeguard.sim import SimCluster
from kubeguard.sim.testing import sim_cluster

FIXTURES = Path(
    os.environ.get(
        "KUBEGUARD_FIXTURES",
        Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "k8s-1.36",
    )
)

PLUGINS: list[Plugin[Runtime]] = [
    sts_node_selector.PLUGIN,
    sts_ordinal_env.PLUGIN,
    deletion_protection.PLUGIN,
    sidecar_injection.PLUGIN,
]
ALL_GATES = ",".join(f"{p.gate}=true" for p in PLUGINS)


def fixture(rel: str) -> Any:
    path = FIXTURES / rel
    if not path.exists():
        pytest.skip(f"fixtures not available at {FIXTURES}")
    return json.loads(path.read_text())


def sts_pod_review() -> dict[str, Any]:
    """The real StatefulSet pod CREATE (web-2) from the fixtures."""
    return copy.deepcopy(fixture("admission/pod-create-by-statefulset-controller-web-2.json"))


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"namespace": "kubeguard-system"}
    base.update(overrides)
    return Settings(**base)


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def notify(self, notification: Notification) -> None:
        self.sent.append(notification)

    def events(self) -> list[str]:
        return [n.event for n in self.sent]


def registry() -> Registry[Runtime]:
    reg: Registry[Runtime] = Registry()
    for plugin in PLUGINS:
        reg.register(plugin)
    return reg


def webhooks_for(runtime: Runtime, gates: str) -> list[Webhook]:
    reg = registry()
    return reg.build(reg.gates(gates), runtime, AdmissionMetrics(runtime.registry))


def plugin_webhook(gate: str, **overrides: Any) -> tuple[Webhook, RecordingNotifier]:
    """The single webhook served with only `gate` enabled (no kube client), and a notifier
    that records what it sends. `overrides` are Settings fields."""
    notifier = RecordingNotifier()
    runtime = Runtime(settings(**overrides), notifier=notifier)
    [webhook] = webhooks_for(runtime, f"{gate}=true")
    return webhook, notifier


@dataclass
class Decision:
    """An AdmissionReview answer, decoded."""

    status: int
    response: dict[str, Any]

    @property
    def allowed(self) -> bool:
        return bool(self.response["allowed"])

    @property
    def message(self) -> str:
        return str((self.response.get("status") or {}).get("message", ""))

    @property
    def code(self) -> int | None:
        return (self.response.get("status") or {}).get("code")

    @property
    def patch(self) -> list[dict[str, Any]]:
        raw = self.response.get("patch")
        return decode_patch(raw) if raw else []  # type: ignore[return-value]

    @property
    def warnings(self) -> list[str]:
        return list(self.response.get("warnings") or [])


async def review(webhook: Webhook, body: dict[str, Any]) -> Decision:
    body = copy.deepcopy(body)
    body["request"]["uid"] = str(uuid.uuid4())
    status, out = await webhook.review(msgspec.json.encode(body))
    assert status == 200, out
    response = msgspec.json.decode(out)["response"]
    assert response["uid"] == body["request"]["uid"]
    return Decision(status, response)


def patched_object(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The review's object after applying the decision's patch, as kube-apiserver would."""
    result: dict[str, Any] = apply(body["request"]["object"], decision.patch)
    return result


def make_review(
    operation: str,
    obj: dict[str, Any] | None,
    *,
    old: dict[str, Any] | None = None,
    resource: tuple[str, str, str] = ("", "v1", "pods"),
    kind: str = "Pod",
    namespace: str = "demo",
    name: str = "",
    dry_run: bool = False,
    username: str = "alice",
) -> dict[str, Any]:
    group, version, res = resource
    meta = (obj or old or {}).get("metadata", {})
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "placeholder",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": res},
            "name": name or meta.get("name", ""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": username, "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": old,
            "dryRun": dry_run,
        },
    }


# ------------------------------------------------------------------------- end-to-end harness


def render_hook(entry: WebhookEntry, spec: HandlerSpec, base_url: str, ca: bytes) -> dict[str, Any]:
    """One webhook item for an entry, pointing at the in-process server by URL."""
    client = {"url": base_url + spec.path, "caBundle": base64.b64encode(ca).decode()}
    return entry_to_wire(entry, spec.kind, client)


@dataclass
class Kubeguard:
    cluster: SimCluster
    runtime: Runtime
    server: RunningServer
    webhooks: list[Webhook]
    notifier: RecordingNotifier | None


@asynccontextmanager
async def kubeguard_on_sim(
    gates: str,
    *,
    notifier: Any = None,
    record: bool = True,
    settings_overrides: dict[str, Any] | None = None,
    before_start: Sequence[Any] = (),
) -> AsyncIterator[Kubeguard]:
    """The simulated cluster, kubeguard's real HTTPS server (in-process, 127.0.0.1, port 0)
    with the given gates, its background tasks, and its webhook configurations registered in
    the cluster."""
    workdir = Path(tempfile.mkdtemp(prefix="kubeguard-plugins-"))
    ca = certs.generate_ca("plugins-test-ca")
    serving = certs.generate_serving(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    certs.write_cert_dir(workdir, ca, serving)
    recorder = RecordingNotifier() if record and notifier is None else None
    async with sim_cluster() as cluster:
        kube = KubeClient.from_path(cluster.kubeconfig_path)
        cfg = settings(
            port=0,
            bind_address="127.0.0.1",
            cert_dir=workdir,
            feature_gates=gates,
            **(settings_overrides or {}),
        )
        runtime = Runtime(cfg, kube=kube, notifier=notifier or recorder)
        for prepare in before_start:
            await prepare(cluster)
        webhooks = webhooks_for(runtime, gates)
        server = await start_server(runtime, webhooks, cfg)
        stop = asyncio.Event()
        tasks = asyncio.create_task(run_tasks(runtime.tasks, stop))
        try:
            mutating: list[dict[str, Any]] = []
            validating: list[dict[str, Any]] = []
            for webhook in webhooks:
                for spec in webhook.specs:
                    for entry in spec.entries:
                        hook = render_hook(entry, spec, server.url, ca.cert_pem)
                        (mutating if spec.kind == "mutating" else validating).append(hook)
            for kind, hooks in (
                ("MutatingWebhookConfiguration", mutating),
                ("ValidatingWebhookConfiguration", validating),
            ):
                if hooks:
                    await cluster.register_webhook(
                        {
                            "apiVersion": "admissionregistration.k8s.io/v1",
                            "kind": kind,
                            "metadata": {"name": "kubeguard-plugins"},
                            "webhooks": hooks,
                        }
                    )
            yield Kubeguard(cluster, runtime, server, webhooks, recorder)
        finally:
            stop.set()
            await tasks
            # Close the API server's keep-alive connections to kubeguard first, as a real
            # client going away would; otherwise the graceful stop waits for them.
            await cluster.dispatcher.aclose()
            await server.stop()
            for hook in runtime.shutdown_hooks:
                await asyncio.wait_for(hook(), 10)
            await kube.aclose()
            shutil.rmtree(workdir, ignore_errors=True)


def replace_settings(runtime: Runtime, **changes: Any) -> Runtime:
    return dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, **changes))
