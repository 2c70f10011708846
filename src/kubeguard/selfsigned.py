"""Self-signed certificate mode (`kubeguard serve --self-signed`), for clusters without
cert-manager.

At start-up every replica makes sure the Secret `settings.cert_secret` holds a valid CA and a
serving certificate for the Service's DNS names, writes them to `settings.cert_dir` (the server
hot-reloads from there) and patches the caBundle of kubeguard's own webhook configurations when
it differs — nobody ever hand-writes a caBundle (seed 002). A background task re-reads the
Secret, renews the serving certificate at 2/3 of its lifetime and keeps the caBundle in place.

Replicas share the Secret with optimistic concurrency: the first `create` wins (the others get
409 AlreadyExists and use what it stored); a renewal is an `update` with the read
resourceVersion, so when two replicas renew at once one gets 409 Conflict, re-reads and uses
the winner's certificate. The others pick the change up on their next check.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from kubeguard import certs
from kubeguard.config import Settings
from kubeguard.kube.rest import KubeApiError, call, resource_path
from kubeguard.runtime import Runtime

log = logging.getLogger("kubeguard.selfsigned")

CA_KEY_FILE = "ca.key"  # Secret key holding the CA's private key (never written to disk)
SERVING_DAYS = 90
CA_DAYS = 3650
RENEW_AT = 2 / 3  # of the serving certificate's lifetime
CHECK_INTERVAL = 60.0  # seconds between Secret / caBundle checks
JSON_PATCH = "application/json-patch+json"
TASK_NAME = "self-signed-certificates"
READINESS_NAME = "self-signed-certificates"

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SelfSignedError(RuntimeError):
    """The certificate Secret or a webhook configuration could not be read or written."""


@dataclass(frozen=True)
class Bundle:
    """The CA and serving pair as stored in the Secret, with its resourceVersion."""

    ca: certs.KeyPair
    serving: certs.KeyPair
    resource_version: str = ""

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.ca.cert_pem).decode()


def problem(bundle: Bundle, names: list[str], now: dt.datetime) -> str | None:
    """Why `bundle` must be replaced (its serving pair, or all of it), or None if usable."""
    try:
        ca = bundle.ca.certificate
        cert = bundle.serving.certificate
    except ValueError as exc:
        return f"unreadable certificate: {exc}"
    if ca.not_valid_after_utc - now < dt.timedelta(days=2 * SERVING_DAYS):
        return "the CA expires soon"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "the serving certificate is not signed by the CA"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        present = set(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        present = set()
    if not set(names) <= present:
        return f"the serving certificate does not cover {sorted(set(names) - present)}"
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now >= start + (end - start) * RENEW_AT:
        return f"the serving certificate is due for renewal (expires {end:%Y-%m-%dT%H:%M:%SZ})"
    if not _key_matches(bundle.serving):
        return "the serving key does not match its certificate"
    return None


def _key_matches(pair: certs.KeyPair) -> bool:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
    except ValueError:
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return False
    return bool(key.public_key() == pair.certificate.public_key())


def renew(previous: Bundle | None, names: list[str], now: dt.datetime) -> Bundle:
    """A new serving pair, signed by the previous CA when that CA is still good (so the
    caBundle does not change), else by a new CA."""
    ca = previous.ca if previous is not None else None
    if ca is not None:
        try:
            ok = ca.certificate.not_valid_after_utc - now >= dt.timedelta(days=2 * SERVING_DAYS)
            ok = ok and _key_matches(ca)
        except ValueError:
            ok = False
        if not ok:
            ca = None
    if ca is None:
        ca = certs.generate_ca("kubeguard-ca", days=CA_DAYS)
    serving = certs.generate_serving(ca, dns_names=names, days=SERVING_DAYS)
    return Bundle(ca, serving, previous.resource_version if previous else "")


# ------------------------------------------------------------------------------ the Secret


def _secret_body(settings: Settings, bundle: Bundle) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    meta: dict[str, Any] = {
        "name": settings.cert_secret,
        "namespace": settings.namespace,
        "labels": {"app.kubernetes.io/name": "kubeguard", "app.kubernetes.io/part-of": "kubeguard"},
    }
    if bundle.resource_version:
        meta["resourceVersion"] = bundle.resource_version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "kubernetes.io/tls",
        "data": {
            certs.CA_CERT_FILE: b64(bundle.ca.cert_pem),
            CA_KEY_FILE: b64(bundle.ca.key_pem),
            certs.TLS_CERT_FILE: b64(bundle.serving.cert_pem),
            certs.TLS_KEY_FILE: b64(bundle.serving.key_pem),
        },
    }


class _SecretView(msgspec.Struct):
    metadata: dict[str, Any]
    data: dict[str, str] = {}


def _decode_secret(raw: bytes) -> Bundle | None:
    """The Bundle in a Secret body, or None when a key is missing or not base64 PEM."""
    secret = msgspec.json.decode(raw, type=_SecretView)
    try:
        parts = {
            k: base64.b64decode(secret.data[k], validate=True)
            for k in (certs.CA_CERT_FILE, CA_KEY_FILE, certs.TLS_CERT_FILE, certs.TLS_KEY_FILE)
        }
    except (KeyError, ValueError):
        return None
    return Bundle(
        certs.KeyPair(parts[certs.CA_CERT_FILE], parts[CA_KEY_FILE]),
        certs.KeyPair(parts[certs.TLS_CERT_FILE], parts[certs.TLS_KEY_FILE]),
        str(secret.metadata.get("resourceVersion", "")),
    )


class CertificateStore:
    """The shared Secret: read, create once, renew with optimistic concurrency."""

    def __init__(self, http: Any, settings: Settings, clock: Clock = _utcnow) -> None:
        self.http = http
        self.settings = settings
        self.clock = clock
        self.names = certs.service_dns_names(settings.service_name, settings.namespace)
        self._collection = resource_path("", "v1", "secrets", settings.namespace)
        self._path = resource_path("", "v1", "secrets", settings.namespace, settings.cert_secret)

    async def read(self) -> tuple[Bundle | None, bool]:
        """(bundle or None, exists)."""
        try:
            raw = await call(self.http, "GET", self._path)
        except KubeApiError as exc:
            if exc.code == 404:
                return None, False
            raise SelfSignedError(f"cannot read Secret {self._where}: {exc}") from None
        return _decode_secret(raw), True

    @property
    def _where(self) -> str:
        return f"{self.settings.namespace}/{self.settings.cert_secret}"

    async def ensure(self, attempts: int = 5) -> tuple[Bundle, bool]:
        """A usable bundle from the Secret, creating or renewing it when needed.
        Returns (bundle, True if this replica wrote it)."""
        for _ in range(attempts):
            current, exists = await self.read()
            why = (
                problem(current, self.names, self.clock())
                if current is not None
                else ("missing" if not exists else "the Secret holds no usable certificate")
            )
            if why is None and current is not None:
                return current, False
            fresh = renew(current, self.names, self.clock())
            if not exists:
                fresh = Bundle(fresh.ca, fresh.serving, "")
                body = _secret_body(self.settings, fresh)
                try:
                    raw = await call(self.http, "POST", self._collection, body=body)
                except KubeApiError as exc:
                    if exc.code == 409:  # AlreadyExists: another replica was first; use it
                        continue
                    raise SelfSignedError(f"cannot create Secret {self._where}: {exc}") from None
                log.info(
                    "created the self-signed CA and serving certificate",
                    extra={"secret": self._where, "serial": f"{fresh.serving.serial:x}"},
                )
            else:
                try:
                    raw = await call(
                        self.http, "PUT", self._path, body=_secret_body(self.settings, fresh)
                    )
                except KubeApiError as exc:
                    if exc.code == 409:  # Conflict: another replica renewed first; re-read
                        continue
                    raise SelfSignedError(f"cannot update Secret {self._where}: {exc}") from None
                log.info(
                    "renewed the self-signed serving certificate",
                    extra={
                        "secret": self._where,
                        "reason": why,
                        "serial": f"{fresh.serving.serial:x}",
                        "not_after": fresh.serving.not_after.isoformat(),
                    },
                )
            stored = _decode_secret(raw)
            return (stored or fresh), True
        raise SelfSignedError(
            f"Secret {self._where} kept changing under {attempts} attempts to create or renew it"
        )


# ------------------------------------------------------------------------------ caBundle


class _HookView(msgspec.Struct):
    name: str
    clientConfig: dict[str, Any] = {}


class _ConfigView(msgspec.Struct):
    metadata: dict[str, Any]
    webhooks: list[_HookView] = []


CONFIG_RESOURCES = {
    "validating": "validatingwebhookconfigurations",
    "mutating": "mutatingwebhookconfigurations",
}


async def patch_ca_bundles(
    http: Any, configurations: list[tuple[str, str]], ca_bundle: str
) -> list[str]:
    """Set `clientConfig.caBundle` on every webhook of the given (kind, name) configurations
    where it differs. Returns the names patched. A configuration that does not exist is
    skipped (it is not deployed); other errors raise SelfSignedError."""
    patched = []
    for kind, name in configurations:
        path = resource_path(
            "admissionregistration.k8s.io", "v1", CONFIG_RESOURCES[kind], None, name
        )
        try:
            raw = await call(http, "GET", path)
        except KubeApiError as exc:
            if exc.code == 404:
                log.debug("webhook configuration %s not found; not patched", name)
                continue
            raise SelfSignedError(
                f"cannot read {kind} webhook configuration {name}: {exc}"
            ) from None
        config = msgspec.json.decode(raw, type=_ConfigView)
        ops: list[dict[str, Any]] = [
            # Optimistic concurrency: fail (409/422) if the object changed since the read.
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": config.metadata.get("resourceVersion", ""),
            }
        ]
        for i, hook in enumerate(config.webhooks):
            if hook.clientConfig.get("caBundle") != ca_bundle:
                ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook.name})
                ops.append(
                    {
                        "op": "add",
                        "path": f"/webhooks/{i}/clientConfig/caBundle",
                        "value": ca_bundle,
                    }
                )
        if len(ops) == 1:
            continue
        try:
            await call(http, "PATCH", path, body=ops, content_type=JSON_PATCH)
        except KubeApiError as exc:
            if exc.code in (409, 422):  # changed meanwhile: the next check retries
                log.info("webhook configuration %s changed while patching; will retry", name)
                continue
            raise SelfSignedError(f"cannot patch the caBundle of {name}: {exc}") from None
        log.info("patched the caBundle", extra={"configuration": name, "webhooks": len(ops) // 2})
        patched.append(name)
    return patched


def configurations_for(settings: Settings, registry: Any = None) -> list[tuple[str, str]]:
    """(kind, name) of the webhook configurations the enabled plugins render into."""
    from kubeguard import manifests

    if registry is None:
        from kubeguard.plugins import default_registry

        registry = default_registry()
    plugins = manifests.build_plugin_specs(registry, settings)
    out: list[tuple[str, str]] = []
    for record in manifests.entry_records(plugins, settings):
        key = (record.kind, record.configuration)
        if key not in out:
            out.append(key)
    return out


# ------------------------------------------------------------------------------ runtime


class SelfSigned:
    """One replica's part: keep the cert dir, the Secret and the caBundles in step."""

    def __init__(
        self,
        runtime: Runtime,
        configurations: list[tuple[str, str]],
        *,
        clock: Clock = _utcnow,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        kube = runtime.require_kube("--self-signed")
        self.settings = runtime.settings
        self.http = kube.http
        self.store = CertificateStore(kube.http, runtime.settings, clock)
        self.configurations = configurations
        self.check_interval = check_interval
        self.current: Bundle | None = None
        self.ready = False

    async def sync(self) -> Bundle:
        """One pass: ensure the Secret, write the files if they changed, patch caBundles."""
        bundle, _ = await self.store.ensure()
        if self.current is None or (
            bundle.serving.cert_pem != self.current.serving.cert_pem
            or bundle.ca.cert_pem != self.current.ca.cert_pem
        ):
            certs.write_cert_dir(self.settings.cert_dir, bundle.ca, bundle.serving)
            log.info(
                "serving certificate written",
                extra={
                    "cert_dir": str(self.settings.cert_dir),
                    "serial": f"{bundle.serving.serial:x}",
                    "not_after": bundle.serving.not_after.isoformat(),
                },
            )
        self.current = bundle
        await patch_ca_bundles(self.http, self.configurations, bundle.ca_bundle)
        self.ready = True
        return bundle

    async def run(self) -> None:
        """The background task: check every `check_interval` seconds; errors are logged and
        retried on the next check (the certificate in use stays valid for weeks)."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.sync()
            except (SelfSignedError, OSError) as exc:
                log.warning(
                    "self-signed certificate check failed; retrying", extra={"error": str(exc)}
                )


async def setup_self_signed(
    runtime: Runtime,
    *,
    registry: Any = None,
    clock: Clock = _utcnow,
    check_interval: float = CHECK_INTERVAL,
) -> SelfSigned:
    """Call before the HTTPS server starts (it loads `cert_dir`) and before the runtime's
    tasks run: ensures the Secret, writes the cert dir, patches the caBundles and registers
    the renewal task and a readiness check. Raises SelfSignedError when the API refuses."""
    configurations = configurations_for(runtime.settings, registry)
    self_signed = SelfSigned(runtime, configurations, clock=clock, check_interval=check_interval)
    await self_signed.sync()
    runtime.add_task(TASK_NAME, self_signed.run)
    runtime.add_readiness(READINESS_NAME, lambda: self_signed.ready)
    return self_signed


def task_factory(self_signed: SelfSigned) -> Callable[[], Awaitable[None]]:
    """The renewal loop as a runtime task (what `setup_self_signed` registers)."""
    return self_signed.run
