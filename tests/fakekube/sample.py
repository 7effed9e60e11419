"""A small CRD ("Widget", example.dev/v1) exercising every schema feature the fake server emulates.

Used by fakekube's own tests; other test folders should use the real CRDs via `fake_kube`.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes
import pytest

GROUP, VERSION, PLURAL = "example.dev", "v1", "widgets"

_PORTS = {
    "type": "array",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
    "items": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "port": {
                "type": "integer",
                "x-kubernetes-validations": [
                    {"rule": "self >= oldSelf", "message": "port may only grow"}
                ],
            },
        },
    },
}
_SPEC = {
    "type": "object",
    "required": ["size"],
    "x-kubernetes-validations": [
        {
            "rule": "self.size <= self.limit",
            "message": "size must not exceed limit",
            "fieldPath": ".size",
        },
        {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"},
        {"rule": "self.ratio < 1.0", "messageExpression": "'ratio is ' + string(self.ratio)"},
    ],
    "properties": {
        "size": {"type": "integer", "minimum": 1},
        "limit": {"type": "integer", "default": 10},
        "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
        "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "default": 0.5},
        "label": {"type": "string", "maxLength": 8, "pattern": "^[a-z]+$"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "ports": _PORTS,
        "nested": {
            "type": "object",
            "default": {},
            "properties": {"depth": {"type": "integer", "default": 3}},
        },
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "count": {"x-kubernetes-int-or-string": True},
        "note": {"type": "string", "nullable": True},
    },
}
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "kind": "Widget",
            "plural": PLURAL,
            "singular": "widget",
            "shortNames": ["wd"],
            "categories": ["all"],
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": _SPEC,
                            "status": {
                                "type": "object",
                                "properties": {
                                    "phase": {"type": "string"},
                                    "observed": {"type": "integer"},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"size": 1, **spec},
    }


class Widgets:
    """CustomObjectsApi bound to the Widget resource, to keep tests short."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = kubernetes.client.CustomObjectsApi(api)

    def create(self, body: dict[str, Any], namespace: str = "default", **kw: Any) -> dict[str, Any]:
        return self.api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, **kw
        )

    def get(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def patch(self, name: str, body: Any, namespace: str = "default") -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, body
        )

    def patch_status(self, name: str, body: Any, namespace: str = "default") -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, body
        )

    def replace(
        self, name: str, body: dict[str, Any], namespace: str = "default"
    ) -> dict[str, Any]:
        return self.api.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, body
        )

    def replace_status(
        self, name: str, body: dict[str, Any], namespace: str = "default"
    ) -> dict[str, Any]:
        return self.api.replace_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, body
        )

    def delete(self, name: str, namespace: str = "default", **kw: Any) -> dict[str, Any]:
        return self.api.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, **kw
        )


def status_of(exc: pytest.ExceptionInfo[kubernetes.client.ApiException]) -> dict[str, Any]:
    """The `Status` object the server answered with."""
    return json.loads(exc.value.body)
