"""Constants and small functions shared by the chart tests (`from chart.helpers import ...`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "distill-operator"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
RELEASE_NAMESPACE = "distill-system"
_TYPE_META = {"apiVersion", "kind", "metadata"}


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The rendered objects of one kind (and name)."""
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def crd_schemas(paths: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema for every served version of the CRDs in `paths`."""
    schemas = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for crd in yaml.safe_load_all(f):
                if not crd:
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    key = (f"{group}/{version['name']}", kind)
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys that a structural schema does not declare (a plain JSON-schema check accepts them)."""
    if isinstance(obj, list) and "items" in schema:
        return [
            err
            for i, item in enumerate(obj)
            for err in unknown_fields(item, schema["items"], f"{path}[{i}]")
        ]
    if not isinstance(obj, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    properties = schema.get("properties")
    if properties is None:
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return [e for k, v in obj.items() for e in unknown_fields(v, extra, f"{path}.{k}")]
        return []
    implicit = _TYPE_META if path == "" else set()  # the API server's, not the CRD's
    errors = [f"{path}.{k}" for k in obj if k not in properties and k not in implicit]
    for key, value in obj.items():
        if key in properties and key not in implicit:
            errors += unknown_fields(value, properties[key], f"{path}.{key}")
    return errors
