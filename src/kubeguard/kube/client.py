"""Kubernetes API access: a lightkube AsyncClient for typed calls and a raw httpx2 client
(same base URL, TLS and credentials) for streaming watches decoded straight into msgspec views.

Configuration order: `--kubeconfig`/`KUBECONFIG`, then the in-cluster service account, then
`~/.kube/config`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx2
import lightkube
from lightkube.config import client_adapter
from lightkube.config.kubeconfig import KubeConfig, SingleConfig

log = logging.getLogger("kubeguard.kube")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(RuntimeError):
    """No usable Kubernetes configuration; the message says what was tried."""


def load_config(kubeconfig: Path | None = None, context: str | None = None) -> SingleConfig:
    tried: list[str] = []
    if kubeconfig is not None:
        if not kubeconfig.exists():
            raise KubeConfigError(f"kubeconfig {kubeconfig} does not exist")
        cfg = KubeConfig.from_file(kubeconfig).get(context)
        if cfg is None:
            raise KubeConfigError(f"kubeconfig {kubeconfig} has no usable context")
        return cfg
    tried.append("--kubeconfig/KUBECONFIG (not set)")
    if (SERVICE_ACCOUNT_DIR / "token").exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = KubeConfig.from_service_account(SERVICE_ACCOUNT_DIR).get()
        if cfg is not None:
            return cfg
    tried.append("in-cluster service account (not found)")
    home = Path.home() / ".kube" / "config"
    if home.exists():
        cfg = KubeConfig.from_file(home).get(context)
        if cfg is not None:
            return cfg
    tried.append(f"{home} (not found)")
    raise KubeConfigError("no Kubernetes configuration found; tried " + ", ".join(tried))


class KubeClient:
    """Both clients over one configuration. Close with `await client.aclose()`."""

    def __init__(self, config: SingleConfig, *, timeout: float = 10.0) -> None:
        self.config = config
        self.lightkube = lightkube.AsyncClient(config=config, timeout=httpx2.Timeout(timeout))
        params = client_adapter.ConnectionParams(timeout=httpx2.Timeout(timeout, read=None))
        # read=None: watches stream for minutes; each request sets its own server timeout.
        # No connection cap: every HTTP/1.1 watch holds a connection (one per NotReady node in
        # the pod index), and httpx's default cap of 100 would stall all other requests.
        self.http: httpx2.AsyncClient = httpx2.AsyncClient(
            **params.httpx_params(config),
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=20),
        )

    @classmethod
    def from_path(cls, kubeconfig: Path | None = None) -> KubeClient:
        return cls(load_config(kubeconfig))

    @property
    def server(self) -> str:
        return str(self.config.cluster.server)

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.lightkube.close()
