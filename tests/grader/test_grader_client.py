"""The trainer's side: ``make_grader``, the in-process fallback, and the HTTP client's retries.

The retry tests put an ``httpx.MockTransport`` (httpx's own test transport) where the network
would be, to script 503s and dropped connections; the real server is covered in
test_grader_service.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from distill_grader import (
    Grader,
    GradeRequestItem,
    GraderError,
    HttpGraderClient,
    LocalGrader,
    make_grader,
)
from distill_grader.client import split_batches

ITEMS = [
    GradeRequestItem(id="a", response=r"\boxed{\frac{1}{2}}", ground_truth="0.5"),
    GradeRequestItem(id="b", response="no answer", ground_truth="1"),
    GradeRequestItem(id="c", response=r"\boxed{3}", ground_truth="4"),
]


def _answer(request: httpx.Request) -> httpx.Response:
    """What a healthy grader would say for whatever ids were sent."""
    ids = [item["id"] for item in json.loads(request.content)["items"]]
    results = [{"id": i, "score": 0.0, "reason": "wrong", "extracted": "9"} for i in ids]
    return httpx.Response(200, json={"results": results})


class Script:
    """A transport handler replaying canned failures, then answering like a healthy grader."""

    def __init__(self, *failures: int | type[Exception]) -> None:
        self.failures = list(failures)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.failures:
            return _answer(request)
        failure = self.failures.pop(0)
        if isinstance(failure, int):
            return httpx.Response(failure, text="scripted failure")
        raise failure("scripted", request=request)


def _client(script: Script, **kwargs: object) -> HttpGraderClient:
    transport = httpx.MockTransport(script)
    return HttpGraderClient("http://grader", backoff_s=0.001, transport=transport, **kwargs)


@pytest.fixture(scope="module")
def local() -> Iterator[LocalGrader]:
    with LocalGrader(workers=2, timeout_s=2.0) as grader:
        yield grader


def test_local_grader_grades_in_process(local: LocalGrader) -> None:
    results = local.grade(ITEMS)
    assert [(r.id, r.score, r.reason, r.extracted) for r in results] == [
        ("a", 1.0, "correct", r"\frac{1}{2}"),
        ("b", 0.0, "no_answer", None),
        ("c", 0.0, "wrong", "3"),
    ]
    assert isinstance(local, Grader)


def test_make_grader_picks_http_when_a_url_is_set() -> None:
    with make_grader("http://grader.example:8000", timeout_s=10.0) as grader:
        assert isinstance(grader, HttpGraderClient)
        assert isinstance(grader, Grader)
    with make_grader(None, timeout_s=1.0) as grader:
        assert isinstance(grader, LocalGrader)
        assert grader.grade(ITEMS[:1])[0].reason == "correct"


def test_retries_5xx_and_dropped_connections_then_succeeds() -> None:
    script = Script(503, httpx.ConnectError, httpx.RemoteProtocolError)
    with _client(script, retries=3) as client:
        results = client.grade(ITEMS)
    assert [r.id for r in results] == ["a", "b", "c"]
    assert len(script.requests) == 4


def test_gives_up_after_the_retries() -> None:
    script = Script(500, 502, 503)
    with _client(script, retries=2) as client, pytest.raises(GraderError, match="3 attempts"):
        client.grade(ITEMS)
    assert len(script.requests) == 3


@pytest.mark.parametrize("failure", [422, 413, httpx.ReadTimeout])
def test_client_errors_and_read_timeouts_are_not_retried(failure: int | type) -> None:
    script = Script(failure)
    with _client(script, retries=3) as client, pytest.raises(GraderError):
        client.grade(ITEMS)
    assert len(script.requests) == 1


def test_batches_are_split_at_max_batch_and_kept_in_order() -> None:
    script = Script()
    items = [GradeRequestItem(id=str(i), response="", ground_truth="1") for i in range(5)]
    with _client(script, max_batch=2) as client:
        assert [r.id for r in client.grade(items)] == ["0", "1", "2", "3", "4"]
    assert [len(json.loads(r.content)["items"]) for r in script.requests] == [2, 2, 1]
    assert client.grade([]) == []


def test_batches_are_split_by_bytes_too() -> None:
    script = Script()
    items = [GradeRequestItem(id=str(i), response="x" * 400, ground_truth="1") for i in range(5)]
    with _client(script, max_body_bytes=1000) as client:
        assert [r.id for r in client.grade(items)] == ["0", "1", "2", "3", "4"]
    sizes = [len(r.content) for r in script.requests]
    assert [len(json.loads(r.content)["items"]) for r in script.requests] == [2, 2, 1]
    assert max(sizes) <= 1000 + len('{"items":[]}')


def test_split_batches_respects_both_limits() -> None:
    assert split_batches([10, 10, 10, 10], max_items=3, max_bytes=100) == [range(0, 3), range(3, 4)]
    assert split_batches([60, 30, 10, 200, 5], max_items=9, max_bytes=100) == [
        range(0, 2), range(2, 3), range(3, 4), range(4, 5)
    ]  # fmt: skip
    assert split_batches([], max_items=3, max_bytes=100) == []


def test_mismatched_result_ids_are_an_error() -> None:
    def wrong_ids(request: httpx.Request) -> httpx.Response:
        results = [{"id": "zzz", "score": 1.0, "reason": "correct", "extracted": "1"}]
        return httpx.Response(200, json={"results": results})

    transport = httpx.MockTransport(wrong_ids)
    client = HttpGraderClient("http://grader", transport=transport)
    with client, pytest.raises(GraderError, match="do not match"):
        client.grade(ITEMS[:1])


def test_lone_surrogates_are_sent_as_valid_json() -> None:
    script = Script()
    item = GradeRequestItem(id="s", response="bad \udcff bytes", ground_truth="1")
    assert item.response == "bad \ufffd bytes"  # cleaned on the way in
    with _client(script) as client:
        client.grade([item])
    sent = json.loads(script.requests[0].content)
    assert sent["items"][0]["response"] == "bad \ufffd bytes"


def test_unreachable_grader_raises_after_retries() -> None:
    client = HttpGraderClient("http://127.0.0.1:9", retries=1, backoff_s=0.001)
    with client, pytest.raises(GraderError, match="2 attempts"):
        client.grade(ITEMS[:1])
