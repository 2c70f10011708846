"""Serving certificate hot reload (after controller-runtime's certwatcher).

The listening `ssl.SSLContext` never has a certificate loaded into it after start-up. Instead,
its `sni_callback` (run by OpenSSL on every ClientHello, with `server_name=None` when the client
sends no SNI, e.g. kube-apiserver calling a Service IP) points the new connection at the current
context. A reload builds a complete scratch context from the new files and only swaps the
reference when `load_cert_chain` succeeded, so:

* established connections keep their TLS session and in-flight requests finish;
* a broken, mismatched or half-written pair is never installed: the old one stays served and
  the next poll tries again;
* there is no window in which a handshake could see a context without a certificate.

Files are polled (not watched with inotify) and compared by content hash: a Kubernetes
Secret volume updates by swapping the `..data` symlink, which leaves the visible paths' own
metadata untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge

from kubeguard.certs import TLS_CERT_FILE, TLS_KEY_FILE

log = logging.getLogger("kubeguard.server.tls")


class CertificateError(RuntimeError):
    """The serving certificate pair cannot be used; the message names the files and why."""


def new_server_context() -> ssl.SSLContext:
    """A server context with kubeguard's TLS settings and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


@dataclass(frozen=True)
class LoadedPair:
    """A validated certificate pair, ready to serve."""

    context: ssl.SSLContext
    digest: str
    serial: int
    not_after: float  # unix timestamp
    subject: str


def _digest(cert: bytes, key: bytes) -> str:
    h = hashlib.sha256()
    h.update(len(cert).to_bytes(8, "big"))
    h.update(cert)
    h.update(key)
    return h.hexdigest()


class CertificateReloader:
    """Owns the serving certificate: initial load, polling, validation, swap and metrics."""

    def __init__(
        self,
        cert_dir: Path,
        registry: CollectorRegistry,
        *,
        interval: float = 5.0,
        cert_file: str = TLS_CERT_FILE,
        key_file: str = TLS_KEY_FILE,
    ) -> None:
        self.cert_path = cert_dir / cert_file
        self.key_path = cert_dir / key_file
        self.interval = interval
        self._current: LoadedPair | None = None
        self._listening: ssl.SSLContext | None = None
        self._last_failed_digest: str | None = None
        self._reloads = Counter(
            "cert_reloads_total",
            "Serving certificate loads, by result (success or error).",
            ["result"],
            registry=registry,
        )
        self._expiry = Gauge(
            "serving_cert_expiry_timestamp_seconds",
            "notAfter of the serving certificate currently served, as a unix timestamp.",
            registry=registry,
        )
        for result in ("success", "error"):
            self._reloads.labels(result)

    # --- public ----------------------------------------------------------------------------------

    @property
    def current(self) -> LoadedPair:
        if self._current is None:
            raise RuntimeError("no certificate loaded yet; call load_initial() first")
        return self._current

    def load_initial(self) -> ssl.SSLContext:
        """Load the pair at start-up and return the listening context, or raise
        CertificateError (start-up fails: there is no old pair to fall back on)."""
        try:
            pair = self._load()
        except CertificateError:
            self._reloads.labels("error").inc()
            raise
        self._install(pair)
        listening = pair.context
        listening.sni_callback = self._on_client_hello
        self._listening = listening
        log.info(
            "serving certificate loaded",
            extra=self._fields(pair),
        )
        return listening

    def check(self) -> bool:
        """One poll: reload when the files changed. True when a new pair is now served.

        Never raises: a failure is logged (once per distinct bad content) and counted, and the
        current pair keeps being served.
        """
        return self._commit(self._stage())

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `interval` seconds until `stop` is set. File reads and parsing run in a
        worker thread; only the reference swap happens on the event loop."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            if stop.is_set():
                return
            try:
                staged = await asyncio.to_thread(self._stage)
            except Exception:  # never let the reloader die; the old pair stays served
                log.exception("certificate reload check failed unexpectedly")
                continue
            self._commit(staged)

    # --- internals -------------------------------------------------------------------------------

    def _on_client_hello(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        current = self._current
        if current is not None and current.context is not ctx:
            conn.context = current.context

    def _stage(self) -> tuple[str, LoadedPair | str | None]:
        """Read and validate (off the loop). Returns (digest, pair | error | None=unchanged).

        The two files are read one after the other, so an update landing in between yields a
        mismatched pair; when the content moved on since the failed attempt, try again at once
        instead of reporting an error that is only an artefact of the timing.
        """
        digest = ""
        outcome: LoadedPair | str | None = None
        for _ in range(3):
            try:
                cert, key = self._read()
            except CertificateError as exc:
                return "", str(exc)
            fresh = _digest(cert, key)
            if fresh == digest:
                break  # unchanged since the failed attempt: a genuinely bad pair
            digest = fresh
            current = self._current
            if current is not None and digest == current.digest:
                return digest, None
            try:
                return digest, self._validate(cert, key, digest)
            except CertificateError as exc:
                outcome = str(exc)
            time.sleep(0.05)
        return digest, outcome

    def _commit(self, staged: tuple[str, LoadedPair | str | None]) -> bool:
        digest, outcome = staged
        if outcome is None:
            self._last_failed_digest = None
            return False
        if isinstance(outcome, str):
            self._failed(digest or None, outcome)
            return False
        previous = self._current
        self._install(outcome)
        log.info(
            "serving certificate reloaded",
            extra={
                **self._fields(outcome),
                "previous_serial": f"{previous.serial:x}" if previous else "",
            },
        )
        return True

    def _read(self) -> tuple[bytes, bytes]:
        try:
            return self.cert_path.read_bytes(), self.key_path.read_bytes()
        except OSError as exc:
            raise CertificateError(
                f"cannot read the serving certificate pair {self.cert_path} / {self.key_path}: "
                f"{exc.strerror or exc}"
            ) from None

    def _load(self) -> LoadedPair:
        cert, key = self._read()
        return self._validate(cert, key, _digest(cert, key))

    def _validate(self, cert: bytes, key: bytes, digest: str) -> LoadedPair:
        """Load the pair into a scratch context; it must be exactly the content hashed."""
        try:
            certs = x509.load_pem_x509_certificates(cert)
        except ValueError as exc:
            raise CertificateError(f"{self.cert_path} is not a PEM certificate: {exc}") from None
        leaf = certs[0]
        ctx = new_server_context()
        try:
            # load_cert_chain only takes paths; re-read afterwards to make sure the files did
            # not change between hashing and loading (a half-finished update).
            ctx.load_cert_chain(self.cert_path, self.key_path)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise CertificateError(
                f"cannot load {self.cert_path} with {self.key_path}: {_ssl_reason(exc)}"
            ) from None
        if self._read() != (cert, key):
            raise CertificateError(
                f"{self.cert_path} / {self.key_path} changed while being loaded; retrying"
            )
        return LoadedPair(
            context=ctx,
            digest=digest,
            serial=leaf.serial_number,
            not_after=leaf.not_valid_after_utc.timestamp(),
            subject=leaf.subject.rfc4514_string(),
        )

    def _install(self, pair: LoadedPair) -> None:
        self._current = pair
        self._last_failed_digest = None
        self._reloads.labels("success").inc()
        self._expiry.set(pair.not_after)

    def _failed(self, digest: str | None, reason: str) -> None:
        # Count and log once per distinct bad content, not on every poll.
        key = digest or reason
        if key == self._last_failed_digest:
            return
        self._last_failed_digest = key
        self._reloads.labels("error").inc()
        serial = f"{self._current.serial:x}" if self._current else ""
        log.error(
            "serving certificate reload failed; keeping the current certificate",
            extra={"error": reason, "serial": serial},
        )

    def _fields(self, pair: LoadedPair) -> dict[str, str | float]:
        return {
            "cert_file": str(self.cert_path),
            "serial": f"{pair.serial:x}",
            "subject": pair.subject,
            "not_after": pair.not_after,
        }


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        hint = {
            "KEY_VALUES_MISMATCH": "the private key does not belong to the certificate",
            "NO_START_LINE": "a file is empty or not PEM",
            "PEM_LIB": "a file is empty or not valid PEM",
        }.get(exc.reason, "")
        return f"{exc.reason}" + (f" ({hint})" if hint else "")
    return str(exc)
