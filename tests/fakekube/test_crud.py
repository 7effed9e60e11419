"""CRUD through the real kubernetes client: metadata bookkeeping, errors, selectors, concurrency."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.client import ApiException, CoreV1Api

from fakekube import FakeKube
from fakekube.sample import GROUP, PLURAL, VERSION, Widgets, status_of, widget


def test_configmap_roundtrip_sets_server_fields(core: CoreV1Api, kube: FakeKube) -> None:
    created = core.create_namespaced_config_map(
        "default", {"metadata": {"name": "cm"}, "data": {"a": "1"}}
    )
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    assert created.metadata.namespace == "default"
    created.data["a"] = "2"
    replaced = core.replace_namespaced_config_map("cm", "default", created)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    assert core.read_namespaced_config_map("cm", "default").data == {"a": "2"}
    assert kube.get("", "v1", "configmaps", "default", "cm")["data"] == {"a": "2"}
    core.delete_namespaced_config_map("cm", "default")
    assert kube.get("", "v1", "configmaps", "default", "cm") is None


def test_not_found_is_a_real_status_object(widgets: Widgets, core: CoreV1Api) -> None:
    with pytest.raises(ApiException) as exc:
        widgets.get("nope")
    assert exc.value.status == 404
    assert status_of(exc) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'widgets.example.dev "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "group": "example.dev", "kind": "widgets"},
        "code": 404,
    }
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map("nope", "default")
    assert status_of(exc)["message"] == 'configmaps "nope" not found'


def test_create_twice_is_already_exists(widgets: Widgets) -> None:
    widgets.create(widget("w"))
    with pytest.raises(ApiException) as exc:
        widgets.create(widget("w"))
    assert exc.value.status == 409
    assert status_of(exc)["reason"] == "AlreadyExists"
    assert status_of(exc)["message"] == 'widgets.example.dev "w" already exists'


def test_resource_version_is_one_global_counter(widgets: Widgets, core: CoreV1Api) -> None:
    first = core.create_namespaced_config_map("default", {"metadata": {"name": "cm"}})
    second = widgets.create(widget("w"))
    third = widgets.patch("w", {"metadata": {"labels": {"a": "b"}}})
    versions = [
        int(first.metadata.resource_version),
        int(second["metadata"]["resourceVersion"]),
        int(third["metadata"]["resourceVersion"]),
    ]
    assert versions == [versions[0], versions[0] + 1, versions[0] + 2]


def test_stale_resource_version_conflicts(widgets: Widgets) -> None:
    stale = widgets.create(widget("w"))
    widgets.patch("w", {"spec": {"size": 2}})
    stale["spec"]["size"] = 3
    with pytest.raises(ApiException) as exc:
        widgets.replace("w", stale)
    assert exc.value.status == 409
    assert status_of(exc)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(exc)["message"]
    del stale["metadata"]["resourceVersion"]
    assert widgets.replace("w", stale)["spec"]["size"] == 3  # unconditional update


def test_generation_tracks_spec_only(widgets: Widgets) -> None:
    assert widgets.create(widget("w"))["metadata"]["generation"] == 1
    assert widgets.patch("w", {"metadata": {"labels": {"x": "y"}}})["metadata"]["generation"] == 1
    assert widgets.patch_status("w", {"status": {"phase": "Up"}})["metadata"]["generation"] == 1
    assert widgets.patch("w", {"spec": {"size": 5}})["metadata"]["generation"] == 2


def test_status_subresource_splits_writes(widgets: Widgets) -> None:
    body = widget("w")
    body["status"] = {"phase": "Ignored"}
    assert "status" not in widgets.create(body)
    obj = widgets.patch("w", {"spec": {"size": 2}, "status": {"phase": "Main"}})
    assert "status" not in obj and obj["spec"]["size"] == 2
    obj = widgets.patch_status("w", {"spec": {"size": 3}, "status": {"phase": "Up"}})
    assert obj["status"] == {"phase": "Up"} and obj["spec"]["size"] == 2
    obj["status"]["observed"] = 1
    assert widgets.replace_status("w", obj)["status"] == {"phase": "Up", "observed": 1}


def test_noop_patch_keeps_resource_version(widgets: Widgets, kube: FakeKube) -> None:
    created = widgets.create(widget("w", size=2))
    again = widgets.patch("w", {"spec": {"size": 2}})
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_label_selectors(core: CoreV1Api) -> None:
    for name, labels in (("a", {"app": "x", "tier": "web"}), ("b", {"app": "y"}), ("c", {})):
        core.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": labels}})

    def names(selector: str) -> list[str]:
        items = core.list_namespaced_config_map("default", label_selector=selector).items
        return [item.metadata.name for item in items]

    assert names("app=x") == ["a"]
    assert names("app!=x") == ["b", "c"]
    assert names("app in (x, y)") == ["a", "b"]
    assert names("app notin (x)") == ["b", "c"]
    assert names("app,tier") == ["a"]
    assert names("!app") == ["c"]
    assert names("app=x,tier=db") == []


def test_field_selectors(core: CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    for namespace in ("default", "other"):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": f"cm-{namespace}"}})
    everywhere = core.list_config_map_for_all_namespaces(field_selector="metadata.name=cm-other")
    assert [(i.metadata.namespace, i.metadata.name) for i in everywhere.items] == [
        ("other", "cm-other")
    ]
    by_namespace = core.list_config_map_for_all_namespaces(
        field_selector="metadata.namespace!=other"
    )
    assert [i.metadata.name for i in by_namespace.items] == ["cm-default"]
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map("default", field_selector="data.a=1")
    assert (
        exc.value.status == 400 and "field label not supported: data.a" in status_of(exc)["message"]
    )


def test_event_field_selector_on_involved_object(core: CoreV1Api) -> None:
    for name, kind in (("e1", "Widget"), ("e2", "Pod")):
        core.create_namespaced_event(
            "default",
            {
                "metadata": {"name": name},
                "reason": "Test",
                "message": name,
                "involvedObject": {"kind": kind, "name": "w", "namespace": "default"},
            },
        )
    selected = core.list_namespaced_event(
        "default", field_selector="involvedObject.name=w,involvedObject.kind=Widget"
    )
    assert [e.message for e in selected.items] == ["e1"]


def test_list_across_namespaces(widgets: Widgets, core: CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    widgets.create(widget("a"))
    widgets.create(widget("b", namespace="other"), namespace="other")
    listed = widgets.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert listed["kind"] == "WidgetList"
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed["items"]] == [
        ("default", "a"),
        ("other", "b"),
    ]


def test_namespace_must_exist(widgets: Widgets) -> None:
    with pytest.raises(ApiException) as exc:
        widgets.create(widget("w", namespace="nowhere"), namespace="nowhere")
    assert exc.value.status == 404 and status_of(exc)["message"] == 'namespaces "nowhere" not found'


def test_names_are_validated_per_kind(core: CoreV1Api) -> None:
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("default", {"metadata": {"name": "1-grader"}, "spec": {}})
    assert exc.value.status == 422
    assert status_of(exc)["message"].startswith(
        'Service "1-grader" is invalid: metadata.name: Invalid value: "1-grader": a DNS-1035 label'
    )
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map("default", {"metadata": {"name": "Bad_Name"}})
    assert "RFC 1123 subdomain" in status_of(exc)["message"]


def test_generate_name(core: CoreV1Api) -> None:
    created = core.create_namespaced_config_map("default", {"metadata": {"generateName": "job-"}})
    assert (
        created.metadata.name.startswith("job-") and len(created.metadata.name) == len("job-") + 5
    )


def test_kubeconfig_namespace_is_created() -> None:
    with FakeKube(namespace="research") as kube, kube.api_client() as api:
        assert CoreV1Api(api).read_namespace("research").metadata.name == "research"
        assert kube.get("", "v1", "namespaces", None, "research") is not None
        assert "namespace: research" in Path(kube.kubeconfig).read_text()
