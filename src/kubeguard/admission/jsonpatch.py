"""RFC 6902 JSON Patch: building operations (RFC 6901 pointers) and applying them.

Mutating handlers build patches with these helpers; `apply` is used by tests and by the
simulated cluster to apply a webhook's patch exactly as kube-apiserver would.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

JSONPatchOp = dict[str, Any]


class PatchError(ValueError):
    """A patch does not apply to the document; the message names the operation and path."""


def escape(token: str) -> str:
    """Escape one reference token (RFC 6901 section 4): `~` → `~0`, `/` → `~1`."""
    return token.replace("~", "~0").replace("/", "~1")


def unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def pointer(*tokens: str | int) -> str:
    """Build a JSON pointer from unescaped tokens: pointer("metadata", "labels", "a/b")."""
    return "".join("/" + escape(str(t)) for t in tokens)


def add(path: str, value: Any) -> JSONPatchOp:
    return {"op": "add", "path": path, "value": value}


def replace(path: str, value: Any) -> JSONPatchOp:
    return {"op": "replace", "path": path, "value": value}


def remove(path: str) -> JSONPatchOp:
    return {"op": "remove", "path": path}


def test(path: str, value: Any) -> JSONPatchOp:
    return {"op": "test", "path": path, "value": value}


def set_map_entry(
    parent: dict[str, Any] | None, parent_path: str, key: str, value: Any
) -> list[JSONPatchOp]:
    """Ops that set `parent[key] = value`, creating the map when it is absent.

    Other keys of the map are kept (unlike replacing the whole map).
    """
    if parent is None:
        return [add(parent_path, {key: value})]
    return [add(parent_path + "/" + escape(key), value)]


def _split(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}: must start with '/'")
    return [unescape(t) for t in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r} in {path!r}")
    idx = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if idx > limit:
        raise PatchError(f"array index {idx} out of range in {path!r}")
    return idx


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"path {path!r} does not exist (missing {token!r})")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, path, allow_end=False)]
        else:
            raise PatchError(f"path {path!r} traverses a scalar")
    return node


def _get(doc: Any, path: str) -> Any:
    tokens = _split(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {path!r} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, path, allow_end=False)]
    raise PatchError(f"path {path!r} traverses a scalar")


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _split(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, path, allow_end=True), value)
    else:
        raise PatchError(f"cannot add at {path!r}: parent is a scalar")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    tokens = _split(path)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"cannot remove {path!r}: it does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, path, allow_end=False))
    raise PatchError(f"cannot remove {path!r}: parent is a scalar")


def apply(document: Any, ops: Sequence[JSONPatchOp]) -> Any:
    """Apply `ops` to a deep copy of `document` and return it. Atomic: raises PatchError."""
    doc = copy.deepcopy(document)
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"operation {i} must be an object with 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if not isinstance(path, str):
            raise PatchError(f"operation {i}: 'path' must be a string")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {i} ({kind} {path!r}) has no 'value'")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            doc, _ = _remove(doc, path) if _split(path) else (doc, None)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"operation {i}: test failed at {path!r}")
        elif kind in ("move", "copy"):
            src = op.get("from")
            if not isinstance(src, str):
                raise PatchError(f"operation {i} ({kind}) needs a string 'from'")
            if kind == "move":
                if path.startswith(src + "/"):
                    raise PatchError(f"operation {i}: cannot move {src!r} into its own child")
                doc, value = _remove(doc, src)
            else:
                value = copy.deepcopy(_get(doc, src))
            doc = _add(doc, path, value)
        else:
            raise PatchError(f"operation {i}: unknown op {kind!r}")
    return doc
