"""Patch kinds: JSON merge patch, JSON patch and the simplified strategic merge patch."""

from __future__ import annotations

import httpx
import pytest
from kubernetes.client import ApiClient, ApiException, AppsV1Api, CoreV1Api

from fakekube import FakeKube
from fakekube.patches import merge_patch, strategic_merge_patch
from fakekube.sample import Widgets, widget


def test_merge_patch_follows_rfc7386() -> None:
    target = {"a": {"b": 1, "c": 2}, "list": [1, 2], "gone": True}
    patch = {"a": {"b": None, "d": 3}, "list": [3], "gone": None}
    assert merge_patch(target, patch) == {"a": {"c": 2, "d": 3}, "list": [3]}
    assert target["a"] == {"b": 1, "c": 2}  # not modified in place


def test_strategic_merge_merges_lists_by_key() -> None:
    target = {
        "metadata": {"finalizers": ["a"]},
        "spec": {
            "containers": [{"name": "main", "image": "x:1"}, {"name": "side", "image": "s:1"}],
            "args": ["--a"],
        },
    }
    patch = {
        "metadata": {"finalizers": ["b"]},
        "spec": {
            "$setElementOrder/containers": [{"name": "main"}],
            "containers": [
                {"name": "main", "image": "x:2"},
                {"name": "side", "$patch": "delete"},
                {"name": "new", "image": "n:1"},
            ],
            "args": ["--b"],
        },
    }
    assert strategic_merge_patch(target, patch) == {
        "metadata": {"finalizers": ["a", "b"]},
        "spec": {
            "containers": [{"name": "main", "image": "x:2"}, {"name": "new", "image": "n:1"}],
            "args": ["--b"],
        },
    }


def _json_patch(kube: FakeKube, name: str, ops: list[dict]) -> httpx.Response:
    # The kubernetes client sends every custom-object patch as a merge patch, so go direct.
    return httpx.patch(
        f"{kube.url}/apis/example.dev/v1/namespaces/default/widgets/{name}",
        json=ops,
        headers={"Content-Type": "application/json-patch+json"},
    )


def test_json_patch_on_custom_resource(kube: FakeKube, widgets: Widgets) -> None:
    widgets.create(widget("w", tags=["a"]))
    response = _json_patch(
        kube,
        "w",
        [
            {"op": "add", "path": "/spec/tags/-", "value": "b"},
            {"op": "replace", "path": "/spec/size", "value": 4},
        ],
    )
    assert response.status_code == 200
    assert response.json()["spec"]["tags"] == ["a", "b"] and response.json()["spec"]["size"] == 4
    failed = _json_patch(kube, "w", [{"op": "test", "path": "/spec/size", "value": 99}])
    assert failed.status_code == 422 and widgets.get("w")["spec"]["size"] == 4


def test_json_patch_on_configmap(core: CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    patched = core.patch_namespaced_config_map(  # the client sends a list body as a JSON patch
        "cm",
        "default",
        [{"op": "remove", "path": "/data/a"}, {"op": "add", "path": "/data/b", "value": "2"}],
    )
    assert patched.data == {"b": "2"}


def test_json_patch_with_stale_resource_version_conflicts(widgets: Widgets) -> None:
    created = widgets.create(widget("w"))
    widgets.patch("w", {"spec": {"size": 2}})
    stale = created["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as exc:
        widgets.patch("w", {"metadata": {"resourceVersion": stale}, "spec": {"size": 3}})
    assert exc.value.status == 409


def test_strategic_merge_patch_on_deployment(api: ApiClient) -> None:
    apps = AppsV1Api(api)
    containers = [{"name": "main", "image": "x:1"}, {"name": "side", "image": "s:1"}]
    apps.create_namespaced_deployment(
        "default",
        {
            "metadata": {"name": "d"},
            "spec": {
                "selector": {"matchLabels": {"a": "b"}},
                "template": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": containers},
                },
            },
        },
    )
    patched = apps.patch_namespaced_deployment(  # the client sends strategic merge for dicts
        "d",
        "default",
        {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "x:2"}]}}}},
    )
    images = [(c.name, c.image) for c in patched.spec.template.spec.containers]
    assert images == [("main", "x:2"), ("side", "s:1")]
    assert patched.metadata.generation == 2


def test_strategic_merge_patch_on_custom_resource_is_unsupported(
    kube: FakeKube, widgets: Widgets
) -> None:
    widgets.create(widget("w"))
    response = httpx.patch(
        f"{kube.url}/apis/example.dev/v1/namespaces/default/widgets/w",
        content=b'{"spec": {"size": 2}}',
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert response.status_code == 415
    assert response.json()["reason"] == "UnsupportedMediaType"
