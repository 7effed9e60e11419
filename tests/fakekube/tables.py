"""Server-side printing (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`) for kubectl get.

Custom resources get their CRD's additionalPrinterColumns (JSONPath subset: `.a.b`, `.a[0]`,
`.a['b.c']`), built-in kinds a NAME/AGE table. `date` columns print as ages like the real server.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from fakekube.resources import Resource

_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
_STEP = re.compile(r"\.([A-Za-z0-9_$-]+)|\[(\d+)\]|\['([^']*)'\]")


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def jsonpath(obj: Any, path: str) -> Any:
    """Follow a simple JSONPath (`.status.phase`, `.items[0]`, `.metadata.labels['a.b/c']`)."""
    value = obj
    for field, index, quoted in _STEP.findall(path.strip("{}")):
        if index:
            value = (
                value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
            )
        else:
            value = value.get(field or quoted) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """kubectl's human duration: 42s, 5m, 3h, 12d, 2y."""
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - then).total_seconds())
    seconds = max(seconds, 0)
    for unit, size, limit in (("s", 1, 120), ("m", 60, 180), ("h", 3600, 48), ("d", 86400, 730)):
        if seconds < size * limit:
            return f"{seconds // size}{unit}"
    return f"{seconds // (86400 * 365)}y"


def columns(resource: Resource) -> list[dict[str, Any]]:
    custom = list(resource.printer_columns) if resource.custom else []
    return [dict(_NAME_COLUMN), *(custom or [_AGE])]


def _cell(obj: dict[str, Any], column: dict[str, Any]) -> Any:
    value = jsonpath(obj, column["jsonPath"])
    if column.get("type") == "date":
        return age(value)
    return value


def _row(resource: Resource, obj: dict[str, Any], include: str) -> dict[str, Any]:
    cells = [obj["metadata"]["name"]] + [_cell(obj, c) for c in columns(resource)[1:]]
    row: dict[str, Any] = {"cells": cells}
    if include == "Object":
        row["object"] = obj
    elif include != "None":
        row["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }
    return row


def table(
    resource: Resource, objs: list[dict[str, Any]], resource_version: str, include: str = "Metadata"
) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table of the objects."""
    definitions = [
        {
            "name": c["name"],
            "type": c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns(resource)
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": [_row(resource, obj, include) for obj in objs],
    }
