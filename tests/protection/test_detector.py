"""The detector: engagement by count and by percentage, the sliding window, what counts."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from kubeguard.config import Threshold
from kubeguard.protection.detector import DetectorConfig, all_ready_since, detect
from kubeguard.protection.nodes import NodeState

NOW = 1_000_000.0


def down(name: str, ago: float, **kw: object) -> NodeState:
    return NodeState(name=name, ready="Unknown", since=NOW - ago, **kw)  # type: ignore[arg-type]


def up(name: str, ago: float = 3600.0, **kw: object) -> NodeState:
    return NodeState(name=name, ready="True", since=NOW - ago, **kw)  # type: ignore[arg-type]


COUNT3 = DetectorConfig(Threshold(count=3), window=300.0)


def test_three_within_window_engage() -> None:
    nodes = [down("a", 10), down("b", 100), down("c", 299), up("d"), up("e")]
    d = detect(nodes, COUNT3, NOW)
    assert d.engage
    assert d.recent == ("a", "b", "c")
    assert d.counted == 5
    assert "3 of 5" in d.cause


def test_failures_spread_over_more_than_window_do_not_engage() -> None:
    nodes = [down("a", 10), down("b", 200), down("c", 301), up("d")]
    d = detect(nodes, COUNT3, NOW)
    assert not d.engage
    assert d.recent == ("a", "b")
    assert d.not_ready == ("a", "b", "c")


def test_window_slides() -> None:
    nodes = [down("a", 0), down("b", 0), down("c", 0)]
    assert detect(nodes, COUNT3, NOW).engage
    assert detect(nodes, COUNT3, NOW + 300).engage
    assert not detect(nodes, COUNT3, NOW + 300.5).engage


def test_never_ready_cordoned_excluded_and_control_plane_do_not_count() -> None:
    nodes = [
        down("a", 1),
        down("b", 1),
        down("new", 1, never_ready=True),
        down("maint", 1, cordoned=True),
        down("excl", 1, excluded=True),
        down("cp", 1, worker=False),
        up("d"),
    ]
    d = detect(nodes, COUNT3, NOW)
    assert not d.engage
    assert d.recent == ("a", "b")
    assert d.counted == 3
    cfg = DetectorConfig(Threshold(count=3), 300.0, count_cordoned=True, count_excluded=True)
    d2 = detect(nodes, cfg, NOW)
    assert d2.engage and d2.recent == ("a", "b", "excl", "maint")


def test_percentage_threshold_rounds_up_and_is_at_least_one() -> None:
    cfg = DetectorConfig(Threshold(percent=10), 300.0)
    nodes = [up(f"n{i}") for i in range(25)]
    nodes[0] = down("n0", 5)
    nodes[1] = down("n1", 5)
    d = detect(nodes, cfg, NOW)
    assert d.required == 3 and not d.engage  # 10% of 25 = 2.5 -> 3
    nodes[2] = down("n2", 5)
    assert detect(nodes, cfg, NOW).engage
    small = [down("x", 1), up("y")]
    assert detect(small, cfg, NOW).required == 1
    assert detect(small, cfg, NOW).engage


def test_no_nodes_never_engage() -> None:
    assert not detect([], DetectorConfig(Threshold(percent=10), 300.0), NOW).engage


def test_all_ready_since() -> None:
    assert all_ready_since([up("a", 50), up("b", 10)]) == NOW - 10
    assert all_ready_since([up("a", 50), down("b", 10)]) is None
    assert all_ready_since([up("a", 50), down("cp", 1, worker=False)]) == NOW - 50


node_strategy = st.builds(
    NodeState,
    name=st.text("abcdefgh", min_size=1, max_size=4),
    ready=st.sampled_from(["True", "False", "Unknown", ""]),
    since=st.one_of(st.none(), st.floats(NOW - 2000, NOW + 10)),
    worker=st.booleans(),
    cordoned=st.booleans(),
    excluded=st.booleans(),
    never_ready=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    nodes=st.lists(node_strategy, max_size=30, unique_by=lambda n: n.name),
    count=st.integers(1, 6),
    window=st.floats(1.0, 1000.0),
)
def test_detect_matches_definition(nodes: list[NodeState], count: int, window: float) -> None:
    cfg = DetectorConfig(Threshold(count=count), window)
    d = detect(nodes, cfg, NOW)
    counted = [
        n for n in nodes if n.worker and not n.never_ready and not n.cordoned and not n.excluded
    ]
    recent = [
        n
        for n in counted
        if n.ready in ("False", "Unknown") and n.since is not None and n.since >= NOW - window
    ]
    assert d.counted == len(counted)
    assert d.engage == (len(recent) >= count)
    assert set(d.recent) == {n.name for n in recent}


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.lists(node_strategy, max_size=30, unique_by=lambda n: n.name),
    pct=st.floats(0.5, 100.0),
    later=st.floats(0.0, 5000.0),
)
def test_percent_and_monotonic_window(nodes: list[NodeState], pct: float, later: float) -> None:
    cfg = DetectorConfig(Threshold(percent=pct), 300.0)
    d = detect(nodes, cfg, NOW)
    assert d.required == max(1, math.ceil(d.counted * pct / 100 - 1e-9))
    # Time passing with the same node states can only shrink the recent set.
    assert set(detect(nodes, cfg, NOW + later).recent) <= set(d.recent) | {
        n.name for n in nodes if n.since is not None and n.since > NOW
    }
