"""`SimCluster`: the facade that starts the simulated control plane and drives it.

    async with SimCluster(SimConfig()) as cluster:
        await cluster.add_nodes("w", 3, zones=["a", "b"])
        await cluster.add_pods_per_node(2, namespace="demo")
        cluster.stop_heartbeat("w-1")
        await cluster.wait_for(lambda: cluster.node_ready("w-1") == "Unknown")

Clients connect through `cluster.kubeconfig_path` (bearer token of `admin`, or any user's
token with `cluster.write_kubeconfig(path, user=...)`), exactly as to a real cluster.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from .. import certs
from . import timeline as tl
from .admission import WebhookDispatcher
from .api import PODS, ApiCore, pod_condition
from .apiserver import ApiServer, ApiServerApp
from .auth import STATEFULSET_CONTROLLER, UserInfo, UserTable
from .config import SimConfig
from .controllers import NODES, Controllers, node_condition
from .resources import RESOURCES, ResourceInfo, core
from .store import Store
from .util import JSON, ApiError, deepcopy

NAMESPACES = core("namespaces")
VALIDATING = RESOURCES[("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations")]
MUTATING = RESOURCES[("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations")]
PDBS = RESOURCES[("policy", "v1", "poddisruptionbudgets")]
ZONE_LABEL = "topology.kubernetes.io/zone"


def pod_manifest(
    name: str,
    namespace: str = "default",
    *,
    node: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owner_references: list[JSON] | None = None,
    toleration_seconds: int | None = None,
    grace_period: int | None = None,
    image: str = "registry.k8s.io/pause:3.10",
    container: str = "app",
) -> JSON:
    """A Pod body like the fixtures' (one container, optionally bound to a node)."""
    meta: JSON = {"name": name, "namespace": namespace, "labels": labels or {"app": name}}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner_references:
        meta["ownerReferences"] = deepcopy(owner_references)
    spec: JSON = {"containers": [{"name": container, "image": image}]}
    if node:
        spec["nodeName"] = node
    if grace_period is not None:
        spec["terminationGracePeriodSeconds"] = grace_period
    if toleration_seconds is not None:
        spec["tolerations"] = [
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": toleration_seconds,
            }
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


class SimCluster:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.timeline = tl.Timeline()
        self.store = Store(self.config.watch_history_size)
        self.users = UserTable(self.config.users)
        self.dispatcher = WebhookDispatcher(self.store, self.timeline, self.config.service_urls)
        self.api = ApiCore(
            self.store,
            self.users,
            self.dispatcher,
            self.timeline,
            self.config.timings.default_toleration_seconds,
            audiences=lambda: [self.url] if self._server else [],
        )
        self.controllers = Controllers(self.api, self.config.timings, self.timeline)
        self._app = ApiServerApp(self.api, self.users, self.config.timings.bookmark_interval)
        self._server: ApiServer | None = None
        self._tmp: Path | None = None
        self.workdir: Path = Path()
        self.kubeconfig_path: Path = Path()
        self.ca = certs.generate_ca("kubeguard-sim-ca")
        self.started = False

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> SimCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.started:
            return
        if self.config.workdir is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="kubeguard-sim-"))
            self.workdir = self._tmp
        else:
            self.workdir = Path(self.config.workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        serving = certs.generate_serving(
            self.ca,
            dns_names=["localhost", "kubernetes", "kubernetes.default.svc"],
            ip_addresses=["127.0.0.1"],
            common_name="kube-apiserver",
        )
        certs.write_cert_dir(self.workdir / "pki", self.ca, serving)
        self._server = ApiServer(
            self._app,
            self.workdir / "pki" / certs.TLS_CERT_FILE,
            self.workdir / "pki" / certs.TLS_KEY_FILE,
            self.config.port,
        )
        try:
            await self._server.start()
            self.kubeconfig_path = Path(self.config.kubeconfig_path or self.workdir / "kubeconfig")
            self.write_kubeconfig(self.kubeconfig_path)
            admin = self.admin
            for ns in self.config.namespaces:
                await self.create_namespace(ns, user=admin)
            for hook_config in self.config.webhook_configurations:
                await self.register_webhook(hook_config)
            if self.config.controllers:
                self.controllers.start()
            self.started = True
        except BaseException:
            await self._shutdown()
            raise
        self.timeline.add(tl.INFO, "sim", f"simulated cluster serving on {self.url}")

    async def stop(self) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self.started = False
        await self.controllers.stop()
        if self._server is not None:
            await self._server.stop()
        await self.dispatcher.aclose()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # ----------------------------------------------------------------- connection

    @property
    def port(self) -> int:
        return self._server.port if self._server else 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    @property
    def admin_token(self) -> str:
        return self.users.token_for("admin")

    def token(self, username: str) -> str:
        return self.users.token_for(username)

    @property
    def admin(self) -> UserInfo:
        user = self.users.by_name("admin")
        assert user is not None
        return user.info()

    def user(self, username: str) -> UserInfo:
        user = self.users.by_name(username)
        if user is None:
            raise KeyError(f"unknown user {username!r}")
        return user.info()

    def write_kubeconfig(self, path: Path, *, user: str = "admin") -> Path:
        ca_data = base64.b64encode(self.ca.cert_pem).decode()
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kubeguard-sim",
                    "cluster": {"server": self.url, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": user, "user": {"token": self.users.token_for(user)}}],
            "contexts": [
                {
                    "name": "kubeguard-sim",
                    "context": {"cluster": "kubeguard-sim", "user": user, "namespace": "default"},
                }
            ],
            "current-context": "kubeguard-sim",
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)
        return path

    # ----------------------------------------------------------------- objects

    def get(self, resource: str, namespace: str, name: str) -> JSON | None:
        """The stored object (storage form: no kind/apiVersion) or None."""
        return self.store.get(resource, namespace, name)

    def pods(self, namespace: str | None = None, node: str | None = None) -> list[JSON]:
        if node is not None:
            return [
                p
                for p in self.store.pods_on_node(node)
                if namespace is None or p["metadata"]["namespace"] == namespace
            ]
        return list(self.store.iter("pods", namespace))

    def nodes(self) -> list[JSON]:
        return list(self.store.iter("nodes"))

    def node_ready(self, name: str) -> str | None:
        node = self.store.get("nodes", "", name)
        return node_condition(node) if node else None

    def pod_ready(self, namespace: str, name: str) -> str | None:
        pod = self.store.get("pods", namespace, name)
        if pod is None:
            return None
        return str((pod_condition(pod, "Ready") or {}).get("status", "")) or None

    async def create(
        self, info: ResourceInfo, body: JSON, *, user: UserInfo | None = None, namespace: str = ""
    ) -> JSON:
        ns = namespace or str(body.get("metadata", {}).get("namespace", ""))
        return await self.api.create(info, ns if info.namespaced else "", body, user or self.admin)

    async def create_namespace(
        self, name: str, labels: dict[str, str] | None = None, *, user: UserInfo | None = None
    ) -> JSON:
        existing = self.store.get("namespaces", "", name)
        if existing is not None:
            return existing
        return await self.api.create(
            NAMESPACES,
            "",
            {"metadata": {"name": name, "labels": dict(labels or {})}},
            user or self.admin,
        )

    async def add_node(
        self,
        name: str,
        *,
        zone: str | None = None,
        labels: dict[str, str] | None = None,
        control_plane: bool = False,
        heartbeat: bool = True,
    ) -> JSON:
        all_labels = dict(labels or {})
        if zone:
            all_labels.setdefault(ZONE_LABEL, zone)
        return await self.controllers.register_node(
            name, all_labels, control_plane=control_plane, heartbeat=heartbeat
        )

    async def add_nodes(
        self,
        prefix: str,
        count: int,
        *,
        zones: Iterable[str] = (),
        labels: dict[str, str] | None = None,
    ) -> list[str]:
        zone_list = list(zones)
        names = []
        for i in range(1, count + 1):
            name = f"{prefix}{i}"
            zone = zone_list[(i - 1) % len(zone_list)] if zone_list else None
            await self.add_node(name, zone=zone, labels=labels)
            names.append(name)
        return names

    async def add_pod(
        self,
        name: str,
        namespace: str = "default",
        *,
        node: str | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        owner_references: list[JSON] | None = None,
        toleration_seconds: int | None = None,
        grace_period: int | None = None,
        user: UserInfo | None = None,
        running: bool = False,
    ) -> JSON:
        """Create a pod (through admission). With a node, the node's kubelet starts it
        (pods/status patch); `running=True` writes the Running/Ready status directly instead
        (no webhook call; used for bulk set-ups such as the benchmark)."""
        await self.create_namespace(namespace)
        body = pod_manifest(
            name,
            namespace,
            node=node,
            labels=labels,
            annotations=annotations,
            owner_references=owner_references,
            toleration_seconds=toleration_seconds,
            grace_period=grace_period,
        )
        if running and node:
            created = await self.api.create(PODS, namespace, body, user or self.admin)
            pod = deepcopy(created)
            pod["status"] = self.controllers.running_status(pod, node)
            return self.store.replace("pods", pod)
        return await self.api.create(PODS, namespace, body, user or self.admin)

    async def add_pods_per_node(
        self,
        per_node: int,
        namespace: str = "default",
        *,
        nodes: Iterable[str] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        toleration_seconds: int | None = None,
        grace_period: int | None = None,
        running: bool = False,
    ) -> list[str]:
        names = []
        node_names = (
            list(nodes)
            if nodes is not None
            else [
                n["metadata"]["name"]
                for n in self.nodes()
                if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
            ]
        )
        for node in node_names:
            for i in range(per_node):
                name = f"{node}-pod-{i}"
                pod_labels = {"app": name.rsplit("-pod-", 1)[0], **(labels or {})}
                await self.add_pod(
                    name,
                    namespace,
                    node=node,
                    labels=pod_labels,
                    annotations=annotations,
                    toleration_seconds=toleration_seconds,
                    grace_period=grace_period,
                    running=running,
                )
                names.append(name)
        return names

    async def create_statefulset_pods(
        self,
        name: str,
        namespace: str = "default",
        replicas: int = 3,
        *,
        nodes: list[str] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        toleration_seconds: int | None = None,
    ) -> list[JSON]:
        """Pods web-0..web-N as the statefulset controller creates them (owner reference to
        an apps/v1 StatefulSet, pod-index and pod-name labels, hostname/subdomain)."""
        await self.create_namespace(namespace)
        digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()
        uid = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        user = STATEFULSET_CONTROLLER.info()
        created = []
        for i in range(replicas):
            pod_name = f"{name}-{i}"
            pod_labels = {
                **(labels or {}),
                "app": (labels or {}).get("app", name),
                "apps.kubernetes.io/pod-index": str(i),
                "controller-revision-hash": f"{name}-{digest[:10]}",
                "statefulset.kubernetes.io/pod-name": pod_name,
            }
            body = pod_manifest(
                pod_name,
                namespace,
                labels=dict(sorted(pod_labels.items())),
                annotations=annotations,
                image="registry.k8s.io/nginx-slim:0.27",
                container="nginx",
                toleration_seconds=toleration_seconds,
                node=nodes[i % len(nodes)] if nodes else None,
                owner_references=[
                    {
                        "apiVersion": "apps/v1",
                        "kind": "StatefulSet",
                        "name": name,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            )
            body["metadata"]["generateName"] = f"{name}-"
            body["spec"]["hostname"] = pod_name
            body["spec"]["subdomain"] = name
            created.append(await self.api.create(PODS, namespace, body, user))
        return created

    async def register_webhook(self, configuration: JSON) -> JSON:
        """Create (or replace) a Validating/MutatingWebhookConfiguration."""
        kind = configuration.get("kind", "ValidatingWebhookConfiguration")
        info = MUTATING if kind == "MutatingWebhookConfiguration" else VALIDATING
        name = configuration.get("metadata", {}).get("name", "")
        existing = self.store.get(info.resource, "", name)
        if existing is not None:
            body = deepcopy(configuration)
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            return await self.api.update(info, "", name, body, self.admin)
        return await self.api.create(info, "", deepcopy(configuration), self.admin)

    async def unregister_webhook(self, name: str, *, mutating: bool = False) -> None:
        info = MUTATING if mutating else VALIDATING
        await self.api.delete(info, "", name, {}, self.admin)

    async def create_pdb(
        self,
        name: str,
        namespace: str,
        selector: JSON,
        *,
        min_available: int | str | None = None,
        max_unavailable: int | str | None = None,
    ) -> JSON:
        spec: JSON = {"selector": selector}
        if min_available is not None:
            spec["minAvailable"] = min_available
        if max_unavailable is not None:
            spec["maxUnavailable"] = max_unavailable
        return await self.api.create(
            PDBS,
            namespace,
            {"metadata": {"name": name, "namespace": namespace}, "spec": spec},
            self.admin,
        )

    # ----------------------------------------------------------------- actions

    def stop_heartbeat(self, *nodes: str) -> None:
        for node in nodes:
            self.controllers.stop_heartbeat(node)

    def resume_heartbeat(self, *nodes: str) -> None:
        for node in nodes:
            self.controllers.resume_heartbeat(node)

    async def evict_pod(
        self,
        namespace: str,
        name: str,
        *,
        user: str = "admin",
        dry_run: bool = False,
        grace_period: int | None = None,
        api_version: str = "policy/v1",
        delete_options: JSON | None = None,
    ) -> tuple[int, JSON]:
        """POST pods/<name>/eviction; returns (HTTP code, Status) without raising."""
        body: JSON = {
            "apiVersion": api_version,
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        if delete_options is not None:
            body["deleteOptions"] = dict(delete_options)
        if grace_period is not None:
            body["deleteOptions"] = {
                **body.get("deleteOptions", {}),
                "gracePeriodSeconds": grace_period,
            }
        try:
            return 201, await self.api.evict(
                namespace, name, body, self.user(user), dry_run=dry_run
            )
        except ApiError as err:
            return err.code, err.status

    async def delete_pod(
        self, namespace: str, name: str, *, user: str = "admin", grace_period: int | None = None
    ) -> tuple[int, JSON]:
        options: JSON = {}
        if grace_period is not None:
            options["gracePeriodSeconds"] = grace_period
        try:
            return 200, await self.api.delete(PODS, namespace, name, options, self.user(user))
        except ApiError as err:
            return err.code, err.status

    async def delete_node(self, name: str, *, user: str = "admin") -> tuple[int, JSON]:
        self.controllers.alive[name] = False
        try:
            return 200, await self.api.delete(NODES, "", name, {}, self.user(user))
        except ApiError as err:
            return err.code, err.status

    async def cordon(self, node: str, *, user: str = "admin", unschedulable: bool = True) -> JSON:
        return await self.api.patch(
            NODES,
            "",
            node,
            "application/strategic-merge-patch+json",
            {"spec": {"unschedulable": unschedulable or None}},
            self.user(user),
        )

    async def drain(self, node: str, *, user: str = "admin", within: float = 60.0) -> bool:
        """kubectl drain: cordon, then evict every pod of the node (DaemonSet pods skipped),
        retrying 429 answers every `drain_retry_interval`; True when the node is empty."""
        self.timeline.add(tl.STEP, user, f"drain {node}", node=node)
        await self.cordon(node, user=user)
        deadline = time.monotonic() + within
        interval = self.config.timings.drain_retry_interval

        async def evict(pod: JSON) -> None:
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            uid = pod["metadata"]["uid"]
            while time.monotonic() < deadline:
                current = self.store.get("pods", ns, name)
                if current is None or current["metadata"]["uid"] != uid:
                    return
                if current["metadata"].get("deletionTimestamp"):
                    await asyncio.sleep(min(interval, 0.2))
                    continue
                code, _ = await self.evict_pod(ns, name, user=user, delete_options={})
                if code in (201, 404):
                    if code == 404:
                        return
                    continue
                await asyncio.sleep(interval)

        pods = [
            p
            for p in self.store.pods_on_node(node)
            if not any(
                o.get("kind") == "DaemonSet" for o in p["metadata"].get("ownerReferences") or []
            )
        ]
        await asyncio.gather(*(evict(p) for p in pods))
        return not any(
            self.store.get("pods", p["metadata"]["namespace"], p["metadata"]["name"]) is not None
            for p in pods
        )

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        within: float = 10.0,
        interval: float = 0.02,
        message: str = "condition",
    ) -> Any:
        """Poll `predicate` until it returns a truthy value; raises TimeoutError."""
        deadline = time.monotonic() + within
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {within}s waiting for {message}")
            await asyncio.sleep(interval)

    async def wait_pods_running(self, within: float = 10.0) -> None:
        def all_running() -> bool:
            return all(
                (p.get("status") or {}).get("phase") == "Running"
                for p in self.store.iter("pods")
                if (p.get("spec") or {}).get("nodeName")
            )

        await self.wait_for(all_running, within, message="pods Running")
