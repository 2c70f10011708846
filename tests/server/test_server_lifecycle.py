"""Start-up and shutdown of the real process: graceful SIGTERM, feature gates, configuration
errors (exit 2 with a clear message), --local mode, and the `kubeguard serve` CLI itself."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from serverproc import (
    DECISION,
    Launch,
    ServerProcess,
    clean_env,
    client_context,
    fixture_review,
)

from kubeguard.certs import KeyPair

UPDATE = "pod-update-label-by-user.json"
JSON = {"Content-Type": "application/json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _failed_start(proc: ServerProcess) -> str:
    assert proc.wait(timeout=30) == 2
    return proc.output()


def test_sigterm_finishes_in_flight_requests_then_runs_shutdown_hooks(
    launch: Launch, ca: KeyPair
) -> None:
    server = launch()
    ctx = client_context(ca)
    result: dict[str, Any] = {}
    body = json.dumps(
        fixture_review(UPDATE, {DECISION: "slow", "test.kubeguard.io/sleep": "1.5"})
    ).encode()

    def slow() -> None:
        try:
            with httpx2.Client(base_url=server.url, verify=ctx, timeout=15) as client:
                resp = client.post("/validate", content=body, headers=JSON)
                result["status"] = resp.status_code
                result["allowed"] = resp.json()["response"]["allowed"]
        except Exception as exc:
            result["error"] = repr(exc)

    with httpx2.Client(base_url=server.url, verify=ctx, timeout=5) as idle:
        assert idle.get("/healthz").status_code == 200  # an idle keep-alive connection
        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)  # the slow request is now being handled
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(lambda r: r.get("msg") == "received SIGTERM, shutting down gracefully")
        # Stop accepting: new connections are refused while the request is still in flight.
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        assert thread.is_alive(), "the slow request should still be in flight"
        thread.join(timeout=15)
    assert result == {"status": 200, "allowed": True}
    assert server.wait(timeout=20) == 0
    assert (server.state_dir / "shutdown-hook-ran").read_text() == "yes"
    stopped = server.wait_for(lambda r: r.get("msg") == "kubeguard stopped")
    assert stopped["exit_code"] == 0
    assert not any(r.get("level") == "error" for r in server.records), server.output()
    assert not any("color_message" in r for r in server.records)  # no ANSI codes in JSON logs


def test_sigint_stops_cleanly(launch: Launch) -> None:
    server = launch()
    assert server.terminate(signal.SIGINT) == 0
    assert (server.state_dir / "shutdown-hook-ran").exists()


def test_feature_gates_enable_and_disable_plugins(launch: Launch, ca: KeyPair) -> None:
    server = launch(FEATURE_GATES="ServerTest=false, ServerTestDisabled=TRUE")
    with httpx2.Client(base_url=server.url, verify=client_context(ca)) as client:
        review = fixture_review(UPDATE, {DECISION: "deny"})
        resp = client.post("/disabled", content=json.dumps(review).encode(), headers=JSON)
        assert resp.json()["response"]["allowed"] is False
        assert client.post("/validate", content=b"{}", headers=JSON).status_code == 404
    line = server.wait_for(lambda r: r.get("msg") == "kubeguard starting")
    assert line["feature_gates"] == "ServerTest=false,ServerTestDisabled=true"


@pytest.mark.parametrize(
    ("gates", "message"),
    [
        (
            "Bogus=true",
            "--feature-gates (FEATURE_GATES): unknown feature gate(s) Bogus; known gates: "
            "ServerTest, ServerTestDisabled",
        ),
        ("ServerTest=maybe", "invalid value 'maybe' for feature gate ServerTest"),
        ("ServerTest", "invalid feature gate 'ServerTest': expected Name=true or Name=false"),
    ],
)
def test_bad_feature_gates_exit_2_with_the_reason(launch: Launch, gates: str, message: str) -> None:
    proc = launch(FEATURE_GATES=gates, wait=False)
    assert message in _failed_start(proc)


def test_missing_kubeconfig_is_a_start_up_error(launch: Launch, tmp_path: Path) -> None:
    proc = launch(KUBECONFIG=str(tmp_path / "nope.yaml"), wait=False)
    out = _failed_start(proc)
    assert f"kubeconfig {tmp_path / 'nope.yaml'} does not exist" in out
    assert "--local" in out


def test_local_mode_without_kubeconfig_warns_and_serves_plain_http(
    launch: Launch, tmp_path: Path
) -> None:
    server = launch(local=True, KUBECONFIG="", HOME=str(tmp_path))
    warning = server.wait_for(lambda r: r.get("msg", "").startswith("no Kubernetes configuration"))
    assert warning["level"] == "warning"
    assert server.url.startswith("http://")
    review = fixture_review(UPDATE)
    resp = httpx2.post(
        server.url + "/validate?timeout=5s", content=json.dumps(review).encode(), headers=JSON
    )
    assert resp.json()["response"] == {"uid": review["request"]["uid"], "allowed": True}
    assert server.terminate() == 0


def test_missing_certificate_is_a_start_up_error(launch: Launch, tmp_path: Path) -> None:
    proc = launch(CERT_DIR=str(tmp_path / "empty"), wait=False)
    out = _failed_start(proc)
    assert f"{tmp_path / 'empty' / 'tls.crt'}" in out
    assert "kubeguard certs" in out


def test_port_in_use_is_a_start_up_error(launch: Launch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = launch(port=port, wait=False)
        out = _failed_start(proc)
    assert f"cannot listen on 127.0.0.1:{port}" in out


def test_kubeguard_serve_cli_local_mode(tmp_path: Path) -> None:
    port = _free_port()
    env = clean_env(HOME=str(tmp_path), WEBHOOK_PORT=str(port))
    cmd = [sys.executable, "-m", "kubeguard.cli", "serve", "--local", "--bind-address", "127.0.0.1"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx2.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert resp.status_code == 200
        # The default plugins need a cluster: not ready without one, and /readyz says why.
        ready = httpx2.get(f"http://127.0.0.1:{port}/readyz")
        assert (ready.status_code == 200) is ready.json()["ready"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    listening = next(r for r in lines if r["msg"] == "listening")
    assert (listening["port"], listening["scheme"]) == (port, "http")


def test_kubeguard_serve_cli_rejects_unknown_gate(tmp_path: Path) -> None:
    env = clean_env(HOME=str(tmp_path))
    cmd = [
        sys.executable,
        "-m",
        "kubeguard.cli",
        "serve",
        "--local",
        "--feature-gates",
        "Nope=true",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "configuration error: --feature-gates (FEATURE_GATES): unknown feature gate(s) Nope" in (
        done.stderr
    )
