"""The `kubeguard` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kubeguard import __version__
from kubeguard.config import OPTIONS, ConfigError, Settings, load_settings

log = logging.getLogger("kubeguard")

F = Callable[..., Any]


def settings_options(func: F) -> F:
    """Add one click option per setting. Values left unset fall back to env, then default."""
    for opt in reversed(OPTIONS):
        name = opt.field
        help_text = f"{opt.help} [env: {opt.env}]"
        if opt.is_flag:
            bare = opt.flag[2:]
            decl = f"{opt.flag}/--no-{bare}"
            func = click.option(decl, name, default=None, help=help_text)(func)
        else:
            func = click.option(opt.flag, name, default=None, metavar="TEXT", help=help_text)(func)
    return func


def resolve_settings(values: dict[str, Any]) -> Settings:
    """Settings from CLI values + environment, or exit 2 with the reason."""
    try:
        return load_settings({k: v for k, v in values.items() if v is not None})
    except ConfigError as exc:
        click.echo(f"kubeguard: configuration error: {exc}", err=True)
        sys.exit(2)


def run_async(coro: Any) -> Any:
    """Run on uvloop when available (the production event loop), else asyncio's."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kubeguard")
def cli() -> None:
    """kubeguard: admission webhooks that keep pods alive through correlated node failures."""


@cli.command()
@settings_options
def serve(**values: Any) -> None:
    """Run the admission webhook server."""
    from kubeguard.log import setup_logging
    from kubeguard.server.run import run_server

    settings = resolve_settings(values)
    setup_logging(settings.log_format, settings.log_level)
    try:
        code = run_async(run_server(settings))
    except ConfigError as exc:
        click.echo(f"kubeguard: configuration error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code or 0)


@cli.command()
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write ca.crt, tls.crt and tls.key into.",
)
@click.option("--dns", "dns", multiple=True, help="DNS subject alternative name (repeatable).")
@click.option("--ip", "ips", multiple=True, help="IP subject alternative name (repeatable).")
@click.option("--days", default=365, show_default=True, help="Serving certificate validity.")
def certs(out: Path, dns: tuple[str, ...], ips: tuple[str, ...], days: int) -> None:
    """Write a CA and a serving certificate signed by it."""
    from kubeguard.certs import generate_ca, generate_serving, write_cert_dir

    ca = generate_ca()
    try:
        serving = generate_serving(ca, dns_names=list(dns), ip_addresses=list(ips), days=days)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    write_cert_dir(out, ca, serving)
    click.echo(f"wrote {out}/ca.crt, {out}/tls.crt, {out}/tls.key (serial {serving.serial:x})")


# --- subcommands --- (one import + add_command per module that provides commands)
def _register_subcommands() -> None:
    from kubeguard.demo import demo as demo_command
    from kubeguard.manifests import manifests as manifests_command
    from kubeguard.protection.cli import COMMANDS as protection_commands
    from kubeguard.sim.cli import sim_group

    for command in protection_commands:
        cli.add_command(command)
    cli.add_command(demo_command)
    cli.add_command(manifests_command)
    cli.add_command(sim_group)


_register_subcommands()


def main() -> None:
    cli(prog_name="kubeguard")


if __name__ == "__main__":  # pragma: no cover
    main()
