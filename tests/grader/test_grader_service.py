"""The math-grader service, run for real: ``python -m distill_grader`` on a loopback port.

The module's server has a 1.5 s item deadline, 64 items per request and a 12 MB body cap.
"""

from __future__ import annotations

import json
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from distill_grader import GradeRequestItem, HttpGraderClient
from distill_trainer.batch import RolloutBatch
from distill_trainer.prompts import EncodedPrompt
from distill_trainer.setup import Run
from distill_trainer.tiny import build_tokenizer

REQUEST_DEADLINE_S = 20.0  # every answer, hostile inputs included, must come back within this


@pytest.fixture(scope="module")
def client(grader_server: str) -> Any:
    # Every item travels (no client-side fast path): these tests are about the service.
    with HttpGraderClient(
        grader_server, item_timeout_s=1.5, max_batch=64, fast_path=False
    ) as client:
        yield client


def _items(pairs: list[tuple[str, str]]) -> list[GradeRequestItem]:
    return [
        GradeRequestItem(id=str(i), response=r, ground_truth=g) for i, (r, g) in enumerate(pairs)
    ]


def _post(url: str, content: bytes, **headers: str) -> httpx.Response:
    headers = {"content-type": "application/json", **headers}
    return httpx.post(f"{url}/v1/grade", content=content, headers=headers, timeout=20)


def _metrics(url: str) -> dict[str, float]:
    samples = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_probes(grader_server: str) -> None:
    assert httpx.get(f"{grader_server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{grader_server}/readyz").json() == {"status": "ready"}


def test_the_grading_table_over_http(client: HttpGraderClient, grading_table: list) -> None:
    pairs = [(case.response, case.ground_truth) for case in grading_table]
    results = client.grade(_items(pairs))  # more than 64 items: the client splits the batch
    assert [r.reason for r in results] == [case.reason for case in grading_table]
    assert [r.id for r in results] == [str(i) for i in range(len(grading_table))]
    assert {r.score for r in results if r.reason == "correct"} == {1.0}


def test_hostile_inputs_each_get_a_reason(client: HttpGraderClient, sympy_hang: str) -> None:
    pairs = [
        ("x" * 10_000_000 + r"\boxed{1}", "1"),  # 10 MB
        (r"\boxed{" * 10_000 + "7" + "}" * 10_000, "7"),
        (r"\boxed{" + "{" * 10_000 + "7" + "}" * 10_000 + "}", "7"),
        (sympy_hang, "1"),
        ("\udcff\ud800 lone surrogates \\boxed{5}", "5"),
        (r"\boxed{4}", "4"),
    ]
    results = client.grade(_items(pairs))
    assert [r.reason for r in results] == [
        "too_long", "correct", "parse_error", "timeout", "correct", "correct"
    ]  # fmt: skip
    assert results[1].extracted == "7"
    assert results[4].extracted == "5"


def test_invalid_utf8_bytes_are_graded_as_text(grader_server: str) -> None:
    body = b'{"items": [{"id": "u", "response": "\\\\boxed{5} \xff\xfe\xc3", "ground_truth": "5"}]}'
    response = _post(grader_server, body)
    assert response.status_code == 200
    assert response.json()["results"] == [
        {"id": "u", "score": 1.0, "reason": "correct", "extracted": "5"}
    ]


def test_a_hung_request_does_not_stall_others(grader_server: str, sympy_hang: str) -> None:
    order: list[str] = []

    def post_hung() -> None:
        body = {"items": [{"id": "h", "response": sympy_hang, "ground_truth": "1"}]}
        reason = _post(grader_server, json.dumps(body).encode()).json()["results"][0]["reason"]
        order.append(f"hung:{reason}")

    hung = threading.Thread(target=post_hung)
    hung.start()
    quick = {"items": [{"id": "q", "response": r"\boxed{2}", "ground_truth": "2"}]}
    order.append(
        "quick:" + _post(grader_server, json.dumps(quick).encode()).json()["results"][0]["reason"]
    )
    hung.join(REQUEST_DEADLINE_S)
    assert order == ["quick:correct", "hung:timeout"]
    assert httpx.get(f"{grader_server}/healthz").status_code == 200


def _body(*items: dict[str, Any]) -> bytes:
    return json.dumps({"items": list(items)}).encode()


ITEM = {"id": "a", "response": "x", "ground_truth": "1"}
BAD_REQUESTS = {
    "malformed-json": (b'{"items": [{"id": 1,', ["body", 20], "JSON decode error"),
    "wrong-type": (_body({**ITEM, "id": 1}), ["body", "items", 0, "id"], "valid string"),
    "missing-field": (
        _body({"id": "a", "response": "x"}),
        ["body", "items", 0, "ground_truth"],
        "Field required",
    ),
    "extra-field": (_body({**ITEM, "extra": 1}), ["body", "items", 0, "extra"], "Extra inputs"),
    "bare-list": (json.dumps([ITEM]).encode(), ["body"], "valid dictionary"),
    "too-many-items": (_body(*[ITEM] * 65), ["body", "items"], "at most 64 items"),
}


@pytest.mark.parametrize(("body", "loc", "message"), BAD_REQUESTS.values(), ids=list(BAD_REQUESTS))
def test_bad_requests_get_422_naming_the_field(
    grader_server: str, body: bytes, loc: list, message: str
) -> None:
    response = _post(grader_server, body)
    assert response.status_code == 422
    problem = response.json()["detail"][0]
    assert problem["loc"] == loc
    assert message in problem["msg"]
    assert "input" not in problem  # never echo a (possibly 10 MB) input back


def test_body_over_the_cap_gets_413(grader_server: str) -> None:
    body = json.dumps({"items": [{"id": "a", "response": "x" * 12_500_000, "ground_truth": "1"}]})
    response = _post(grader_server, body.encode())
    assert response.status_code == 413
    assert "12000000 bytes" in response.json()["detail"]


def test_metrics_are_labelled_with_the_job(grader_server: str, client: HttpGraderClient) -> None:
    client.grade(_items([(r"\boxed{1}", "1"), ("nothing", "1")]))
    _post(grader_server, b"{")
    samples = _metrics(grader_server)
    job = 'distilljob="test-job"'
    assert samples[f'grader_requests_total{{{job},status="200"}}'] >= 1
    assert samples[f'grader_requests_total{{{job},status="422"}}'] >= 1
    assert samples[f'grader_items_total{{data_source="math",{job},reason="correct"}}'] >= 1
    assert samples[f'grader_items_total{{data_source="math",{job},reason="no_answer"}}'] >= 1
    for name in [
        "grader_request_duration_seconds_count",
        "grader_item_duration_seconds_count",
        "grader_batch_size_count",
        "grader_pool_restarts_total",
        "grader_inflight_requests",
    ]:
        assert f"{name}{{{job}}}" in samples, name
    assert samples[f"grader_batch_size_count{{{job}}}"] >= 1


def test_items_are_counted_per_data_source(grader_server: str, client: HttpGraderClient) -> None:
    before = _metrics(grader_server)
    items = [
        GradeRequestItem(id="a", response=r"\boxed{72}", ground_truth="72", data_source="gsm8k"),
        GradeRequestItem(id="b", response=r"\boxed{71}", ground_truth="72", data_source="gsm8k"),
        GradeRequestItem(id="c", response=r"\boxed{\frac12}", ground_truth="0.5"),
    ]
    assert [r.reason for r in client.grade(items)] == ["correct", "wrong", "correct"]
    after = _metrics(grader_server)
    job = 'distilljob="test-job"'

    def grown(source: str, reason: str) -> float:
        name = f'grader_items_total{{data_source="{source}",{job},reason="{reason}"}}'
        return after[name] - before.get(name, 0.0)

    assert (grown("gsm8k", "correct"), grown("gsm8k", "wrong"), grown("math", "correct")) == (
        1,
        1,
        1,
    )


@pytest.mark.parametrize("source", ["", "x" * 257])
def test_a_bad_data_source_is_refused_naming_the_field(grader_server: str, source: str) -> None:
    body = {"items": [{"id": "a", "response": "1", "ground_truth": "1", "data_source": source}]}
    response = _post(grader_server, json.dumps(body).encode())
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "items", 0, "data_source"]


def test_openapi_schema_documents_the_batch_format(grader_server: str) -> None:
    schema = httpx.get(f"{grader_server}/openapi.json").json()
    grade = schema["paths"]["/v1/grade"]["post"]
    body_ref = grade["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/GradeRequest"
    assert {"200", "413", "422", "503"} <= set(grade["responses"])
    item = schema["components"]["schemas"]["GradeRequestItem"]
    assert set(item["required"]) == {"id", "response", "ground_truth"}
    result = schema["components"]["schemas"]["GradeResult"]
    assert set(result["properties"]) == {"id", "score", "reason", "extracted"}
    assert httpx.get(f"{grader_server}/docs").status_code == 200


def test_the_trainer_grades_each_response_with_its_prompt_data_source(
    grader_server: str, client: HttpGraderClient
) -> None:
    tokenizer = build_tokenizer()
    prompts = [EncodedPrompt([1], "4", "trainer-gsm8k"), EncodedPrompt([1], "9", "trainer-math")]
    responses = [r"so \boxed{4}", r"so \boxed{5}", r"so \boxed{9}", "no idea"]  # 2 per prompt
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in responses]
    width = max(map(len, ids))
    padded = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids])
    mask = (padded != tokenizer.pad_token_id).float()
    batch = RolloutBatch(padded, mask.long(), mask.long(), mask, torch.tensor([0, 0, 1, 1]))
    # grade() uses only the tokenizer and the grader of the run.
    run = Run("t", None, tokenizer, [], [], 1, None, client, None, None, Path("."), ExitStack())  # type: ignore[arg-type]
    before = _metrics(grader_server)
    assert run.grade(batch, prompts).tolist() == [1.0, 0.0, 1.0, 0.0]
    after = _metrics(grader_server)
    job = 'distilljob="test-job"'
    grown = {
        (source, reason): after[name] - before.get(name, 0.0)
        for source in ("trainer-gsm8k", "trainer-math")
        for reason in ("correct", "wrong", "no_answer")
        if (name := f'grader_items_total{{data_source="{source}",{job},reason="{reason}"}}')
        in after
    }
    assert grown == {
        ("trainer-gsm8k", "correct"): 1,
        ("trainer-gsm8k", "wrong"): 1,
        ("trainer-gsm8k", "no_answer"): 0,
        ("trainer-math", "correct"): 1,
        ("trainer-math", "wrong"): 0,
        ("trainer-math", "no_answer"): 1,
    }
