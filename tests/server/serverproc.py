"""Helpers for the server tests: the launcher process, its JSON log, certificates on disk laid
out like a Kubernetes Secret volume, and peer-certificate inspection."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from kubeguard.certs import KeyPair, generate_ca, generate_serving
from kubeguard.config import OPTIONS

LAUNCHER = Path(__file__).with_name("launcher.py")
DECISION = "test.kubeguard.io/decision"  # the launcher's test handler decides by this label
FIXTURES = Path(
    os.environ.get(
        "KUBEGUARD_FIXTURES", Path(__file__).parents[2] / ".." / "shared" / "fixtures" / "k8s-1.36"
    )
)

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: unreachable
  cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}
users:
- name: test
  user: {token: not-a-real-token}
contexts:
- name: test
  context: {cluster: unreachable, user: test}
current-context: test
"""


def fixture_review(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A captured AdmissionReview with a fresh uid and extra labels on its object (or
    oldObject, for DELETE)."""
    review: dict[str, Any] = json.loads((FIXTURES / "admission" / name).read_text())
    req = review["request"]
    req["uid"] = str(uuid.uuid4())
    target = req.get("object") or req.get("oldObject")
    if labels:
        target.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    return review


class SecretVolume:
    """A directory laid out like a mounted Kubernetes Secret: the visible `tls.crt`/`tls.key`
    are symlinks into `..data`, itself a symlink to a timestamped directory. An update writes a
    new timestamped directory and atomically renames a new `..data` link over the old one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir(parents=True, exist_ok=True)

    def write(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        version = self.root / f"..2026_11_22_00_00_{self.generation:02d}.{os.getpid()}"
        version.mkdir()
        for name, data in files.items():
            (version / name).write_bytes(data)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        os.replace(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if old is not None and old != version:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    def write_pair(self, pair: KeyPair) -> None:
        self.write({"tls.crt": pair.cert_pem, "tls.key": pair.key_pem})


def new_pair(ca: KeyPair) -> KeyPair:
    return generate_serving(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])


def make_ca() -> KeyPair:
    return generate_ca("kubeguard-test-ca")


def client_context(ca: KeyPair) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    return ctx


def peer_serial(port: int, ca: KeyPair, server_hostname: str = "127.0.0.1") -> int:
    """Serial of the certificate the server presents on a new connection. With an IP address
    as server_hostname Python sends no SNI; with "localhost" it does."""
    ctx = client_context(ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment without any kubeguard setting, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if k not in {o.env for o in OPTIONS}}
    env.update(overrides)
    return env


class ServerProcess:
    """The launcher in a subprocess; its stderr JSON log lines are collected by a thread."""

    def __init__(self, state_dir: Path, env: dict[str, str], *, port: int | None = 0) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        args = [sys.executable, str(LAUNCHER), str(state_dir)]
        if port is not None:
            args += ["--port", str(port)]
        self.proc = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._port: int | None = None
        self.certs: SecretVolume | None = None
        self.scheme = "https"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    self.records.append(record)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first log record matching `predicate`, waiting for it if necessary."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self.records:
                    if predicate(record):
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        "log record not found; server output:\n" + "".join(self.lines[-40:])
                    )
                self._cond.wait(min(remaining, 0.2))

    def messages(self, msg: str) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.records if r.get("msg") == msg]

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = int(self.wait_for(lambda r: r.get("msg") == "listening")["port"])
        return self._port

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def wait(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


Launch = Callable[..., ServerProcess]
