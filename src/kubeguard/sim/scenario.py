"""Declarative incident scenarios and the real-time driver that plays them on a `SimCluster`.

YAML (or the same structure as Python dicts, or the dataclasses directly)::

    name: correlated-failure
    timings:                      # seconds; overrides on top of Timings.fast()
      node_monitor_grace_period: 2
      eviction_rate_interval: 1
    nodes:
      - {prefix: w, count: 8, zones: [a, b, c]}       # w1..w8, zone label round-robin
      - {name: cp1, control_plane: true}
    pods:                         # created on every worker node (not control-plane nodes)
      per_node: 3
      namespace: demo
      labels: {tier: web}
      annotations: {}
      owner: {kind: ReplicaSet, name: web-5d4f8, apiVersion: apps/v1}
      toleration_seconds: 5       # unreachable:NoExecute toleration (default 300)
      grace_period: 0             # terminationGracePeriodSeconds
    webhooks: []                  # Validating/MutatingWebhookConfiguration objects
    steps:
      - {at: 5, action: stop_heartbeat, nodes: [w1]}
      - {at: 20, action: stop_heartbeat, nodes: [w2, w3, w4]}
      - {at: 40, action: drain, node: w5}
      - {at: 50, action: resume_heartbeat, nodes: [w1]}
      - {at: 60, action: delete_node, node: w6}
      - {at: 61, action: evict_pod, pod: demo/w7-pod-0, user: alice}
      - {at: 62, action: delete_pod, pod: demo/w7-pod-1, user: alice, grace_period: 0}
      - {at: 63, action: create_statefulset, name: web, namespace: demo, replicas: 3}
      - {at: 64, action: cordon, node: w8}          # also: uncordon
    duration: 70                  # seconds the run lasts (default: last step + 1)

Times are real seconds after `ScenarioRunner.run()` starts (there is no virtual clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import timeline as tl
from .cluster import SimCluster
from .config import SimConfig, Timings

ACTIONS = {
    "stop_heartbeat": ("nodes",),
    "resume_heartbeat": ("nodes",),
    "drain": ("node",),
    "cordon": ("node",),
    "uncordon": ("node",),
    "delete_node": ("node",),
    "evict_pod": ("pod",),
    "delete_pod": ("pod",),
    "create_statefulset": ("name",),
}


class ScenarioError(ValueError):
    """The scenario document is invalid; the message names the offending field."""


@dataclass
class NodeGroup:
    prefix: str = ""
    count: int = 1
    name: str = ""
    zones: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    control_plane: bool = False

    def names(self) -> list[str]:
        if self.name:
            return [self.name]
        return [f"{self.prefix}{i}" for i in range(1, self.count + 1)]


@dataclass
class PodTemplate:
    per_node: int = 0
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    owner: dict[str, Any] | None = None
    toleration_seconds: int | None = None
    grace_period: int | None = None


@dataclass
class Step:
    at: float
    action: str
    args: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.action} {args}".strip()


@dataclass
class Scenario:
    name: str = "scenario"
    nodes: list[NodeGroup] = field(default_factory=list)
    pods: PodTemplate = field(default_factory=PodTemplate)
    steps: list[Step] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    duration: float | None = None

    # --------------------------------------------------------------- parsing

    @classmethod
    def from_yaml(cls, path: str | Path) -> Scenario:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Scenario:
        if not isinstance(data, dict):
            raise ScenarioError("a scenario must be a mapping")
        unknown = set(data) - {"name", "nodes", "pods", "steps", "timings", "webhooks", "duration"}
        if unknown:
            raise ScenarioError(f"unknown scenario field(s): {', '.join(sorted(unknown))}")
        nodes = [_node_group(i, n) for i, n in enumerate(_list(data, "nodes"))]
        pods = _pod_template(data.get("pods") or {})
        steps = [_step(i, s) for i, s in enumerate(_list(data, "steps"))]
        timings = data.get("timings") or {}
        if not isinstance(timings, dict):
            raise ScenarioError("timings must be a mapping")
        try:
            Timings.from_dict(timings, fast=True)
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
        webhooks = _list(data, "webhooks")
        if not all(isinstance(w, dict) for w in webhooks):
            raise ScenarioError("webhooks must be a list of webhook configuration objects")
        duration = data.get("duration")
        if duration is not None and not _number(duration):
            raise ScenarioError("duration must be a non-negative number")
        scenario = cls(
            str(data.get("name", "scenario")),
            nodes,
            pods,
            sorted(steps, key=lambda s: s.at),
            dict(timings),
            list(webhooks),
            float(duration) if duration is not None else None,
        )
        scenario.check()
        return scenario

    def check(self) -> None:
        """Cross-field checks: unique node names and steps that name existing nodes."""
        names: list[str] = []
        for group in self.nodes:
            names.extend(group.names())
        if len(set(names)) != len(names):
            raise ScenarioError("node names must be unique")
        known = set(names)
        for step in self.steps:
            for node in _step_nodes(step):
                if node not in known:
                    raise ScenarioError(f"step at t={step.at}: unknown node {node!r}")

    def sim_config(self, **overrides: Any) -> SimConfig:
        """A SimConfig with this scenario's timings and webhook configurations."""
        config = SimConfig(**overrides)
        if "timings" not in overrides:
            config.timings = Timings.from_dict(self.timings, fast=True)
        config.webhook_configurations = [*config.webhook_configurations, *self.webhooks]
        return config

    def end_time(self) -> float:
        if self.duration is not None:
            return self.duration
        return (self.steps[-1].at + 1.0) if self.steps else 0.0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise ScenarioError(f"{key} must be a list")
    return value


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ScenarioError(f"{where} must be a mapping")
    return {str(k): str(v) for k, v in value.items()}


def _node_group(i: int, data: Any) -> NodeGroup:
    if not isinstance(data, dict):
        raise ScenarioError(f"nodes[{i}] must be a mapping")
    unknown = set(data) - {f.name for f in dataclasses.fields(NodeGroup)}
    if unknown:
        raise ScenarioError(f"nodes[{i}]: unknown field(s) {', '.join(sorted(unknown))}")
    count = data.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ScenarioError(f"nodes[{i}].count must be a positive integer")
    if not data.get("name") and not data.get("prefix"):
        raise ScenarioError(f"nodes[{i}] needs a name or a prefix")
    zones = data.get("zones") or []
    if not isinstance(zones, list):
        raise ScenarioError(f"nodes[{i}].zones must be a list")
    return NodeGroup(
        str(data.get("prefix", "")),
        count,
        str(data.get("name", "")),
        [str(z) for z in zones],
        _str_map(data.get("labels"), f"nodes[{i}].labels"),
        bool(data.get("control_plane", False)),
    )


def _pod_template(data: Any) -> PodTemplate:
    if not isinstance(data, dict):
        raise ScenarioError("pods must be a mapping")
    unknown = set(data) - {f.name for f in dataclasses.fields(PodTemplate)}
    if unknown:
        raise ScenarioError(f"pods: unknown field(s) {', '.join(sorted(unknown))}")
    per_node = data.get("per_node", 0)
    if not isinstance(per_node, int) or isinstance(per_node, bool) or per_node < 0:
        raise ScenarioError("pods.per_node must be a non-negative integer")
    owner = data.get("owner")
    if owner is not None and (
        not isinstance(owner, dict) or not owner.get("kind") or not owner.get("name")
    ):
        raise ScenarioError("pods.owner needs a kind and a name")
    for key in ("toleration_seconds", "grace_period"):
        if data.get(key) is not None and (not isinstance(data[key], int) or data[key] < 0):
            raise ScenarioError(f"pods.{key} must be a non-negative integer")
    return PodTemplate(
        per_node,
        str(data.get("namespace", "default")),
        _str_map(data.get("labels"), "pods.labels"),
        _str_map(data.get("annotations"), "pods.annotations"),
        owner,
        data.get("toleration_seconds"),
        data.get("grace_period"),
    )


def _step(i: int, data: Any) -> Step:
    if not isinstance(data, dict):
        raise ScenarioError(f"steps[{i}] must be a mapping")
    at, action = data.get("at"), data.get("action")
    if not _number(at):
        raise ScenarioError(f"steps[{i}].at must be a non-negative number of seconds")
    if action not in ACTIONS:
        raise ScenarioError(
            f"steps[{i}].action must be one of {', '.join(sorted(ACTIONS))}, got {action!r}"
        )
    args = {k: v for k, v in data.items() if k not in ("at", "action")}
    for required in ACTIONS[str(action)]:
        if required not in args:
            raise ScenarioError(f"steps[{i}] ({action}) needs {required!r}")
    if "nodes" in args:
        nodes = args["nodes"]
        if isinstance(nodes, str):
            args["nodes"] = [n.strip() for n in nodes.split(",") if n.strip()]
        elif not isinstance(nodes, list):
            raise ScenarioError(f"steps[{i}].nodes must be a list")
    if "pod" in args and "/" not in str(args["pod"]):
        args["pod"] = f"default/{args['pod']}"
    return Step(float(at or 0), str(action), args)


def _step_nodes(step: Step) -> list[str]:
    out = [str(n) for n in step.args.get("nodes") or []]
    if "node" in step.args:
        out.append(str(step.args["node"]))
    return out


class ScenarioRunner:
    """Plays a scenario on a running cluster."""

    def __init__(self, cluster: SimCluster, scenario: Scenario) -> None:
        self.cluster = cluster
        self.scenario = scenario
        self._background: list[asyncio.Task[Any]] = []

    async def setup(self, *, wait_running: float = 30.0) -> None:
        """Create the nodes, the pods and the webhook configurations."""
        cluster, sc = self.cluster, self.scenario
        for hook in sc.webhooks:
            if (
                cluster.store.get(
                    _webhook_resource(hook), "", hook.get("metadata", {}).get("name", "")
                )
                is None
            ):
                await cluster.register_webhook(hook)
        workers: list[str] = []
        for group in sc.nodes:
            for i, name in enumerate(group.names()):
                zone = group.zones[i % len(group.zones)] if group.zones else None
                await cluster.add_node(
                    name, zone=zone, labels=group.labels, control_plane=group.control_plane
                )
                if not group.control_plane:
                    workers.append(name)
        tpl = sc.pods
        if tpl.per_node:
            owner_refs = None
            if tpl.owner:
                owner_refs = [
                    {
                        "apiVersion": tpl.owner.get("apiVersion", "apps/v1"),
                        "kind": tpl.owner["kind"],
                        "name": tpl.owner["name"],
                        "uid": tpl.owner.get("uid", "0c1d2e3f-0000-4000-8000-000000000001"),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ]
            await cluster.create_namespace(tpl.namespace)
            for node in workers:
                for i in range(tpl.per_node):
                    name = f"{node}-pod-{i}"
                    await cluster.add_pod(
                        name,
                        tpl.namespace,
                        node=node,
                        labels={
                            "app": tpl.labels.get("app", "workload"),
                            **tpl.labels,
                            "pod-index": str(i),
                        },
                        annotations=tpl.annotations or None,
                        owner_references=owner_refs,
                        toleration_seconds=tpl.toleration_seconds,
                        grace_period=tpl.grace_period,
                    )
        if wait_running:
            await cluster.wait_pods_running(wait_running)

    async def run(self, *, until: float | None = None) -> tl.Timeline:
        """Execute the steps at their times; returns the cluster's timeline."""
        timeline = self.cluster.timeline
        start = time.monotonic()
        timeline.add(tl.STEP, "scenario", f"scenario {self.scenario.name!r} starts")
        end = until if until is not None else self.scenario.end_time()
        for step in self.scenario.steps:
            if step.at > end:
                break
            delay = start + step.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            timeline.add(
                tl.STEP,
                step.args.get("user", "scenario"),
                step.describe(),
                action=step.action,
                at=step.at,
                **{k: v for k, v in step.args.items() if k not in ("action", "at")},
            )
            await self._execute(step)
        remaining = start + end - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
        for task in self._background:
            if not task.done():
                task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background.clear()
        timeline.add(tl.STEP, "scenario", f"scenario {self.scenario.name!r} ends")
        return timeline

    async def _execute(self, step: Step) -> None:
        c, a = self.cluster, step.args
        user = str(a.get("user", "admin"))
        if step.action == "stop_heartbeat":
            c.stop_heartbeat(*a["nodes"])
        elif step.action == "resume_heartbeat":
            c.resume_heartbeat(*a["nodes"])
        elif step.action == "drain":
            self._background.append(
                asyncio.create_task(
                    c.drain(str(a["node"]), user=user, within=float(a.get("timeout") or 60))
                )
            )
        elif step.action in ("cordon", "uncordon"):
            await c.cordon(str(a["node"]), user=user, unschedulable=step.action == "cordon")
        elif step.action == "delete_node":
            await c.delete_node(str(a["node"]), user=user)
        elif step.action == "evict_pod":
            ns, name = str(a["pod"]).split("/", 1)
            await c.evict_pod(
                ns,
                name,
                user=user,
                dry_run=bool(a.get("dry_run", False)),
                grace_period=_opt_int(a.get("grace_period")),
            )
        elif step.action == "delete_pod":
            ns, name = str(a["pod"]).split("/", 1)
            await c.delete_pod(ns, name, user=user, grace_period=_opt_int(a.get("grace_period")))
        elif step.action == "create_statefulset":
            await c.create_statefulset_pods(
                str(a["name"]),
                str(a.get("namespace", "default")),
                int(a.get("replicas", 3)),
                nodes=[str(n) for n in a.get("nodes") or []] or None,
                labels=_str_map(a.get("labels"), "labels"),
                annotations=_str_map(a.get("annotations"), "annotations") or None,
            )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _webhook_resource(hook: dict[str, Any]) -> str:
    if hook.get("kind") == "MutatingWebhookConfiguration":
        return "mutatingwebhookconfigurations"
    return "validatingwebhookconfigurations"
