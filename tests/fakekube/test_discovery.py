"""Discovery documents, server-side tables and the RBAC request log."""

from __future__ import annotations

import datetime

import httpx
from kubernetes.client import CoreV1Api

from fakekube import FakeKube, RequestRecord
from fakekube.sample import GROUP, PLURAL, VERSION, Widgets, widget
from fakekube.tables import age, jsonpath

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def test_discovery_lists_groups_and_resources(kube: FakeKube) -> None:
    assert httpx.get(f"{kube.url}/api").json()["versions"] == ["v1"]
    groups = {g["name"]: g for g in httpx.get(f"{kube.url}/apis").json()["groups"]}
    assert {
        "apps",
        "coordination.k8s.io",
        "events.k8s.io",
        "apiextensions.k8s.io",
        "kopf.dev",
        GROUP,
    } <= set(groups)
    assert groups[GROUP]["preferredVersion"] == {
        "groupVersion": f"{GROUP}/{VERSION}",
        "version": VERSION,
    }
    resources = {
        r["name"]: r for r in httpx.get(f"{kube.url}/apis/{GROUP}/{VERSION}").json()["resources"]
    }
    assert resources[PLURAL]["kind"] == "Widget" and resources[PLURAL]["namespaced"] is True
    assert resources[PLURAL]["shortNames"] == ["wd"] and resources[PLURAL]["categories"] == ["all"]
    assert "watch" in resources[PLURAL]["verbs"]
    assert resources[f"{PLURAL}/status"]["verbs"] == ["get", "patch", "update"]
    core = {r["name"]: r for r in httpx.get(f"{kube.url}/api/v1").json()["resources"]}
    assert core["namespaces"]["namespaced"] is False and core["services"]["shortNames"] == ["svc"]
    assert httpx.get(f"{kube.url}/version").json()["minor"] == "33"


def test_unknown_paths_are_not_found(kube: FakeKube) -> None:
    assert httpx.get(f"{kube.url}/apis/nope.dev/v1").status_code == 404
    response = httpx.get(f"{kube.url}/apis/{GROUP}/{VERSION}/namespaces/default/gizmos")
    assert response.status_code == 404 and response.json()["reason"] == "NotFound"
    assert httpx.get(f"{kube.url}/metrics").json()["kind"] == "Status"
    assert httpx.delete(f"{kube.url}/apis").json()["reason"] == "MethodNotAllowed"


def test_request_log_records_rbac_verbs(kube: FakeKube, widgets: Widgets, core: CoreV1Api) -> None:
    widgets.create(widget("w"))
    widgets.get("w")
    widgets.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    widgets.patch("w", {"spec": {"size": 2}})
    widgets.patch_status("w", {"status": {"phase": "Up"}})
    widgets.replace("w", widgets.get("w"))
    httpx.get(
        f"{kube.url}/apis/{GROUP}/{VERSION}/{PLURAL}", params={"watch": "1", "timeoutSeconds": "0"}
    )
    widgets.delete("w")
    core.delete_collection_namespaced_config_map("default")
    record = RequestRecord
    assert kube.requests == [
        record("create", GROUP, PLURAL, None, "default", None),
        record("get", GROUP, PLURAL, None, "default", "w"),
        record("list", GROUP, PLURAL, None, None, None),
        record("patch", GROUP, PLURAL, None, "default", "w"),
        record("patch", GROUP, PLURAL, "status", "default", "w"),
        record("get", GROUP, PLURAL, None, "default", "w"),
        record("update", GROUP, PLURAL, None, "default", "w"),
        record("watch", GROUP, PLURAL, None, None, None),
        record("delete", GROUP, PLURAL, None, "default", "w"),
        record("deletecollection", "", "configmaps", None, "default", None),
    ]
    assert kube.requests[4].rbac_resource == f"{PLURAL}/status"
    kube.clear_requests()
    assert kube.requests == []


def test_table_uses_printer_columns(kube: FakeKube, widgets: Widgets) -> None:
    widgets.create(widget("w", size=3))
    widgets.patch_status("w", {"status": {"phase": "Up"}})
    table = httpx.get(
        f"{kube.url}/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}", headers={"Accept": TABLE}
    ).json()
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size", "Phase", "Age"]
    [row] = table["rows"]
    assert row["cells"][:3] == ["w", 3, "Up"] and row["cells"][3].endswith("s")
    assert row["object"]["kind"] == "PartialObjectMetadata"
    configmaps = httpx.get(f"{kube.url}/api/v1/namespaces", headers={"Accept": TABLE}).json()
    assert [c["name"] for c in configmaps["columnDefinitions"]] == ["Name", "Age"]


def test_jsonpath_and_age() -> None:
    obj = {"a": {"b": [{"c": 1}], "d.e": "x"}}
    assert jsonpath(obj, ".a.b[0].c") == 1 and jsonpath(obj, ".a['d.e']") == "x"
    assert jsonpath(obj, ".a.missing.c") is None
    now = datetime.datetime(2025, 1, 2, tzinfo=datetime.UTC)
    assert [
        age(t, now)
        for t in ("2025-01-01T23:59:30Z", "2025-01-01T23:00:00Z", "2024-12-30T00:00:00Z")
    ] == ["30s", "60m", "3d"]
