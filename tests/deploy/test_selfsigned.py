"""Self-signed certificate mode against the simulated cluster, with exactly the RBAC that
`kubeguard manifests` renders: shared Secret, caBundle patching, renewal, and the API server
reaching kubeguard's real HTTPS server through the patched caBundle."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeguard import certs, manifests
from kubeguard.config import Settings
from kubeguard.kube.client import KubeClient
from kubeguard.metrics import AdmissionMetrics
from kubeguard.runtime import Runtime
from kubeguard.selfsigned import CA_KEY_FILE, SelfSigned, setup_self_signed
from kubeguard.sim import SimCluster
from kubeguard.sim.testing import sim_cluster

from .conftest import Recorder, probe_registry, sim_user_from_rbac

NS = "kubeguard-system"
SECRET = "kubeguard-serving-cert"


@dataclass
class Env:
    cluster: SimCluster
    kubeconfig: Path
    objects: list[dict[str, Any]]
    tmp: Path


@contextlib.asynccontextmanager
async def installed(tmp: Path, recorder: Recorder | None = None) -> AsyncIterator[Env]:
    """A sim with kubeguard's namespace, webhook configurations (rendered, no caBundle) and its
    service account holding the rendered RBAC."""
    registry = probe_registry(recorder)
    opts = manifests.options_from_settings({"feature_gates": "MutatingProbe=true"})
    rendered = manifests.render(opts, registry)
    async with sim_cluster() as cluster:
        await cluster.create_namespace(NS)
        for obj in rendered.files["40-webhooks.yaml"]:
            assert all("caBundle" not in h["clientConfig"] for h in obj["webhooks"])
            await cluster.register_webhook(obj)
        user = sim_user_from_rbac(rendered.objects, NS, "kubeguard")
        cluster.users.add(user)
        kubeconfig = cluster.write_kubeconfig(tmp / "sa.kubeconfig", user=user.username)
        yield Env(cluster, kubeconfig, rendered.objects, tmp)


def replica_settings(env: Env, name: str) -> Settings:
    return Settings(
        namespace=NS,
        self_signed=True,
        cert_dir=env.tmp / name,
        port=0,
        bind_address="127.0.0.1",
        feature_gates="MutatingProbe=true",
    )


@contextlib.asynccontextmanager
async def replica(env: Env, name: str) -> AsyncIterator[Runtime]:
    kube = KubeClient.from_path(env.kubeconfig)
    try:
        yield Runtime(replica_settings(env, name), kube=kube)
    finally:
        await kube.aclose()


def secret_data(cluster: SimCluster) -> dict[str, bytes]:
    secret = cluster.get("secrets", NS, SECRET)
    assert secret is not None
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def ca_bundles(cluster: SimCluster) -> list[str]:
    out = []
    for resource in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        for config in cluster.store.iter(resource):
            out += [h["clientConfig"].get("caBundle", "") for h in config["webhooks"]]
    return out


async def test_two_replicas_share_one_secret_and_patch_every_ca_bundle(tmp_path: Path) -> None:
    async with installed(tmp_path) as env, replica(env, "a") as ra, replica(env, "b") as rb:
        registry = probe_registry()
        a, b = await asyncio.gather(
            setup_self_signed(ra, registry=registry), setup_self_signed(rb, registry=registry)
        )
        data = secret_data(env.cluster)
        assert set(data) == {"ca.crt", CA_KEY_FILE, "tls.crt", "tls.key"}
        for ss, rt in ((a, ra), (b, rb)):
            assert ss.ready and rt.not_ready() == []
            assert (rt.settings.cert_dir / "tls.crt").read_bytes() == data["tls.crt"]
            assert (rt.settings.cert_dir / "ca.crt").read_bytes() == data["ca.crt"]
            assert [t.name for t in rt.tasks] == ["self-signed-certificates"]
        expected = base64.b64encode(data["ca.crt"]).decode()
        bundles = ca_bundles(env.cluster)
        assert len(bundles) == 2 and set(bundles) == {expected}  # validating and mutating
        cert = certs.KeyPair(data["tls.crt"], data["tls.key"]).certificate
        import cryptography.x509 as x509

        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [
            "kubeguard",
            "kubeguard.kubeguard-system",
            "kubeguard.kubeguard-system.svc",
            "kubeguard.kubeguard-system.svc.cluster.local",
        ]


async def test_renewal_replaces_the_serving_cert_and_keeps_the_ca(tmp_path: Path) -> None:
    async with installed(tmp_path) as env, replica(env, "a") as ra, replica(env, "b") as rb:
        registry = probe_registry()
        configs = [("validating", "pod-eviction-protection"), ("mutating", "kubeguard-mutating")]
        await setup_self_signed(ra, registry=registry)
        before = secret_data(env.cluster)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=61)  # past 2/3 of 90 days
        renewing = SelfSigned(ra, configs, clock=lambda: later)
        await renewing.sync()
        after = secret_data(env.cluster)
        assert after["tls.crt"] != before["tls.crt"] and after["ca.crt"] == before["ca.crt"]
        assert (ra.settings.cert_dir / "tls.crt").read_bytes() == after["tls.crt"]
        # The other replica picks the renewed certificate up from the Secret on its next check
        # (its own clock says the new certificate is fresh: no second renewal).
        other = SelfSigned(rb, configs, check_interval=0.01)
        task = asyncio.create_task(other.run())
        try:
            await env.cluster.wait_for(
                lambda: (
                    (rb.settings.cert_dir / "tls.crt").exists()
                    and (rb.settings.cert_dir / "tls.crt").read_bytes() == after["tls.crt"]
                ),
                within=10,
                message="replica b to write the renewed certificate",
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert secret_data(env.cluster)["tls.crt"] == after["tls.crt"]


async def test_a_broken_secret_and_a_wrong_ca_bundle_are_repaired(tmp_path: Path) -> None:
    async with installed(tmp_path) as env, replica(env, "a") as ra:
        await env.cluster.create(
            manifests_secret_info(),
            {
                "metadata": {"name": SECRET, "namespace": NS},
                "type": "Opaque",
                "data": {"tls.crt": base64.b64encode(b"not a certificate").decode()},
            },
        )
        ss = await setup_self_signed(ra, registry=probe_registry())
        data = secret_data(env.cluster)
        assert data["tls.crt"].startswith(b"-----BEGIN CERTIFICATE-----")
        # Someone re-applies a configuration with a stale caBundle: the next check fixes it.
        config = env.cluster.get("validatingwebhookconfigurations", "", "pod-eviction-protection")
        assert config is not None
        config = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            **config,
        }
        config["webhooks"][0]["clientConfig"]["caBundle"] = base64.b64encode(b"stale").decode()
        await env.cluster.register_webhook(config)
        await ss.sync()
        assert set(ca_bundles(env.cluster)) == {base64.b64encode(data["ca.crt"]).decode()}


def manifests_secret_info() -> Any:
    from kubeguard.sim.resources import core

    return core("secrets")


async def test_api_server_calls_kubeguard_through_the_patched_ca_bundle(tmp_path: Path) -> None:
    """The rendered configuration in the sim, kubeguard's real HTTPS server with the
    self-signed certificate: the sim verifies TLS against the caBundle with the Service's
    name (SNI kubeguard.kubeguard-system.svc) and routes only the intended requests."""
    from kubeguard.server.run import start_server

    recorder = Recorder()
    async with installed(tmp_path, recorder) as env, replica(env, "a") as rt:
        registry = probe_registry(recorder)
        await setup_self_signed(rt, registry=registry)
        gates = registry.gates(rt.settings.feature_gates)
        webhooks = registry.build(gates, rt, AdmissionMetrics(rt.registry))
        server = await start_server(rt, webhooks, rt.settings)
        try:
            env.cluster.dispatcher.service_urls[f"{NS}/kubeguard:443"] = server.url
            cluster = env.cluster
            await cluster.add_node("w1")
            for ns in ("demo", "kube-system", NS):
                await cluster.add_pod("p1", ns, node="w1")
                await cluster.add_pod("p2", ns, node="w1")
            await cluster.wait_pods_running()
            for ns in ("demo", "kube-system", NS):
                assert (
                    await cluster.delete_pod(ns, "p1", user="alice" if ns == "demo" else "admin")
                )[0] == 200
                assert (await cluster.evict_pod(ns, "p2"))[0] == 201
            seen = set(recorder.seen)
            assert ("DELETE", "pods", "demo", "alice") in seen
            assert ("CREATE", "pods/eviction", "demo", "admin") in seen
            assert {ns for _, _, ns, _ in recorder.seen} == {"demo"}  # never kube-system / own
            assert not [u for *_, u in recorder.seen if u.startswith("system:node:")]
            assert [r for r in ca_bundles(cluster) if not r] == []
        finally:
            await env.cluster.dispatcher.aclose()  # its keep-alive connections, then drain
            await server.stop()
