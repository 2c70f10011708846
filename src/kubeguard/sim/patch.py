"""Patch formats the simulated API server accepts and the admission chain applies.

* RFC 6902 JSON Patch (`application/json-patch+json`, and the `patch` a mutating webhook returns);
* RFC 7386 JSON Merge Patch (`application/merge-patch+json`);
* a strategic merge patch subset (`application/strategic-merge-patch+json`): lists with a known
  patch merge key (conditions by `type`, containers by `name`, ...) are merged element-wise, and
  the `$patch: delete|replace` directives are honoured. Server-side apply bodies are treated as
  merge patches (the simulator keeps no field ownership).
"""

from __future__ import annotations

from typing import Any

from kubeguard.admission.jsonpatch import PatchError as PatchError
from kubeguard.admission.jsonpatch import apply as apply_rfc6902

from .util import deepcopy

# ---------------------------------------------------------------- RFC 6902 JSON Patch
# The framework's implementation, so the sim applies a webhook's patch exactly as kubeguard's
# own tests expect it applied.


def apply_json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 patch to a copy of `doc` and return the result."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    return apply_rfc6902(doc, operations)


# ---------------------------------------------------------------- RFC 7386 merge patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch; returns a new document."""
    if not isinstance(patch, dict):
        return deepcopy(patch)
    result: dict[str, Any] = deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------- strategic merge patch

# patchMergeKey of the list fields kubeguard and the controllers patch (by field name; the
# Kubernetes types use the same key wherever a field name recurs).
_MERGE_KEYS: dict[str, str] = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "ownerReferences": "uid",
    "podIPs": "ip",
    "hostIPs": "ip",
    "addresses": "type",
    "imagePullSecrets": "name",
    "resourceClaims": "name",
}
# Lists of scalars merged as sets.
_SET_LISTS = {"finalizers"}


def apply_strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch (subset, see the module doc); returns a new document."""
    return _smp(target, patch, "")


def _smp(target: Any, patch: Any, field: str) -> Any:
    if not isinstance(patch, dict):
        if isinstance(patch, list) and isinstance(target, list):
            return _smp_list(target, patch, field)
        return deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result: dict[str, Any] = deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            if key.startswith("$setElementOrder/") or key == "$retainKeys":
                continue
            if key.startswith("$deleteFromPrimitiveList/"):
                name = key.split("/", 1)[1]
                if isinstance(result.get(name), list) and isinstance(value, list):
                    result[name] = [x for x in result[name] if x not in value]
                continue
            raise PatchError(f"unknown strategic merge patch directive {key!r}")
        if value is None:
            result.pop(key, None)
            continue
        merged = _smp(result.get(key), value, key)
        if merged is None and isinstance(value, dict) and value.get("$patch") == "delete":
            result.pop(key, None)
        else:
            result[key] = merged
    return result


def _smp_list(target: list[Any], patch: list[Any], field: str) -> list[Any]:
    if field in _SET_LISTS:
        items = list(target)
        items.extend(x for x in patch if x not in items)
        merged: list[Any] = deepcopy(items)
        return merged
    key = _MERGE_KEYS.get(field)
    if key is None or not all(isinstance(x, dict) for x in patch):
        return [
            deepcopy(x) for x in patch if not (isinstance(x, dict) and x.get("$patch") == "delete")
        ]
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [deepcopy(x) for x in patch if x.get("$patch") != "replace"]
    out: list[Any] = deepcopy(target)
    for item in patch:
        if key not in item:
            raise PatchError(f"{field}: every element needs the merge key {key!r}")
        pos = next(
            (i for i, x in enumerate(out) if isinstance(x, dict) and x.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if pos is not None:
                del out[pos]
            continue
        if pos is None:
            out.append(_smp({}, item, field))
        else:
            out[pos] = _smp(out[pos], item, field)
    return out
