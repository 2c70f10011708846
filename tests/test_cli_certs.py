"""`kubeguard certs`: a CA and a serving pair with exactly the requested SANs."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kubeguard.cli import cli


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_writes_a_ca_and_a_pair_with_exactly_the_sans(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = CliRunner().invoke(
        cli,
        ["certs", "--out", str(out), "--dns", "a", "--dns", "kubeguard.kubeguard-system.svc",
         "--ip", "127.0.0.1", "--ip", "::1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    ca, leaf = _cert(out / "ca.crt"), _cert(out / "tls.crt")
    assert f"serial {leaf.serial_number:x}" in result.output

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a", "kubeguard.kubeguard-system.svc"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert len(list(san)) == 4
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert stat.S_IMODE((out / "tls.key").stat().st_mode) == 0o600

    # The pair loads as a server certificate and a client trusting ca.crt accepts it.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(out / "tls.crt", out / "tls.key")
    client = ssl.create_default_context(cafile=str(out / "ca.crt"))
    assert client.cert_store_stats()["x509_ca"] == 1


def test_days_sets_the_validity(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["certs", "--out", str(tmp_path), "--ip", "10.0.0.1", "--days", "2"]
    )
    assert result.exit_code == 0, result.output
    leaf = _cert(tmp_path / "tls.crt")
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 2 * 86400 <= lifetime.total_seconds() <= 2 * 86400 + 600


def test_bad_ip_fails_cleanly_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = CliRunner().invoke(
        cli, ["certs", "--out", str(out), "--dns", "a", "--ip", "300.1.2.3"]
    )
    assert result.exit_code == 2
    assert "not an IP address: '300.1.2.3'" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_no_san_fails_cleanly(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["certs", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "needs at least one --dns name or --ip address" in result.output
