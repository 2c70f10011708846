"""Unit tests: patches, selectors, scenario parsing, the CLI group."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kubeguard.sim.cli import sim_group
from kubeguard.sim.patch import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)
from kubeguard.sim.scenario import Scenario, ScenarioError
from kubeguard.sim.store import labels_match, parse_label_selector, selector_matches
from kubeguard.sim.util import ApiError


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c": "x"}
    out = apply_json_patch(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "test", "path": "/e", "value": "y"},
            {"op": "add", "path": "/f~1g", "value": True},
        ],
    )
    assert out == {"a": {"b": [2, 3]}, "c": "y", "e": "y", "f/g": True}
    assert doc == {"a": {"b": [1, 2]}, "c": "x"}  # input untouched
    for bad in (
        [{"op": "test", "path": "/c", "value": "z"}],
        [{"op": "remove", "path": "/q"}],
        [{"op": "add", "path": "/a/b/9", "value": 1}],
        [{"op": "nope", "path": "/"}],
        {"op": "add"},
    ):
        with pytest.raises(PatchError):
            apply_json_patch(doc, bad)


def test_merge_and_strategic_patches() -> None:
    pod = {
        "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "Initialized", "status": "True"},
            ]
        },
    }
    assert apply_merge_patch(pod, {"metadata": {"labels": {"a": None}}})["metadata"]["labels"] == {
        "b": "2"
    }
    out = apply_strategic_merge_patch(
        pod,
        {
            "metadata": {"finalizers": ["y"]},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "DisruptionTarget", "status": "True"},
                ]
            },
        },
    )
    assert out["metadata"]["finalizers"] == ["x", "y"]
    assert [(c["type"], c["status"]) for c in out["status"]["conditions"]] == [
        ("Ready", "False"),
        ("Initialized", "True"),
        ("DisruptionTarget", "True"),
    ]
    out = apply_strategic_merge_patch(
        pod, {"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}}
    )
    assert [c["type"] for c in out["status"]["conditions"]] == ["Initialized"]


def test_label_selectors() -> None:
    reqs = parse_label_selector("app=web,tier in (a, b),!legacy,env!=prod")
    assert labels_match(reqs, {"app": "web", "tier": "a", "env": "dev"})
    assert not labels_match(reqs, {"app": "web", "tier": "c"})
    assert not labels_match(reqs, {"app": "web", "tier": "a", "legacy": "1"})
    with pytest.raises(ApiError):
        parse_label_selector("bad key!=x")
    sel = {
        "matchLabels": {"a": "1"},
        "matchExpressions": [
            {"key": "b", "operator": "NotIn", "values": ["x"]},
            {"key": "c", "operator": "DoesNotExist"},
        ],
    }
    assert selector_matches(sel, {"a": "1", "b": "y"})
    assert not selector_matches(sel, {"a": "1", "c": "z"})


SCENARIO = """
name: demo
timings: {node_monitor_grace_period: 0.5, eviction_rate_interval: 0.2}
nodes:
  - {prefix: w, count: 3, zones: [a, b]}
  - {name: cp1, control_plane: true}
pods: {per_node: 1, namespace: demo, toleration_seconds: 1, grace_period: 0,
       owner: {kind: ReplicaSet, name: web-1}}
steps:
  - {at: 0.1, action: stop_heartbeat, nodes: [w1]}
  - {at: 0.2, action: evict_pod, pod: demo/w2-pod-0, user: alice}
  - {at: 0.3, action: create_statefulset, name: web, namespace: demo, replicas: 2, nodes: [w3]}
  - {at: 0.4, action: delete_pod, pod: demo/w3-pod-0, user: alice, grace_period: 0}
  - {at: 0.5, action: drain, node: w3}
duration: 3
"""


def test_scenario_parsing_errors() -> None:
    with pytest.raises(ScenarioError, match="action"):
        Scenario.from_dict({"steps": [{"at": 1, "action": "explode"}]})
    with pytest.raises(ScenarioError, match="unknown node"):
        Scenario.from_dict(
            {"nodes": [{"name": "a"}], "steps": [{"at": 1, "action": "drain", "node": "b"}]}
        )
    with pytest.raises(ScenarioError, match="timing"):
        Scenario.from_dict({"timings": {"warp_speed": 1}})
    with pytest.raises(ScenarioError, match="count"):
        Scenario.from_dict({"nodes": [{"prefix": "w", "count": 0}]})


async def test_scenario_runs_and_records_a_timeline(tmp_path: Path) -> None:
    from kubeguard.sim.cluster import SimCluster
    from kubeguard.sim.scenario import ScenarioRunner

    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    scenario = Scenario.from_yaml(path)
    assert [n for g in scenario.nodes for n in g.names()] == ["w1", "w2", "w3", "cp1"]
    async with SimCluster(scenario.sim_config()) as cluster:
        runner = ScenarioRunner(cluster, scenario)
        await runner.setup()
        assert len(cluster.pods("demo")) == 3
        zones = {
            n["metadata"]["name"]: n["metadata"]["labels"].get("topology.kubernetes.io/zone")
            for n in cluster.nodes()
        }
        assert zones == {"w1": "a", "w2": "b", "w3": "a", "cp1": None}
        timeline = await runner.run()
    kinds = [e.kind for e in timeline.entries]
    assert kinds.count("step") >= 5
    messages = "\n".join(e.message for e in timeline.entries)
    assert "eviction of demo/w2-pod-0 allowed" in messages
    assert "node w1 Ready=Unknown" in messages
    assert "taint eviction of demo/w1-pod-0 done" in messages
    assert "pod demo/w3-pod-0 deleted" in messages
    assert timeline.format()


def test_cli_group_help_and_bad_scenario(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(sim_group, ["serve", "--help"])
    assert result.exit_code == 0 and "--scenario" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [{at: 1, action: nope}]")
    result = runner.invoke(sim_group, ["serve", "--scenario", str(bad)])
    assert result.exit_code != 0 and "action" in result.output
