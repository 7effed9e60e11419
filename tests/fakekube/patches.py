"""The patch kinds the server accepts: JSON merge patch, JSON patch and strategic merge patch.

Strategic merge patch is simplified: it is a JSON merge patch except that lists of objects under
the field names below merge item by item on their merge key (the key's value decides the item),
`$patch: delete` items are removed, `metadata.finalizers` is unioned, and `$setElementOrder/`,
`$retainKeys` and `$deleteFromPrimitiveList/` directives are dropped without being applied. All
other lists are replaced, as by a merge patch. Custom resources reject strategic merge patches
with 415, as the real server does.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from fakekube.errors import ApiError, unsupported_media_type

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"

# Field name -> merge key for lists of objects in the built-in kinds we serve.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
}
_PRIMITIVE_MERGE_LISTS = {"finalizers"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        return "containerPort" if any("containerPort" in item for item in items) else "port"
    return MERGE_KEYS.get(field)


def _strategic_list(field: str, target: list[Any], patch: list[Any]) -> list[Any]:
    if field in _PRIMITIVE_MERGE_LISTS:
        return target + [item for item in patch if item not in target]
    key = _merge_key(field, patch)
    if key is None or not all(isinstance(item, dict) for item in patch + target):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target)
    for item in patch:
        index = next((i for i, old in enumerate(result) if old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """The simplified strategic merge described in the module docstring."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _strategic_list(key, result[key], value)
        elif isinstance(value, list):
            result[key] = _strategic_list(key, [], value)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def apply_patch(target: dict[str, Any], patch: Any, content_type: str, custom: bool) -> Any:
    """Apply a PATCH body of the given Content-Type, or raise the `Status` the server would."""
    media = content_type.split(";")[0].strip()
    if media == MERGE:
        return merge_patch(target, patch)
    if media == JSON_PATCH:
        try:
            return jsonpatch.apply_patch(target, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: {exc}",
            ) from exc
    if media == STRATEGIC and not custom:
        return strategic_merge_patch(target, patch)
    raise unsupported_media_type(media)
