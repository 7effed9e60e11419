"""Watch streams: resourceVersion replay, live events, selector transitions, timeouts, 410."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import kubernetes
import pytest

from fakekube import FakeKube, watch
from fakekube.sample import GROUP, PLURAL, VERSION, Widgets, widget

URL = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"


def events(lines: Iterator[str], count: int) -> list[tuple[str, str, Any]]:
    """The next `count` events as (type, name, spec.size)."""
    seen = []
    for line in lines:
        event = json.loads(line)
        obj = event["object"]
        seen.append((event["type"], obj["metadata"]["name"], obj.get("spec", {}).get("size")))
        if len(seen) == count:
            break
    return seen


def test_watch_replays_from_resource_version(
    widgets: Widgets, api: kubernetes.client.ApiClient
) -> None:
    widgets.create(widget("w"))
    listed = widgets.api.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    widgets.patch("w", {"spec": {"size": 2}})
    widgets.delete("w")
    stream = kubernetes.watch.Watch().stream(
        widgets.api.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "default",
        PLURAL,
        resource_version=listed["metadata"]["resourceVersion"],
        timeout_seconds=1,
    )
    seen = [(e["type"], e["object"]["spec"]["size"]) for e in stream]
    assert seen == [("MODIFIED", 2), ("DELETED", 2)]


def test_watch_without_version_starts_with_current_state(kube: FakeKube, widgets: Widgets) -> None:
    widgets.create(widget("old"))
    with httpx.stream(
        "GET", kube.url + URL, params={"watch": "true", "timeoutSeconds": "5"}
    ) as response:
        lines = response.iter_lines()
        assert events(lines, 1) == [("ADDED", "old", 1)]
        widgets.create(widget("new", size=3))
        widgets.patch("old", {"spec": {"size": 4}})
        assert events(lines, 2) == [("ADDED", "new", 3), ("MODIFIED", "old", 4)]


def test_watch_follows_label_selector_transitions(kube: FakeKube, widgets: Widgets) -> None:
    created = widgets.create(widget("w"))
    params = {
        "watch": "true",
        "labelSelector": "team=a",
        "timeoutSeconds": "5",
        "resourceVersion": created["metadata"]["resourceVersion"],
    }
    with httpx.stream("GET", kube.url + URL, params=params) as response:
        widgets.patch("w", {"metadata": {"labels": {"team": "a"}}})
        widgets.patch("w", {"spec": {"size": 2}})
        widgets.patch("w", {"metadata": {"labels": {"team": "b"}}})
        assert events(response.iter_lines(), 3) == [
            ("ADDED", "w", 1),
            ("MODIFIED", "w", 2),
            ("DELETED", "w", 2),
        ]


def test_watch_ends_after_timeout_seconds(kube: FakeKube) -> None:
    started = time.monotonic()
    response = httpx.get(
        kube.url + URL, params={"watch": "true", "timeoutSeconds": "1"}, timeout=10
    )
    assert response.status_code == 200 and response.text == ""
    assert 0.9 < time.monotonic() - started < 5


def test_watch_from_compacted_history_is_gone(
    kube: FakeKube, widgets: Widgets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "HISTORY_LIMIT", 4)
    for index in range(6):
        widgets.create(widget(f"w{index}"))
    response = httpx.get(kube.url + URL, params={"watch": "true", "resourceVersion": "1"})
    [event] = [json.loads(line) for line in response.text.splitlines()]
    assert (response.status_code, event["type"]) == (200, "ERROR")
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")


def test_initial_events_end_with_a_bookmark(kube: FakeKube, widgets: Widgets) -> None:
    widgets.create(widget("a"))
    params = {
        "watch": "true",
        "sendInitialEvents": "true",
        "allowWatchBookmarks": "true",
        "resourceVersionMatch": "NotOlderThan",
        "timeoutSeconds": "5",
    }
    with httpx.stream("GET", kube.url + URL, params=params) as response:
        lines = response.iter_lines()
        assert events(lines, 1) == [("ADDED", "a", 1)]
        bookmark = json.loads(next(lines))
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
