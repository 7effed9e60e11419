"""Deletion: finalizers, ownerReference garbage collection, namespaces and CRDs."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import ApiClient, ApiException, ApiextensionsV1Api, CoreV1Api

from fakekube import FakeKube
from fakekube.sample import GROUP, PLURAL, VERSION, WIDGET_CRD, Widgets, status_of, widget


def owned_configmap(core: CoreV1Api, name: str, *owners: dict[str, Any]) -> None:
    refs = [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Widget",
            "name": o["metadata"]["name"],
            "uid": o["metadata"]["uid"],
        }
        for o in owners
    ]
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": name, "ownerReferences": refs}}
    )


def configmap(kube: FakeKube, name: str) -> dict[str, Any] | None:
    return kube.get("", "v1", "configmaps", "default", name)


def test_background_gc_deletes_dependents_of_a_deleted_owner(
    kube: FakeKube, widgets: Widgets, core: CoreV1Api
) -> None:
    owner, other = widgets.create(widget("owner")), widgets.create(widget("other"))
    owned_configmap(core, "only-child", owner)
    owned_configmap(core, "shared-child", owner, other)
    widgets.delete("owner")
    kube.wait_for(lambda: configmap(kube, "only-child") is None)
    shared = kube.wait_for(
        lambda: (
            (cm := configmap(kube, "shared-child"))
            and len(cm["metadata"]["ownerReferences"]) == 1
            and cm
        )
    )
    assert shared["metadata"]["ownerReferences"][0]["uid"] == other["metadata"]["uid"]


def test_orphan_policy_keeps_dependents(kube: FakeKube, widgets: Widgets, core: CoreV1Api) -> None:
    owned_configmap(core, "child", widgets.create(widget("owner")))
    widgets.delete("owner", propagation_policy="Orphan")
    kube.wait_for(
        lambda: "ownerReferences" not in (configmap(kube, "child") or {"metadata": {}})["metadata"]
    )
    assert configmap(kube, "child") is not None


def test_foreground_deletes_dependents_first(
    kube: FakeKube, widgets: Widgets, core: CoreV1Api
) -> None:
    owned_configmap(core, "child", widgets.create(widget("owner")))
    widgets.delete("owner", propagation_policy="Foreground")
    assert configmap(kube, "child") is None


def test_finalizers_hold_deletion_until_removed(kube: FakeKube, widgets: Widgets) -> None:
    body = widget("w")
    body["metadata"]["finalizers"] = ["example.dev/cleanup"]
    widgets.create(body)
    marked = widgets.delete("w")
    assert marked["metadata"]["deletionTimestamp"]
    assert widgets.get("w")["metadata"]["finalizers"] == ["example.dev/cleanup"]
    with pytest.raises(ApiException) as exc:
        widgets.patch("w", {"metadata": {"finalizers": ["example.dev/cleanup", "new"]}})
    assert "no new finalizers can be added" in status_of(exc)["message"]
    widgets.patch("w", {"metadata": {"finalizers": None}})
    assert kube.get(GROUP, VERSION, PLURAL, "default", "w") is None


def test_deleting_a_namespace_deletes_its_objects(kube: FakeKube, core: CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map("doomed", {"metadata": {"name": "cm"}})
    core.delete_namespace("doomed")
    kube.wait_for(lambda: kube.get("", "v1", "configmaps", "doomed", "cm") is None)


def test_crd_registration_serves_and_unserves_the_kind(api: ApiClient, core: CoreV1Api) -> None:
    crd = {**WIDGET_CRD, "metadata": {"name": "gadgets.example.dev"}}
    crd["spec"] = {**crd["spec"], "names": {"kind": "Gadget", "plural": "gadgets"}}
    extensions = ApiextensionsV1Api(api)
    created = extensions.create_custom_resource_definition(crd)
    assert {c.type for c in created.status.conditions} == {"Established", "NamesAccepted"}
    widgets = Widgets(api)
    gadget = {**widget("g"), "kind": "Gadget"}
    widgets.api.create_namespaced_custom_object(GROUP, VERSION, "default", "gadgets", gadget)
    extensions.delete_custom_resource_definition("gadgets.example.dev")
    with pytest.raises(ApiException) as exc:
        widgets.api.list_namespaced_custom_object(GROUP, VERSION, "default", "gadgets")
    assert exc.value.status == 404


def test_crd_name_must_be_plural_dot_group(api: ApiClient) -> None:
    crd = {**WIDGET_CRD, "metadata": {"name": "widget.example.dev"}}
    with pytest.raises(ApiException) as exc:
        ApiextensionsV1Api(api).create_custom_resource_definition(crd)
    assert status_of(exc)["message"] == (
        'CustomResourceDefinition.apiextensions.k8s.io "widget.example.dev" is invalid: '
        'metadata.name: Invalid value: "widget.example.dev": '
        'must be spec.names.plural+"."+spec.group'
    )
