"""events.k8s.io/v1 and core/v1 Events share one store, as in a real cluster."""

from __future__ import annotations

import json

import httpx
import pytest
from kubernetes.client import ApiClient, ApiException, CoreV1Api, EventsV1Api

from fakekube import FakeKube
from fakekube.sample import status_of

REGARDING = {"apiVersion": "example.dev/v1", "kind": "Widget", "name": "w", "namespace": "default"}


def v1_event(name: str, note: str) -> dict:
    return {
        "metadata": {"name": name},
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "reportingController": "example.dev/widgets",
        "reportingInstance": "op-1",
        "action": "Reconcile",
        "reason": "Started",
        "type": "Normal",
        "note": note,
        "regarding": REGARDING,
    }


def test_events_v1_are_core_events(api: ApiClient, core: CoreV1Api) -> None:
    EventsV1Api(api).create_namespaced_event("default", v1_event("e1", "hello"))
    [event] = core.list_namespaced_event("default", field_selector="involvedObject.name=w").items
    assert (event.message, event.reporting_component, event.involved_object.kind) == (
        "hello",
        "example.dev/widgets",
        "Widget",
    )
    listed = EventsV1Api(api).list_namespaced_event(
        "default", field_selector="regarding.kind=Widget"
    )
    assert [e.note for e in listed.items] == ["hello"]


def test_events_v1_require_their_fields(api: ApiClient) -> None:
    body = v1_event("e1", "x")
    del body["eventTime"], body["action"]
    with pytest.raises(ApiException) as exc:
        EventsV1Api(api).create_namespaced_event("default", body)
    assert status_of(exc)["message"] == (
        'Event.events.k8s.io "e1" is invalid: [eventTime: Required value, action: Required value]'
    )


def test_watch_events_v1_sees_core_writes(kube: FakeKube, core: CoreV1Api) -> None:
    url = f"{kube.url}/apis/events.k8s.io/v1/namespaces/default/events"
    params = {"watch": "true", "fieldSelector": "regarding.name=w", "timeoutSeconds": "5"}
    with httpx.stream("GET", url, params=params) as response:
        core.create_namespaced_event(
            "default", {"metadata": {"name": "e"}, "message": "core", "involvedObject": REGARDING}
        )
        event = json.loads(next(response.iter_lines()))
    assert event["type"] == "ADDED"
    assert event["object"]["apiVersion"] == "events.k8s.io/v1" and event["object"]["note"] == "core"
