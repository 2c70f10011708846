"""`kubeguard demo`: the whole job on the embedded simulated cluster, in about a minute.

The simulated control plane runs in this process (`kubeguard.sim`); kubeguard itself runs as
a separate `kubeguard serve` process, exactly as it would against a real cluster: it reads
the sim's kubeconfig, serves HTTPS with its own certificate, is called by the simulated
kube-apiserver through a ValidatingWebhookConfiguration, and is operated through the real
callback API and CLI. The demo checks what it shows and exits non-zero if anything it promises
did not happen, so it doubles as an end-to-end smoke test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx2

from kubeguard import certs
from kubeguard.config import Settings, Threshold
from kubeguard.protection.plugin import webhook_configuration
from kubeguard.sim import SimCluster
from kubeguard.sim import timeline as tl
from kubeguard.sim.config import SimConfig, Timings

NAMESPACE = "kubeguard"  # kubeguard's own namespace (the sim knows its service account)
APP_NS = "shop"
WORKERS = [f"w{i}" for i in range(1, 9)]
PODS_PER_NODE = 3
TOLERATION = 4  # seconds pods tolerate an unreachable node before taint eviction
WINDOW = "60s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Printer:
    """Timeline output: `[  12.3s] text`, relative to the demo's start."""

    start: float = field(default_factory=time.monotonic)
    echo: Callable[[str], None] = click.echo

    def __call__(self, text: str = "", *, dim: bool = False) -> None:
        stamp = f"[{time.monotonic() - self.start:6.1f}s]"
        self.echo(
            click.style(stamp, dim=True) + " " + (click.style(text, dim=True) if dim else text)
        )

    def phase(self, title: str) -> None:
        self.echo("")
        self.echo(click.style(f"== {title}", bold=True))

    def raw(self, text: str) -> None:
        self.echo(text)


@dataclass
class Checks:
    failed: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str, say: Printer) -> None:
        (self.passed if ok else self.failed).append(what)
        mark = click.style("ok  ", fg="green") if ok else click.style("FAIL", fg="red", bold=True)
        say(f"{mark} {what}")


async def _wait(
    cond: Callable[[], bool | Awaitable[bool]], within: float, step: float = 0.1
) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = cond()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        await asyncio.sleep(step)
    return False


class Kubeguard:
    """A `kubeguard serve` child process pointed at the simulated cluster."""

    def __init__(
        self, workdir: Path, kubeconfig: Path, admin_token: str, extra: tuple[str, ...] = ()
    ) -> None:
        self.extra = extra
        self.workdir = workdir
        self.kubeconfig = kubeconfig
        self.admin_token = admin_token
        self.port = _free_port()
        self.cert_dir = workdir / "certs"
        ca = certs.generate_ca("kubeguard-demo-ca")
        serving = certs.generate_serving(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        certs.write_cert_dir(self.cert_dir, ca, serving)
        self.ca_pem = ca.cert_pem
        self.log_path = workdir / "kubeguard.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.settings = Settings(
            namespace=NAMESPACE, notready_threshold=Threshold(count=3), notready_window=60.0
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            sys.executable,
            "-m",
            "kubeguard",
            "serve",
            "--bind-address=127.0.0.1",
            f"--port={self.port}",
            f"--cert-dir={self.cert_dir}",
            f"--kubeconfig={self.kubeconfig}",
            f"--namespace={NAMESPACE}",
            "--notready-threshold=3",
            f"--notready-window={WINDOW}",
            "--redrive-rate=20",
            "--log-format=json",
            *self.extra,
        ]
        log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def client(self) -> httpx2.AsyncClient:
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        return httpx2.AsyncClient(
            base_url=self.url,
            verify=ctx,
            timeout=5,
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )

    async def ready(self, within: float) -> bool:
        async with self.client() as c:

            async def probe() -> bool:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"kubeguard serve exited with {self.proc.returncode}; see {self.log_path}"
                    )
                try:
                    return (await c.get("/readyz")).status_code == 200
                except httpx2.HTTPError:
                    return False

            return await _wait(probe, within, 0.2)

    async def status(self) -> dict[str, Any]:
        async with self.client() as c:
            resp = await c.get("/callback/status")
        data: dict[str, Any] = resp.json()["data"]
        return data

    async def metrics(self) -> str:
        async with self.client() as c:
            return (await c.get("/metrics")).text

    async def cli(self, *args: str) -> tuple[int, str]:
        """Run the real `kubeguard` CLI against this server (without blocking the event loop,
        which also runs the simulated control plane)."""
        ca_file = self.cert_dir / certs.CA_CERT_FILE
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kubeguard",
            *args,
            f"--server={self.url}",
            f"--token={self.admin_token}",
            f"--ca-file={ca_file}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, out.decode().strip()

    async def stop(self) -> None:
        """SIGTERM, then wait for the graceful shutdown (SIGKILL after 15 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        if not await _wait(lambda: self.proc is None or self.proc.poll() is not None, 15):
            self.proc.kill()
            self.proc.wait(5)


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _pods_on(cluster: SimCluster, node: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in cluster.pods(APP_NS, node=node))


async def run_protection_demo(workdir: Path, say: Printer) -> Checks:
    checks = Checks()
    timings = Timings.fast(
        node_monitor_grace_period=1.0, eviction_rate_interval=0.5, disruption_reset_delay=30.0
    )
    async with SimCluster(SimConfig(timings=timings, workdir=workdir / "sim")) as cluster:
        say.phase("Set-up: a simulated cluster and a real kubeguard process")
        await cluster.add_node("cp1", control_plane=True)
        for i, name in enumerate(WORKERS):
            await cluster.add_node(name, zone="zone-" + "abc"[i % 3])
        for node in WORKERS:
            for i in range(PODS_PER_NODE):
                await cluster.add_pod(
                    f"{node}-web-{i}",
                    APP_NS,
                    node=node,
                    labels={"app": "web"},
                    toleration_seconds=TOLERATION,
                    grace_period=0,
                )
        await cluster.wait_pods_running(within=20)
        say(
            f"simulated API server {cluster.url}: 1 control-plane + {len(WORKERS)} worker nodes, "
            f"{PODS_PER_NODE} pods each in namespace {APP_NS} (tolerate an unreachable node "
            f"{TOLERATION}s)"
        )
        await cluster.create_namespace(NAMESPACE)
        kubeconfig = cluster.write_kubeconfig(
            workdir / "kubeguard.kubeconfig", user=f"system:serviceaccount:{NAMESPACE}:kubeguard"
        )
        kg = Kubeguard(workdir, kubeconfig, cluster.admin_token)
        kg.start()
        try:
            if not await kg.ready(30):
                checks.expect(False, "kubeguard became ready", say)
                return checks
            say(f"kubeguard serve is ready at {kg.url} (threshold 3 NotReady nodes in {WINDOW})")
            await cluster.register_webhook(webhook_configuration(kg.settings, kg.url, kg.ca_pem))
            say("ValidatingWebhookConfiguration pod-eviction-protection registered")
            await _run_incident(cluster, kg, say, checks)
        finally:
            # The API server's keep-alive connections to the webhook go away with it, as they
            # would in a real cluster; then kubeguard shuts down gracefully.
            await cluster.dispatcher.aclose()
            await kg.stop()
            say(f"kubeguard's own log: {kg.log_path}", dim=True)
    return checks


def _printer_for(cluster: SimCluster, say: Printer) -> Callable[[], None]:
    """Print the interesting timeline entries as they happen. A controller retries a denied
    request (the node-controller retries MarkPodsNotReady on every monitor pass): each
    (actor, request) denial is printed once and counted."""
    seen: dict[tuple[str, str], int] = {}

    def on_entry(e: tl.TimelineEntry) -> None:
        if e.kind == tl.DELETION and e.details.get("resource", "pods") == "pods":
            say(f"   {e.message} ({e.actor})", dim=True)
        elif e.kind == tl.DENIAL:
            key = (e.actor, e.message.split(" refused", 1)[0])
            seen[key] = seen.get(key, 0) + 1
            if seen[key] == 1:
                short = e.message if len(e.message) < 160 else e.message[:157] + "..."
                say(f"   denied: {e.actor}: {short}", dim=True)
        elif e.kind == tl.NODE and "Ready=" in e.message:
            say(f"   {e.message}", dim=True)

    return cluster.timeline.subscribe(on_entry)


async def _run_incident(cluster: SimCluster, kg: Kubeguard, say: Printer, checks: Checks) -> None:
    unsubscribe = _printer_for(cluster, say)
    try:
        # 1. A single node failure is business as usual.
        say.phase("1. One node fails alone: its pods are evicted normally")
        cluster.stop_heartbeat("w1")
        say("w1 stops heartbeating")
        gone = await _wait(lambda: not _pods_on(cluster, "w1"), 20)
        checks.expect(gone, "the taint-eviction controller evicted all pods of w1", say)
        status = await kg.status()
        checks.expect(not status["intercepting"], "protection did not engage for one node", say)
        cluster.resume_heartbeat("w1")
        await _wait(lambda: cluster.node_ready("w1") == "True", 10)
        say("w1 recovers")

        # 2. A rack fails: three nodes within seconds.
        say.phase("2. A rack fails: w2, w3 and w4 go NotReady within seconds")
        before = {n: _pods_on(cluster, n) for n in ("w2", "w3", "w4")}
        for node in ("w2", "w3", "w4"):
            cluster.stop_heartbeat(node)
            say(f"{node} stops heartbeating")
            await asyncio.sleep(1.0)

        async def engaged() -> bool:
            return bool((await kg.status())["intercepting"])

        ok = await _wait(engaged, 20, 0.2)
        status = await kg.status()
        checks.expect(ok, f"protection engaged ({status.get('cause', '')})", say)
        say(f"waiting {TOLERATION + 4}s: the pods' tolerations expire and the control plane tries")
        await asyncio.sleep(TOLERATION + 4)
        after = {n: _pods_on(cluster, n) for n in ("w2", "w3", "w4")}
        checks.expect(
            after == before,
            f"all {sum(map(len, before.values()))} pods on w2, w3, w4 are still there",
            say,
        )
        denials = [e for e in cluster.timeline.of_kind(tl.DENIAL) if "node-controller" in e.actor]
        checks.expect(
            bool(denials),
            f"the node-controller's disruption attempts were denied ({len(denials)} times)",
            say,
        )

        # 3. Evictions: denied on the failed rack, allowed elsewhere.
        say.phase("3. Evictions through the Eviction API (what kubectl drain sends)")
        victim = before["w3"][0]
        code, body = await cluster.evict_pod(APP_NS, victim, user="alice")
        say(f"evict {APP_NS}/{victim} on NotReady w3 -> HTTP {code}: {body.get('message', '')}")
        checks.expect(code == 429, "eviction of a pod on a NotReady node denied with 429", say)
        healthy = _pods_on(cluster, "w6")[0]
        code, _ = await cluster.evict_pod(APP_NS, healthy, user="alice")
        say(f"evict {APP_NS}/{healthy} on healthy w6 -> HTTP {code}")
        gone = await _wait(lambda: healthy not in _pods_on(cluster, "w6"), 10)
        checks.expect(code == 201 and gone, "a pod on a healthy node is still evicted", say)

        rc, out = await kg.cli("status")
        say("$ kubeguard status")
        say.raw("\n".join("    " + line for line in out.splitlines()))

        # 4. The operator releases; kubeguard re-drives the evictions the controller gave up.
        say.phase("4. The operator releases protection; kubeguard re-drives the evictions")
        rc, out = await kg.cli("disable")
        say(f"$ kubeguard disable -> {out.splitlines()[-1] if out else rc}")
        checks.expect(rc == 0, "kubeguard disable succeeded", say)
        stranded = [p for pods in after.values() for p in pods if p != victim]
        evicted = await _wait(
            lambda: not any(_pods_on(cluster, n) for n in ("w2", "w3", "w4")), 30, 0.2
        )
        checks.expect(
            evicted,
            f"re-drive evicted the {len(stranded) + 1} pods stranded on the still-NotReady nodes",
            say,
        )
        remaining = sum(len(_pods_on(cluster, n)) for n in WORKERS)
        say(f"pods left on the {len(WORKERS)} workers: {remaining}")
        await asyncio.sleep(1.5)  # let the re-drive report its progress
        rc, out = await kg.cli("status")
        say("$ kubeguard status")
        say.raw("\n".join("    " + line for line in out.splitlines()))
        metrics = await kg.metrics()
        say(
            "metrics: eviction_intercepted_total="
            f"{_metric(metrics, 'eviction_intercepted_total'):g} "
            f"eviction_allowed_total={_metric(metrics, 'eviction_allowed_total'):g} "
            f"node_notready_count={_metric(metrics, 'node_notready_count'):g} "
            f"protection_engaged={_metric(metrics, 'protection_engaged'):g}"
        )
    finally:
        unsubscribe()


STS_LABELS = {"w1": "node1", "w2": "node1", "w3": "node2", "w4": "node2"}


async def run_sts_demo(workdir: Path, say: Printer) -> Checks:
    """Seed 004: StatefulSet pods get a nodeSelector by ordinal parity."""
    from kubeguard.admission.webhook import url_configurations
    from kubeguard.plugins import default_registry
    from kubeguard.plugins.sts_node_selector import NodeSelectorRule, opt_in_metadata
    from kubeguard.runtime import Runtime
    from kubeguard.sim.util import ApiError

    checks = Checks()
    gates = "PodEvictionProtection=false,StsNodeSelector=true"
    async with SimCluster(SimConfig(workdir=workdir / "sim")) as cluster:
        say.phase("Set-up: 4 worker nodes labelled name=node1 / name=node2, kubeguard serve")
        for node, value in STS_LABELS.items():
            await cluster.add_node(node, labels={"name": value})
        await cluster.create_namespace(NAMESPACE)
        kubeconfig = cluster.write_kubeconfig(
            workdir / "kubeguard.kubeconfig", user=f"system:serviceaccount:{NAMESPACE}:kubeguard"
        )
        kg = Kubeguard(workdir, kubeconfig, cluster.admin_token, (f"--feature-gates={gates}",))
        kg.start()
        try:
            if not await kg.ready(30):
                checks.expect(False, "kubeguard became ready", say)
                return checks
            registry = default_registry()
            specs = registry.build_specs(
                registry.gates(gates), Runtime(Settings(namespace=NAMESPACE, feature_gates=gates))
            )
            for configuration in url_configurations(specs, kg.url, kg.ca_pem):
                await cluster.register_webhook(configuration)
            say(f"kubeguard serve ready at {kg.url} with {gates}; MutatingWebhookConfiguration set")

            say.phase(
                "1. StatefulSet web (5 replicas) opts in with the seed's label and annotation"
            )
            rule = NodeSelectorRule("name", "node1", "node2")
            labels, annotations = opt_in_metadata(
                "ab-build-different", "custom-node-selector", rule
            )
            say(f"annotation custom-node-selector: {annotations['custom-node-selector']}")
            pods = await cluster.create_statefulset_pods(
                "web", APP_NS, 5, labels=labels, annotations=annotations
            )
            right = True
            for pod in pods:
                name = pod["metadata"]["name"]
                selector = pod["spec"].get("nodeSelector", {})
                ordinal = int(name.rsplit("-", 1)[1])
                want = rule.value_for(ordinal)
                nodes = [n for n, v in STS_LABELS.items() if v == selector.get("name")]
                say(f"{name}: nodeSelector {selector} -> schedulable on {', '.join(nodes)}")
                right = right and selector.get("name") == want
            checks.expect(right, "even ordinals got name=node1, odd ordinals name=node2", say)

            say.phase("2. A malformed annotation is refused with an example of a valid one")
            try:
                await cluster.create_statefulset_pods(
                    "bad",
                    APP_NS,
                    1,
                    labels=labels,
                    annotations={"custom-node-selector": '{"key": "name", "even": "node1"}'},
                )
                refused = False
            except ApiError as err:
                refused = True
                say(f"HTTP {err.code}: {err.status.get('message', '')}")
            checks.expect(refused, "the pod with a malformed annotation was refused", say)

            say.phase("3. Pods without the label are never sent to kubeguard")
            plain = await cluster.create_statefulset_pods("cache", APP_NS, 2)
            checks.expect(
                all("nodeSelector" not in p["spec"] for p in plain),
                "unlabelled StatefulSet pods are untouched",
                say,
            )
        finally:
            await cluster.dispatcher.aclose()
            await kg.stop()
            say(f"kubeguard's own log: {kg.log_path}", dim=True)
    return checks


SCENARIOS: dict[str, tuple[str, Callable[[Path, Printer], Coroutine[Any, Any, Checks]]]] = {
    "protection": (
        "a rack failure on a simulated cluster, in real time (about 30 seconds)",
        run_protection_demo,
    ),
    "sts": ("StatefulSet pods placed by ordinal parity (seed 004)", run_sts_demo),
}


@click.command()
@click.option(
    "--scenario",
    type=click.Choice(sorted(SCENARIOS)),
    default="protection",
    show_default=True,
    help="What to show.",
)
@click.option(
    "--keep",
    "keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the work files (kubeguard's log, certificates, kubeconfigs) in this directory.",
)
def demo(scenario: str, keep: Path | None) -> None:
    """Run kubeguard end to end on the embedded simulated cluster (no Kubernetes needed)."""
    say = Printer()
    title, run = SCENARIOS[scenario]
    click.echo(click.style("kubeguard demo", bold=True) + f": {title}.")
    with contextlib.ExitStack() as stack:
        if keep is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kg-demo-")))
        else:
            workdir = keep
            workdir.mkdir(parents=True, exist_ok=True)
        try:
            checks = asyncio.run(run(workdir, say))
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        click.echo("")
        if checks.failed:
            click.echo(click.style(f"demo FAILED: {'; '.join(checks.failed)}", fg="red"), err=True)
            if keep is None:
                click.echo("re-run with --keep DIR to keep kubeguard's log", err=True)
            sys.exit(1)
        click.echo(click.style(f"demo passed: {len(checks.passed)} checks", fg="green"))
