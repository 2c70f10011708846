"""`kubeguard status|disable|enable` (the callback API from a terminal) and
`kubeguard webhook-config` (the ValidatingWebhookConfiguration for an out-of-cluster server)."""

from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path
from typing import Any

import click
import httpx2
import msgspec
import yaml

DEFAULT_SERVER = "https://127.0.0.1:8443"


def _kubeconfig_token(path: Path | None) -> str | None:
    """The bearer token of the kubeconfig's current user (static `token` or `tokenFile`)."""
    from lightkube.config.kubeconfig import KubeConfig

    candidates = [path] if path else []
    if not candidates:
        env = os.environ.get("KUBECONFIG", "")
        candidates = [Path(p) for p in env.split(os.pathsep) if p] or [
            Path.home() / ".kube" / "config"
        ]
    for candidate in candidates:
        if not candidate.exists():
            continue
        try:
            cfg = KubeConfig.from_file(candidate).get()
        except Exception:
            continue
        user = cfg.user if cfg is not None else None
        if user is None:
            continue
        if user.token:
            return str(user.token)
        if user.token_file:
            return Path(user.token_file).read_text().strip()
    return None


def _client(server: str, token: str | None, ca_file: Path | None, insecure: bool) -> Any:
    verify: ssl.SSLContext | bool
    if insecure:
        verify = False
    elif ca_file is not None:
        verify = ssl.create_default_context(cafile=str(ca_file))
    else:
        verify = True
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.Client(base_url=server, verify=verify, headers=headers, timeout=10)


def _request(ctx: click.Context, method: str, path: str) -> dict[str, Any]:
    o = ctx.obj
    try:
        with _client(o["server"], o["token"], o["ca_file"], o["insecure"]) as client:
            resp = client.request(method, path)
    except httpx2.HTTPError as exc:
        raise click.ClickException(f"cannot reach kubeguard at {o['server']}: {exc}") from None
    try:
        body: dict[str, Any] = msgspec.json.decode(resp.content)
    except msgspec.DecodeError:
        raise click.ClickException(
            f"{method} {path}: HTTP {resp.status_code}: {resp.text[:200]}"
        ) from None
    if resp.status_code >= 400 or body.get("status") != "success":
        raise click.ClickException(
            f"{method} {path}: HTTP {resp.status_code}: {body.get('message', body)}"
        )
    return body


def _connection_options(func: Any) -> Any:
    opts = [
        click.option(
            "--server",
            envvar="KUBEGUARD_SERVER",
            default=DEFAULT_SERVER,
            show_default=True,
            help="kubeguard base URL (env KUBEGUARD_SERVER).",
        ),
        click.option(
            "--token",
            envvar="KUBEGUARD_TOKEN",
            default=None,
            help="Bearer token (default: the kubeconfig's token).",
        ),
        click.option(
            "--kubeconfig",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="kubeconfig to take the token from (default KUBECONFIG, ~/.kube/config).",
        ),
        click.option(
            "--ca-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="CA bundle that signed kubeguard's serving certificate.",
        ),
        click.option(
            "--insecure-skip-tls-verify",
            "insecure",
            is_flag=True,
            help="Do not verify kubeguard's certificate (testing only).",
        ),
        click.option(
            "-o",
            "--output",
            type=click.Choice(["table", "json"]),
            default="table",
            show_default=True,
        ),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _setup(
    ctx: click.Context,
    server: str,
    token: str | None,
    kubeconfig: Path | None,
    ca_file: Path | None,
    insecure: bool,
    output: str,
) -> None:
    ctx.obj = {
        "server": server,
        "token": token or _kubeconfig_token(kubeconfig),
        "ca_file": ca_file,
        "insecure": insecure,
        "output": output,
    }


def render_status(data: dict[str, Any]) -> str:
    """The human view of `data` from GET /callback/status."""
    lines = []

    def row(key: str, value: Any) -> None:
        if value not in (None, "", []):
            lines.append(f"{key + ':':<22}{value}")

    row("Intercepting", "yes" if data.get("intercepting") else "no")
    row("State", data.get("state"))
    row("Mode", data.get("mode"))
    row("NotReady nodes", ", ".join(data.get("notReadyNodes") or []) or "none")
    row(
        "Threshold",
        f"{data.get('threshold')} within {data.get('window')}s "
        f"({data.get('requiredNodes')} of {data.get('workerNodes')} worker nodes)",
    )
    row("Engaged at", data.get("engagedAt"))
    row("Cause", data.get("cause"))
    row("Released at", data.get("releasedAt"))
    row("Release reason", data.get("releaseReason"))
    row("Toggled by", data.get("toggledBy"))
    row("Protected pods", data.get("protectedPods"))
    redrive = data.get("redrive")
    if redrive:
        row(
            "Re-drive",
            f"#{redrive.get('generation')} {redrive.get('phase')}: "
            f"{redrive.get('evicted', 0)} evicted, {redrive.get('deleted', 0)} deleted, "
            f"{redrive.get('blocked', 0)} blocked, {redrive.get('failed', 0)} failed, "
            f"{redrive.get('gone', 0)} gone, {redrive.get('pending', 0)} pending "
            f"of {redrive.get('total', 0)}",
        )
    stranded = data.get("strandedPods") or []
    if stranded:
        lines.append("")
        lines.append(f"{'NAMESPACE':<20}{'POD':<36}{'NODE':<20}{'STATE':<10}DETAIL")
        for p in stranded:
            lines.append(
                f"{p.get('namespace', ''):<20}{p.get('name', ''):<36}{p.get('node', ''):<20}"
                f"{p.get('state', ''):<10}{p.get('detail', '')}"
            )
    if data.get("stateError"):
        lines.append("")
        lines.append(f"WARNING: {data['stateError']}")
    return "\n".join(lines)


@click.command()
@_connection_options
@click.pass_context
def status(ctx: click.Context, /, **kw: Any) -> None:
    """Show the protection status (GET /callback/status)."""
    _setup(ctx, **kw)
    body = _request(ctx, "GET", "/callback/status")
    if ctx.obj["output"] == "json":
        click.echo(msgspec.json.format(msgspec.json.encode(body), indent=2).decode())
    else:
        click.echo(render_status(body.get("data") or {}))


def _toggle(ctx: click.Context, action: str) -> None:
    body = _request(ctx, "POST", f"/callback/{action}-interception")
    if ctx.obj["output"] == "json":
        click.echo(msgspec.json.encode(body).decode())
    else:
        click.echo(body.get("message", "ok"))


@click.command()
@_connection_options
@click.pass_context
def disable(ctx: click.Context, /, **kw: Any) -> None:
    """Release protection: allow every eviction again, re-drive stranded pods."""
    _setup(ctx, **kw)
    _toggle(ctx, "disable")


@click.command()
@_connection_options
@click.pass_context
def enable(ctx: click.Context, /, **kw: Any) -> None:
    """Re-enable interception (detection restarts from the current node states)."""
    _setup(ctx, **kw)
    _toggle(ctx, "enable")


@click.command("webhook-config")
@click.option("--url", required=True, help="Base URL kube-apiserver reaches kubeguard at.")
@click.option(
    "--ca-bundle",
    "ca_bundle",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM CA that signed kubeguard's serving certificate.",
)
@click.option("--namespace", default=None, help="kubeguard's namespace (excluded).")
@click.option("--name", default=None, help="Name of the ValidatingWebhookConfiguration.")
def webhook_config(url: str, ca_bundle: Path, namespace: str | None, name: str | None) -> None:
    """Print the ValidatingWebhookConfiguration for a kubeguard running outside the cluster."""
    from kubeguard.config import ConfigError, load_settings
    from kubeguard.protection.plugin import webhook_configuration

    if not url.startswith("https://"):
        raise click.BadParameter(
            "kube-apiserver calls webhooks over HTTPS only", param_hint="--url"
        )
    cli: dict[str, Any] = {}
    if namespace:
        cli["namespace"] = namespace
    if name:
        cli["webhook_config_name"] = name
    try:
        settings = load_settings(cli)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    pem = ca_bundle.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise click.BadParameter(f"{ca_bundle} is not a PEM certificate", param_hint="--ca-bundle")
    doc = webhook_configuration(settings, url, pem)
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))


COMMANDS = (status, disable, enable, webhook_config)
