"""RFC 6902 JSON Patch: the builders and `apply`, including the RFC's Appendix A examples."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeguard.admission import jsonpatch as jp
from kubeguard.admission.jsonpatch import PatchError, apply

# --- builders ------------------------------------------------------------------------------------


def test_pointer_escapes_tokens() -> None:
    assert jp.pointer("metadata", "labels", "app.kubernetes.io/name") == (
        "/metadata/labels/app.kubernetes.io~1name"
    )
    assert jp.pointer("a~b", "c/d~1") == "/a~0b/c~1d~01"
    assert jp.pointer("spec", "containers", 0, "env", "-") == "/spec/containers/0/env/-"
    assert jp.pointer() == ""


@given(st.text())
def test_escape_round_trips(token: str) -> None:
    assert jp.unescape(jp.escape(token)) == token
    assert "/" not in jp.escape(token)


def test_op_builders() -> None:
    assert jp.add("/a", 1) == {"op": "add", "path": "/a", "value": 1}
    assert jp.replace("/a", [1]) == {"op": "replace", "path": "/a", "value": [1]}
    assert jp.remove("/a") == {"op": "remove", "path": "/a"}
    assert jp.test("/a", None) == {"op": "test", "path": "/a", "value": None}


def test_set_map_entry_creates_the_map_or_adds_one_key() -> None:
    pod: dict[str, Any] = {"metadata": {"name": "p"}}
    ops = jp.set_map_entry(None, "/metadata/labels", "app.kubernetes.io/name", "web")
    assert ops == [
        {"op": "add", "path": "/metadata/labels", "value": {"app.kubernetes.io/name": "web"}}
    ]
    assert apply(pod, ops)["metadata"]["labels"] == {"app.kubernetes.io/name": "web"}

    pod["metadata"]["labels"] = {"keep": "me"}
    ops = jp.set_map_entry(pod["metadata"]["labels"], "/metadata/labels", "a/b", "c")
    assert ops == [{"op": "add", "path": "/metadata/labels/a~1b", "value": "c"}]
    assert apply(pod, ops)["metadata"]["labels"] == {"keep": "me", "a/b": "c"}


# --- RFC 6902 Appendix A -------------------------------------------------------------------------

APPENDIX_A: list[tuple[str, Any, list[dict[str, Any]], Any]] = [
    ("A.1 add an object member", {"foo": "bar"},
     [{"op": "add", "path": "/baz", "value": "qux"}], {"baz": "qux", "foo": "bar"}),
    ("A.2 add an array element", {"foo": ["bar", "baz"]},
     [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
    ("A.3 remove an object member", {"baz": "qux", "foo": "bar"},
     [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ("A.4 remove an array element", {"foo": ["bar", "qux", "baz"]},
     [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    ("A.5 replace a value", {"baz": "qux", "foo": "bar"},
     [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo", "foo": "bar"}),
    ("A.6 move a value",
     {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ("A.7 move an array element", {"foo": ["all", "grass", "cows", "eat"]},
     [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ("A.8 test a value: success", {"baz": "qux", "foo": ["a", 2, "c"]},
     [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
    ("A.10 add a nested member object", {"foo": "bar"},
     [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
     {"foo": "bar", "child": {"grandchild": {}}}),
    ("A.11 ignore unrecognized elements", {"foo": "bar"},
     [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}], {"foo": "bar", "baz": "qux"}),
    ("A.14 ~ escape ordering", {"/": 9, "~1": 10},
     [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
    ("A.16 add an array value", {"foo": ["bar"]},
     [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}], {"foo": ["bar", ["abc", "def"]]}),
]  # fmt: skip

APPENDIX_A_ERRORS: list[tuple[str, Any, list[dict[str, Any]], str]] = [
    ("A.9 test a value: error", {"baz": "qux"},
     [{"op": "test", "path": "/baz", "value": "bar"}], "test failed at '/baz'"),
    ("A.12 add to a nonexistent target", {"foo": "bar"},
     [{"op": "add", "path": "/baz/bat", "value": "qux"}], "does not exist"),
    ("A.15 comparing strings and numbers", {"/": 9, "~1": 10},
     [{"op": "test", "path": "/~01", "value": "10"}], "test failed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "doc", "ops", "expected"), APPENDIX_A, ids=[c[0] for c in APPENDIX_A]
)
def test_rfc6902_appendix_a(case: str, doc: Any, ops: list[dict[str, Any]], expected: Any) -> None:
    before = copy.deepcopy(doc)
    assert apply(doc, ops) == expected
    assert doc == before  # the input is never modified


@pytest.mark.parametrize(
    ("case", "doc", "ops", "message"), APPENDIX_A_ERRORS, ids=[c[0] for c in APPENDIX_A_ERRORS]
)
def test_rfc6902_appendix_a_errors(
    case: str, doc: Any, ops: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(PatchError, match=message):
        apply(doc, ops)


# --- more edge cases -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "ops", "message"),
    [
        ({"a": [1]}, [{"op": "add", "path": "/a/01", "value": 0}], "invalid array index '01'"),
        ({"a": [1]}, [{"op": "add", "path": "/a/3", "value": 0}], "out of range"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/-"}], "invalid array index '-'"),
        ({"a": [1]}, [{"op": "replace", "path": "/a/1", "value": 0}], "out of range"),
        ({"a": 1}, [{"op": "remove", "path": "/b"}], "does not exist"),
        ({"a": 1}, [{"op": "replace", "path": "/b", "value": 2}], "does not exist"),
        ({"a": 1}, [{"op": "add", "path": "a", "value": 2}], "must start with '/'"),
        ({"a": 1}, [{"op": "add", "path": "/a/b", "value": 2}], "parent is a scalar"),
        ({"a": 1}, [{"op": "add", "path": "/b"}], "has no 'value'"),
        ({"a": 1}, [{"op": "frob", "path": "/a"}], "unknown op 'frob'"),
        ({"a": 1}, [{"path": "/a"}], "must be an object with 'op' and 'path'"),
        ({"a": 1}, [{"op": "move", "path": "/b"}], "needs a string 'from'"),
        ({"a": {"b": 1}}, [{"op": "move", "from": "/a", "path": "/a/c"}], "into its own child"),
        ({"a": 1}, [{"op": "remove", "path": ""}], "cannot remove the whole document"),
    ],
)
def test_patch_errors_name_the_problem(doc: Any, ops: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(PatchError, match=message):
        apply(doc, ops)


def test_apply_is_atomic() -> None:
    doc = {"a": 1, "list": [1, 2]}
    with pytest.raises(PatchError):
        apply(doc, [{"op": "add", "path": "/b", "value": 2}, {"op": "remove", "path": "/zzz"}])
    assert doc == {"a": 1, "list": [1, 2]}


def test_whole_document_replace_copy_and_value_isolation() -> None:
    assert apply({"a": 1}, [{"op": "replace", "path": "", "value": [1]}]) == [1]
    assert apply({"a": 1}, [{"op": "add", "path": "", "value": {"b": 2}}]) == {"b": 2}
    out = apply({"a": {"x": [1]}}, [{"op": "copy", "from": "/a", "path": "/b"}])
    out["b"]["x"].append(2)
    assert out["a"] == {"x": [1]}  # a copy, not an alias
    value = {"deep": [1]}
    out = apply({}, [{"op": "add", "path": "/v", "value": value}])
    value["deep"].append(2)
    assert out == {"v": {"deep": [1]}}


def test_add_env_var_to_a_container_like_a_mutating_webhook() -> None:
    pod = {"spec": {"containers": [{"name": "app"}, {"name": "side", "env": [{"name": "A"}]}]}}
    ops = [
        jp.add(jp.pointer("spec", "containers", 0, "env"), [{"name": "INDEX", "value": "2"}]),
        jp.add(jp.pointer("spec", "containers", 1, "env", "-"), {"name": "INDEX", "value": "2"}),
    ]
    out = apply(pod, ops)
    assert out["spec"]["containers"][0]["env"] == [{"name": "INDEX", "value": "2"}]
    assert out["spec"]["containers"][1]["env"] == [{"name": "A"}, {"name": "INDEX", "value": "2"}]
