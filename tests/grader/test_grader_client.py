"""The trainer's side: ``make_grader``, the in-process fallback, and the HTTP client.

The retry tests put an ``httpx.MockTransport`` (httpx's own test transport) where the network
would be, to script 503s and dropped connections. How requests spread over connections is seen
from a stand-in grader on a real loopback socket (``http.server``); the real service is covered
in test_grader_service.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
from distill_grader.client import request_timeout_s, split_batches

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
    """A client whose every item travels (no fast path): these tests are about the transport."""
    transport = httpx.MockTransport(script)
    kwargs.setdefault("fast_path", False)
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
        assert grader.item_timeout_s == 10.0  # each request's timeout grows from it
    with make_grader(None, timeout_s=1.0) as grader:
        assert isinstance(grader, LocalGrader)
        assert grader.grade(ITEMS[:1])[0].reason == "correct"


def test_retries_5xx_and_dropped_connections_then_succeeds() -> None:
    script = Script(503, httpx.ConnectError, httpx.RemoteProtocolError)
    with _client(script) as client:
        results = client.grade(ITEMS)
    assert [r.id for r in results] == ["a", "b", "c"]
    assert len(script.requests) == 4


def test_keeps_retrying_a_restarting_grader_within_the_time_budget() -> None:
    # A pod restart refuses connections and answers 503 for many seconds, not for 3 attempts.
    script = Script(*[httpx.ConnectError, 503] * 10)
    with _client(script, retry_budget_s=60.0, max_backoff_s=0.001) as client:
        assert [r.id for r in client.grade(ITEMS)] == ["a", "b", "c"]
    assert len(script.requests) == 21


def test_gives_up_once_the_retry_budget_is_spent() -> None:
    script = Script(*[503] * 1000)
    spent = pytest.raises(GraderError, match=r"still failing after \d+ attempts.*HTTP 503")
    with _client(script, retry_budget_s=0.05) as client, spent:
        client.grade(ITEMS)
    assert 2 <= len(script.requests) < 1000
    script = Script(500, 502)
    with _client(script, retry_budget_s=0) as client, pytest.raises(GraderError, match="1 att"):
        client.grade(ITEMS)
    assert len(script.requests) == 1


@pytest.mark.parametrize("failure", [422, 413, httpx.ReadTimeout])
def test_client_errors_and_read_timeouts_are_not_retried(failure: int | type) -> None:
    script = Script(failure)
    with _client(script) as client, pytest.raises(GraderError):
        client.grade(ITEMS)
    assert len(script.requests) == 1


def test_request_timeout_scales_with_its_items() -> None:
    assert request_timeout_s(128, item_timeout_s=10.0) == 30.0 + 1280.0
    assert request_timeout_s(128, item_timeout_s=10.0, server_workers=2, base_s=5.0) == 645.0
    assert request_timeout_s(3, item_timeout_s=10.0, server_workers=2, base_s=0.0) == 20.0
    script = Script()
    items = [GradeRequestItem(id=str(i), response="", ground_truth="1") for i in range(5)]
    with _client(script, item_timeout_s=10.0, base_timeout_s=30.0, max_batch=3) as client:
        client.grade(items)
    read_timeouts = sorted(r.extensions["timeout"]["read"] for r in script.requests)
    assert read_timeouts == [30.0 + 2 * 10.0, 30.0 + 3 * 10.0]


def test_requests_run_concurrently_and_results_keep_request_order() -> None:
    last_answered = threading.Event()

    def first_waits_for_last(request: httpx.Request) -> httpx.Response:
        ids = [item["id"] for item in json.loads(request.content)["items"]]
        if ids == ["0"] and not last_answered.wait(timeout=10):
            return httpx.Response(400, text="request 0 was not in flight with request 3")
        response = _answer(request)
        if ids == ["3"]:
            last_answered.set()
        return response

    items = [GradeRequestItem(id=str(i), response="", ground_truth="1") for i in range(4)]
    transport = httpx.MockTransport(first_waits_for_last)
    with HttpGraderClient(
        "http://grader", max_batch=1, concurrency=4, transport=transport, fast_path=False
    ) as c:
        assert [r.id for r in c.grade(items)] == ["0", "1", "2", "3"]


def test_batches_are_split_at_max_batch_and_kept_in_order() -> None:
    script = Script()
    items = [GradeRequestItem(id=str(i), response="", ground_truth="1") for i in range(5)]
    with _client(script, max_batch=2) as client:
        assert [r.id for r in client.grade(items)] == ["0", "1", "2", "3", "4"]
        assert client.grade([]) == []
    sent = sorted(tuple(i["id"] for i in json.loads(r.content)["items"]) for r in script.requests)
    assert sent == [("0", "1"), ("2", "3"), ("4",)]


def test_batches_are_split_by_bytes_too() -> None:
    script = Script()
    items = [GradeRequestItem(id=str(i), response="x" * 400, ground_truth="1") for i in range(5)]
    with _client(script, max_body_bytes=1000) as client:
        assert [r.id for r in client.grade(items)] == ["0", "1", "2", "3", "4"]
    sizes = [len(r.content) for r in script.requests]
    assert sorted(len(json.loads(r.content)["items"]) for r in script.requests) == [1, 2, 2]
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
    client = HttpGraderClient("http://grader", transport=transport, fast_path=False)
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
    client = HttpGraderClient(
        "http://127.0.0.1:9", retry_budget_s=0.2, backoff_s=0.001, fast_path=False
    )
    with client, pytest.raises(GraderError, match=r"\d+ attempts.*ConnectError"):
        client.grade(ITEMS[:1])


@pytest.mark.parametrize(
    ("setting", "value"),
    [("item_timeout_s", 0), ("max_batch", 0), ("concurrency", 0), ("server_workers", 0),
     ("retry_budget_s", -1), ("backoff_s", -0.5)],
)  # fmt: skip
def test_invalid_client_settings_name_the_field(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{setting} must be"):
        HttpGraderClient("http://grader", **{setting: value})


class _StandInGrader(ThreadingHTTPServer):
    """Answers like a healthy grader on a real socket; records which connection each request
    came on, and can hold every request until ``hold`` of them are in flight together."""

    daemon_threads = True

    def __init__(self, port: int = 0, hold: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _StandInHandler)
        self.connections = itertools.count()
        self.requests: list[tuple[int, list[str]]] = []  # (connection number, item ids)
        self.barrier = threading.Barrier(hold, timeout=10) if hold else None
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _StandInHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive allowed: reusing connections is the client's call
    server: _StandInGrader

    def setup(self) -> None:
        super().setup()
        self.connection_number = next(self.server.connections)  # one handler per connection

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        ids = [item["id"] for item in json.loads(body)["items"]]
        self.server.requests.append((self.connection_number, ids))
        status = 200
        if self.server.barrier is not None:
            try:
                self.server.barrier.wait()
            except threading.BrokenBarrierError:
                status = 400  # the requests did not arrive together
        results = [{"id": i, "score": 0.0, "reason": "wrong", "extracted": "9"} for i in ids]
        payload = json.dumps({"results": results}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: object) -> None:
        pass


def test_a_batch_is_spread_over_concurrent_fresh_connections() -> None:
    # kube-proxy balances connections: requests on one kept-alive connection all reach one pod.
    server = _StandInGrader(hold=4)
    items = [GradeRequestItem(id=str(i), response="", ground_truth="1") for i in range(8)]
    try:
        with HttpGraderClient(
            server.url, max_batch=2, concurrency=4, retry_budget_s=0, fast_path=False
        ) as client:
            assert [r.id for r in client.grade(items)] == [str(i) for i in range(8)]
            assert [r.id for r in client.grade(items)] == [str(i) for i in range(8)]
    finally:
        server.stop()
    assert len(server.requests) == 8  # two batches of four requests, each held until all came
    assert len({connection for connection, _ in server.requests}) == 8


class _RetryLogged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retry" in record.getMessage():
            self.seen.set()


def test_a_grader_that_comes_back_on_the_same_address_is_waited_for() -> None:
    gone = _StandInGrader()
    url, port = gone.url, gone.server_address[1]
    gone.stop()  # the pod is being replaced: connections are refused
    retried, logger = _RetryLogged(), logging.getLogger("distill_grader.client")
    logger.addHandler(retried)
    client = HttpGraderClient(
        url, retry_budget_s=60.0, backoff_s=0.01, max_backoff_s=0.05, fast_path=False
    )
    try:
        with ThreadPoolExecutor(1) as trainer:
            grading = trainer.submit(client.grade, ITEMS)
            assert retried.seen.wait(timeout=10), "the client never retried"
            back = _StandInGrader(port=port)
            try:
                assert [r.id for r in grading.result(timeout=30)] == ["a", "b", "c"]
            finally:
                back.stop()
    finally:
        logger.removeHandler(retried)
        client.close()
