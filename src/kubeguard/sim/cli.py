"""`kubeguard sim ...`: run the simulated cluster standalone."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import click

from .cluster import SimCluster
from .config import SimConfig, Timings
from .scenario import Scenario, ScenarioError, ScenarioRunner
from .timeline import TimelineEntry


@click.group(name="sim")
def sim_group() -> None:
    """The embedded simulated Kubernetes cluster."""


@sim_group.command("serve")
@click.option(
    "--scenario",
    "scenario_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Scenario YAML to set up and play.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="API server port on 127.0.0.1 (0 picks a free one).",
)
@click.option(
    "--kubeconfig",
    "kubeconfig_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the kubeconfig (default: a temporary directory).",
)
@click.option(
    "--real-timings",
    is_flag=True,
    help="Use kube-controller-manager's real default timings instead of fast ones.",
)
@click.option(
    "--nodes",
    type=click.IntRange(0),
    default=0,
    help="Without a scenario: create this many worker nodes (w1..wN).",
)
@click.option(
    "--pods-per-node",
    type=click.IntRange(0),
    default=0,
    help="Without a scenario: pods per worker node (namespace demo).",
)
@click.option(
    "--timeline/--no-timeline",
    default=True,
    show_default=True,
    help="Print the timeline as it happens.",
)
def serve(
    scenario_path: Path | None,
    port: int,
    kubeconfig_path: Path | None,
    real_timings: bool,
    nodes: int,
    pods_per_node: int,
    timeline: bool,
) -> None:
    """Run the simulated cluster until interrupted (Ctrl-C)."""
    scenario = None
    if scenario_path is not None:
        try:
            scenario = Scenario.from_yaml(scenario_path)
        except ScenarioError as exc:
            raise click.ClickException(str(exc)) from None
    if scenario is not None:
        config = scenario.sim_config(port=port, kubeconfig_path=kubeconfig_path)
        if real_timings:
            config.timings = Timings()
    else:
        config = SimConfig(
            port=port,
            kubeconfig_path=kubeconfig_path,
            timings=Timings() if real_timings else Timings.fast(),
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, scenario, nodes, pods_per_node, timeline))


async def _serve(
    config: SimConfig,
    scenario: Scenario | None,
    nodes: int,
    pods_per_node: int,
    show_timeline: bool,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with SimCluster(config) as cluster:
        click.echo(f"kubeguard simulated cluster: {cluster.url}")
        click.echo(f"kubeconfig:  {cluster.kubeconfig_path}")
        click.echo(f"admin token: {cluster.admin_token}")
        for user in cluster.users.users:
            if user.token and user.username != "admin":
                click.echo(f"token of {user.username}: {user.token}")
        sys.stdout.flush()
        if show_timeline:

            def echo(entry: TimelineEntry) -> None:
                click.echo(entry.format())

            cluster.timeline.subscribe(echo)
        if scenario is not None:
            runner = ScenarioRunner(cluster, scenario)
            await runner.setup()
            play = asyncio.create_task(runner.run())
        else:
            play = None
            if nodes:
                await cluster.add_nodes("w", nodes)
                if pods_per_node:
                    await cluster.add_pods_per_node(pods_per_node, "demo")
        await stop.wait()
        if play is not None and not play.done():
            play.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await play
