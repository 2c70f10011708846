"""Views, time parsing and label selectors, against the real v1.36 wire captures."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from kubeguard.kube.objects import (
    ConfigMapView,
    NodeView,
    ObjectList,
    PodView,
    SelectorError,
    Status,
    WatchEvent,
    format_time,
    node_is_not_ready,
    node_ready_condition,
    parse_label_selector,
    parse_time,
    pod_condition,
)
from kubeguard.kube.reflector import WatchDecoder

from .conftest import fixture_bytes, fixture_json, fixtures_dir

UTC = dt.UTC


# ---------------------------------------------------------------------------------- decoding


def test_nodes_list_decodes_with_conditions_taints_and_cordon() -> None:
    nodes = msgspec.json.decode(fixture_bytes("api/nodes-list.json"), type=ObjectList[NodeView])
    assert nodes.metadata.resource_version == "690"
    by_name = {n.metadata.name: n for n in nodes.items}
    assert set(by_name) == {"drain-node", "steady-1", "steady-2", "victim-node"}
    victim = by_name["victim-node"]
    ready = node_ready_condition(victim)
    assert ready is not None and ready.status == "Unknown" and ready.reason == "NodeStatusUnknown"
    assert ready.last_transition_time is not None and ready.last_transition_time.tzinfo
    assert node_is_not_ready(victim)
    assert {(t.key, t.effect) for t in victim.spec.taints} == {
        ("node.kubernetes.io/unreachable", "NoSchedule"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
    }
    assert all(t.time_added is not None for t in victim.spec.taints)
    drain = by_name["drain-node"]
    assert drain.spec.unschedulable
    assert not node_is_not_ready(drain)
    assert [t.effect for t in drain.spec.taints] == ["NoSchedule"]
    assert by_name["steady-1"].metadata.labels["kubernetes.io/hostname"] == "steady-1"
    assert by_name["steady-1"].metadata.key == "steady-1"


def test_paginated_list_metadata() -> None:
    page = msgspec.json.decode(
        fixture_bytes("api/nodes-list-limit-1.json"), type=ObjectList[NodeView]
    )
    raw = fixture_json("api/nodes-list-limit-1.json")
    assert page.metadata.continue_ == raw["metadata"]["continue"]
    assert page.metadata.remaining_item_count == 3
    assert len(page.items) == 1


def test_node_without_ready_condition_is_not_not_ready() -> None:
    node = msgspec.json.decode(b'{"metadata":{"name":"new"},"status":{}}', type=NodeView)
    assert node_ready_condition(node) is None
    assert not node_is_not_ready(node)


def test_pods_by_node_decode() -> None:
    pods = msgspec.json.decode(
        fixture_bytes("api/pods-by-node-victim-node.json"), type=ObjectList[PodView]
    )
    by_name = {p.metadata.name: p for p in pods.items}
    assert all(p.spec.node_name == "victim-node" for p in pods.items)
    protected = by_name["vic-protected"]
    assert protected.metadata.key == "demo/vic-protected"
    ready = pod_condition(protected, "Ready")
    target = pod_condition(protected, "DisruptionTarget")
    assert ready is not None and ready.status == "False"
    assert target is not None and target.status == "True"
    assert any(
        t.key == "node.kubernetes.io/unreachable" and t.effect == "NoExecute"
        for t in protected.spec.tolerations
    )
    assert by_name["vic-default"].status.phase == "Running"


def test_single_pod_and_node_decode() -> None:
    pod = msgspec.json.decode(
        fixture_bytes("api/pod-get-after-denied-taint-eviction.json"), type=PodView
    )
    cond = pod_condition(pod, "DisruptionTarget")
    assert cond is not None and cond.status == "False"
    assert pod.spec.termination_grace_period_seconds is not None
    node = msgspec.json.decode(fixture_bytes("api/node-get-ready-unknown.json"), type=NodeView)
    assert node.metadata.uid and node_is_not_ready(node)


def test_configmap_and_status_fixtures() -> None:
    cm = msgspec.json.decode(fixture_bytes("api/configmap-update.json"), type=ConfigMapView)
    assert cm.data == {"mode": "b"} and cm.metadata.resource_version == "471"
    conflict = msgspec.json.decode(
        fixture_bytes("api/configmap-update-stale-resource-version-409.json"), type=Status
    )
    assert (conflict.code, conflict.reason) == (409, "Conflict")
    assert conflict.details is not None and conflict.details.kind == "configmaps"
    gone = msgspec.json.decode(
        fixture_bytes("api/nodes-list-exact-too-old-resource-version-410.json"), type=Status
    )
    assert (gone.code, gone.reason) == (410, "Expired")
    pdb = msgspec.json.decode(
        fixture_bytes("responses/pod-eviction-blocked-by-pdb-429.json"), type=Status
    )
    assert pdb.has_cause("DisruptionBudget") and not pdb.has_cause("Other")


def test_every_api_fixture_decodes_into_a_view() -> None:
    """No real response may break a view: metadata of every object, Status of errors."""
    for path in sorted((fixtures_dir() / "api").glob("*.json")):
        raw = path.read_bytes()
        data = msgspec.json.decode(raw)
        if data.get("kind") == "Status":
            assert msgspec.json.decode(raw, type=Status).code >= 400, path.name
        elif "items" in data:
            lst = msgspec.json.decode(raw, type=ObjectList[PodView])
            assert len(lst.items) == len(data["items"]), path.name
        elif data.get("kind") == "Node":
            assert msgspec.json.decode(raw, type=NodeView).metadata.name, path.name
        else:
            # Pods, ConfigMaps, Events, Leases, reviews: the common metadata view.
            view = msgspec.json.decode(raw, type=ConfigMapView)
            assert view.metadata.name == data["metadata"].get("name", ""), path.name


def test_every_watch_line_decodes_including_bookmarks_and_expired() -> None:
    decoder = WatchDecoder(NodeView)
    lines = fixture_bytes("api/watch-nodes.jsonl").splitlines()
    events = [decoder.decode(line) for line in lines]
    assert all(isinstance(e, WatchEvent) for e in events)
    types = [e.type for e in events if isinstance(e, WatchEvent)]
    assert types.count("ADDED") == 5 and types.count("MODIFIED") == 20
    assert types.count("DELETED") == 1 and types.count("BOOKMARK") == 2
    bookmarks = [e.object for e in events if isinstance(e, WatchEvent) and e.type == "BOOKMARK"]
    assert [b.metadata.resource_version for b in bookmarks] == ["468", "556"]
    assert all(b.metadata.name == "" for b in bookmarks)
    (expired_line,) = fixture_bytes("api/watch-nodes-too-old-resource-version.jsonl").splitlines()
    status = decoder.decode(expired_line)
    assert isinstance(status, Status)
    assert (status.code, status.reason) == (410, "Expired")
    assert status.message == "too old resource version: 267 (770)"


def test_error_event_is_recognised_even_when_the_view_would_accept_it() -> None:
    """A ConfigMapView has no `status` field, so a Status object decodes 'successfully' as a
    ConfigMapView: the decoder must still report it as an ERROR."""
    (line,) = fixture_bytes("api/watch-nodes-too-old-resource-version.jsonl").splitlines()
    status = WatchDecoder(ConfigMapView).decode(line)
    assert isinstance(status, Status) and status.code == 410


def test_garbage_watch_line_raises() -> None:
    with pytest.raises(msgspec.DecodeError):
        WatchDecoder(NodeView).decode(b'{"type":"ADDED","object":')
    with pytest.raises(msgspec.ValidationError):
        WatchDecoder(NodeView).decode(b'{"type":"ADDED","object":{"metadata":"oops"}}')


# ---------------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T02:07:14Z", dt.datetime(2026, 11, 22, 2, 7, 14, tzinfo=UTC)),
        ("2026-11-22T02:07:14.5Z", dt.datetime(2026, 11, 22, 2, 7, 14, 500000, tzinfo=UTC)),
        ("2026-11-22T02:07:14.123456Z", dt.datetime(2026, 11, 22, 2, 7, 14, 123456, tzinfo=UTC)),
        ("2026-11-22T02:07:14.123456789Z", dt.datetime(2026, 11, 22, 2, 7, 14, 123456, tzinfo=UTC)),
        ("2026-11-22T10:07:14+08:00", dt.datetime(2026, 11, 22, 2, 7, 14, tzinfo=UTC)),
        ("2026-11-22t02:07:14z", dt.datetime(2026, 11, 22, 2, 7, 14, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: dt.datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected and parsed.tzinfo is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-11-22",
        "2026-11-22T02:07:14",
        "2026-13-01T00:00:00Z",
        "2026-11-22 02:07:14Z",
        "yesterday",
    ],
)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time(text)


def test_lease_micro_time_and_format() -> None:
    lease = fixture_json("api/lease-kube-node-lease.json")
    renew = parse_time(lease["spec"]["renewTime"])
    assert renew.microsecond != 0
    assert format_time(
        dt.datetime(2026, 11, 22, 10, 7, 14, 999, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    ) == ("2026-11-22T02:07:14Z")


# ---------------------------------------------------------------------------------- selectors

LABELS = {"app": "web", "tier": "backend", "node-role.kubernetes.io/worker": ""}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("tier", True),
        ("missing", False),
        ("!missing", True),
        ("!tier", False),
        ("tier in (backend,frontend)", True),
        ("tier in (frontend)", False),
        ("tier notin (frontend)", True),
        ("tier notin (backend, frontend)", False),
        ("missing notin (x)", True),
        ("missing in (x)", False),
        ("app=web, tier in (backend), !node-role.kubernetes.io/control-plane", True),
        ("!node-role.kubernetes.io/control-plane,!node-role.kubernetes.io/master", True),
        ("node-role.kubernetes.io/worker", True),
        ("node-role.kubernetes.io/worker=", True),
        ("app=web,tier=frontend", False),
    ],
)
def test_selector_matching(selector: str, matches: bool) -> None:
    assert parse_label_selector(selector).matches(LABELS) is matches


def test_selector_canonical_string_round_trips() -> None:
    sel = parse_label_selector(" app==web , tier in (b,a),!x, y notin (z)")
    assert str(sel) == "app=web,tier in (a,b),!x,y notin (z)"
    assert parse_label_selector(str(sel)) == sel
    assert parse_label_selector("").empty and parse_label_selector("").matches(None)


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        ("app=web,", "empty term"),
        ("app in (a", "missing ')'"),
        ("app in a)", "unmatched ')'"),
        ("app in ()", "empty value set"),
        ("app=w e b", "invalid label value"),
        ("-bad=x", "invalid label key"),
        ("a/b/c=x", "invalid label key"),
        ("app===x", "unexpected '='"),
        ("!app=x", "'!' takes only a label key"),
        ("app (x)", "expected 'key'"),
        ("=x", "missing label key"),
        ("app=" + "v" * 64, "invalid label value"),
    ],
)
def test_selector_errors_name_the_problem(selector: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_label_selector(selector)
    assert fragment in str(info.value)
