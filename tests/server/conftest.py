"""Fixtures of the server tests: a CA, and launcher processes serving HTTPS on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from serverproc import (
    KUBECONFIG,
    Launch,
    SecretVolume,
    ServerProcess,
    clean_env,
    client_context,
    make_ca,
    new_pair,
)

from kubeguard.certs import KeyPair


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return make_ca()


def _launch(base: Path, ca: KeyPair, started: list[ServerProcess]) -> Launch:
    def launch(
        *, local: bool = False, port: int | None = 0, wait: bool = True, **env: str
    ) -> ServerProcess:
        n = len(started)
        certs = SecretVolume(base / f"certs-{n}")
        certs.write_pair(new_pair(ca))
        kubeconfig = base / f"kubeconfig-{n}"
        kubeconfig.write_text(KUBECONFIG)
        settings = {
            "CERT_DIR": str(certs.root),
            "KUBECONFIG": str(kubeconfig),
            "WEBHOOK_BIND_ADDRESS": "127.0.0.1",
            "CERT_RELOAD_INTERVAL": "0.1s",
            "LOG_FORMAT": "json",
        }
        if local:
            settings["KUBEGUARD_LOCAL"] = "true"
        settings.update(env)
        proc = ServerProcess(base / f"state-{n}", clean_env(**settings), port=port)
        proc.certs = certs
        if local:
            proc.scheme = "http"
        started.append(proc)
        if wait:
            _ = proc.port
        return proc

    return launch


@pytest.fixture
def launch(tmp_path: Path, ca: KeyPair) -> Iterator[Launch]:
    """Start a launcher process per call; all are killed at the end of the test."""
    started: list[ServerProcess] = []
    yield _launch(tmp_path, ca, started)
    for proc in started:
        proc.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ca: KeyPair) -> Iterator[ServerProcess]:
    """One shared server for the tests that do not change its state."""
    started: list[ServerProcess] = []
    proc = _launch(tmp_path_factory.mktemp("server"), ca, started)()
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def client(server: ServerProcess, ca: KeyPair) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=server.url, verify=client_context(ca), timeout=10) as c:
        yield c
