"""Serving certificate hot reload, through the real server process (uvloop, TLS).

The certificate directory is laid out like a mounted Kubernetes Secret and updated the way the
kubelet does it: a new timestamped directory and an atomic rename of the `..data` symlink.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import httpx2
from cryptography import x509
from serverproc import (
    DECISION,
    Launch,
    SecretVolume,
    ServerProcess,
    client_context,
    fixture_review,
    new_pair,
    peer_serial,
)

from kubeguard.certs import KeyPair

UPDATE = "pod-update-label-by-user.json"
JSON = {"Content-Type": "application/json"}


def _body(decision: str = "allow", sleep: str | None = None) -> bytes:
    labels = {DECISION: decision}
    if sleep:
        labels["test.kubeguard.io/sleep"] = sleep
    return json.dumps(fixture_review(UPDATE, labels)).encode()


def _serial_of(resp: httpx2.Response) -> int:
    ssl_object = resp.extensions["network_stream"].get_extra_info("ssl_object")
    der = ssl_object.getpeercert(True)  # a C-level _SSLSocket: positional only
    return x509.load_der_x509_certificate(der).serial_number


def _metric(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _wait_reloaded(server: ServerProcess, serial: int) -> dict[str, Any]:
    return server.wait_for(
        lambda r: (
            r.get("msg") == "serving certificate reloaded" and r.get("serial") == f"{serial:x}"
        )
    )


def _volume(server: ServerProcess) -> SecretVolume:
    assert server.certs is not None
    return server.certs


def test_initial_certificate_is_served_with_and_without_sni(launch: Launch, ca: KeyPair) -> None:
    server = launch()
    loaded = server.wait_for(lambda r: r.get("msg") == "serving certificate loaded")
    serial = int(loaded["serial"], 16)
    assert peer_serial(server.port, ca, "127.0.0.1") == serial  # IP: no SNI sent
    assert peer_serial(server.port, ca, "localhost") == serial  # SNI sent


def test_certificate_swap_during_request_stream_fails_no_request(
    launch: Launch, ca: KeyPair
) -> None:
    server = launch()
    old_serial = peer_serial(server.port, ca)
    ctx = client_context(ca)
    stop = threading.Event()
    swapped = threading.Event()
    failures: list[str] = []
    counts = {"keepalive": 0, "fresh_before": 0, "fresh_after": 0}
    fresh_serials: list[tuple[bool, int]] = []  # (after the swap was observed, serial)

    def keepalive_client() -> None:
        with httpx2.Client(base_url=server.url, verify=ctx, timeout=10) as client:
            while not stop.is_set():
                try:
                    resp = client.post("/validate?timeout=5s", content=_body(), headers=JSON)
                    if resp.status_code != 200 or resp.json()["response"]["allowed"] is not True:
                        failures.append(f"keepalive: {resp.status_code} {resp.text[:200]}")
                    counts["keepalive"] += 1
                except Exception as exc:
                    failures.append(f"keepalive: {exc!r}")

    def fresh_connection_client() -> None:
        while not stop.is_set():
            after = swapped.is_set()
            try:
                # A new client per request: every request is a new TLS handshake.
                with httpx2.Client(base_url=server.url, verify=ctx, timeout=10) as client:
                    resp = client.post("/validate", content=_body(), headers=JSON)
                    if resp.status_code != 200:
                        failures.append(f"fresh: {resp.status_code} {resp.text[:200]}")
                    fresh_serials.append((after, _serial_of(resp)))
                    counts["fresh_after" if after else "fresh_before"] += 1
            except Exception as exc:
                failures.append(f"fresh: {exc!r}")

    in_flight: dict[str, Any] = {}

    def slow_request() -> None:
        # Sent before the swap on the old certificate, answered after it.
        with httpx2.Client(base_url=server.url, verify=ctx, timeout=10) as client:
            try:
                resp = client.post("/validate", content=_body("slow", "1.5"), headers=JSON)
                in_flight["status"] = resp.status_code
                in_flight["serial"] = _serial_of(resp)
                in_flight["allowed"] = resp.json()["response"]["allowed"]
            except Exception as exc:
                failures.append(f"slow: {exc!r}")

    threads = [
        threading.Thread(target=keepalive_client),
        threading.Thread(target=fresh_connection_client),
        threading.Thread(target=slow_request),
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.8)
        new = new_pair(ca)
        _volume(server).write_pair(new)
        _wait_reloaded(server, new.serial)
        swapped.set()
        time.sleep(1.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)

    assert failures == []
    assert counts["keepalive"] > 0
    assert counts["fresh_before"] > 0
    assert counts["fresh_after"] > 0
    assert in_flight == {"status": 200, "serial": old_serial, "allowed": True}
    before = {s for after, s in fresh_serials if not after}
    after = {s for after, s in fresh_serials if after}
    assert old_serial in before
    assert after == {new.serial}, "a handshake after the reload got the old certificate"
    assert peer_serial(server.port, ca, "127.0.0.1") == new.serial
    assert peer_serial(server.port, ca, "localhost") == new.serial
    with httpx2.Client(base_url=server.url, verify=ctx) as client:
        metrics = client.get("/metrics").text
    assert _metric(metrics, 'cert_reloads_total{result="success"}') == 2
    assert _metric(metrics, 'cert_reloads_total{result="error"}') == 0
    assert _metric(metrics, "serving_cert_expiry_timestamp_seconds") == (new.not_after.timestamp())


def test_broken_new_pair_keeps_the_old_one_and_counts_errors(launch: Launch, ca: KeyPair) -> None:
    server = launch()
    volume = _volume(server)
    old_serial = peer_serial(server.port, ca)
    ctx = client_context(ca)

    def errors() -> float:
        with httpx2.Client(base_url=server.url, verify=ctx) as client:
            return _metric(client.get("/metrics").text, 'cert_reloads_total{result="error"}')

    def wait_errors(n: int) -> None:
        deadline = time.monotonic() + 10
        while errors() < n:
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.05)

    # 1. The key of another pair: load_cert_chain fails with KEY_VALUES_MISMATCH.
    a, b = new_pair(ca), new_pair(ca)
    volume.write({"tls.crt": a.cert_pem, "tls.key": b.key_pem})
    wait_errors(1)
    failed = server.wait_for(lambda r: r.get("msg", "").startswith("serving certificate reload"))
    assert failed["level"] == "error"
    assert "KEY_VALUES_MISMATCH" in failed["error"]
    assert failed["serial"] == f"{old_serial:x}"
    assert peer_serial(server.port, ca) == old_serial

    # 2. A half-written certificate.
    volume.write({"tls.crt": a.cert_pem[: len(a.cert_pem) // 2], "tls.key": a.key_pem})
    wait_errors(2)
    assert peer_serial(server.port, ca) == old_serial

    # 3. Garbage, then an empty key.
    volume.write({"tls.crt": b"not a certificate\n", "tls.key": a.key_pem})
    wait_errors(3)
    volume.write({"tls.crt": a.cert_pem, "tls.key": b""})
    wait_errors(4)
    assert peer_serial(server.port, ca) == old_serial

    # The same broken content is not counted again on every poll.
    time.sleep(0.5)
    assert errors() == 4

    # Requests are served throughout.
    with httpx2.Client(base_url=server.url, verify=ctx) as client:
        resp = client.post("/validate", content=_body(), headers=JSON)
        assert resp.json()["response"]["allowed"] is True

    # 4. A good pair is picked up.
    volume.write_pair(a)
    _wait_reloaded(server, a.serial)
    assert peer_serial(server.port, ca) == a.serial
    assert errors() == 4


def test_plain_file_replacement_is_detected(launch: Launch, ca: KeyPair) -> None:
    """`kubeguard certs --out` over the live directory (os.replace of regular files)."""
    from kubeguard.certs import write_cert_dir

    server = launch()
    root = _volume(server).root
    for name in ("tls.crt", "tls.key"):
        (root / name).unlink()
    pair = new_pair(ca)
    write_cert_dir(root, ca, pair)
    _wait_reloaded(server, pair.serial)
    assert peer_serial(server.port, ca) == pair.serial
