"""Graceful shutdown of the real service: SIGTERM lets an in-flight batch finish."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest


def _inflight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("grader_inflight_requests{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("grader_inflight_requests not exported")


@pytest.mark.slow
def test_sigterm_drains_the_in_flight_batch(server_control: tuple, sympy_hang: str) -> None:
    start_server, _ = server_control
    url, process = start_server("--item-timeout-s", "2", "--graceful-timeout-s", "20")
    answers: list[httpx.Response] = []
    body = {
        "items": [
            {"id": "hang", "response": sympy_hang, "ground_truth": "1"},
            *(
                {"id": str(i), "response": rf"\boxed{{{i}}}", "ground_truth": str(i)}
                for i in range(9)
            ),
        ]
    }
    sender = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{url}/v1/grade", json=body, timeout=30))
    )
    try:
        sender.start()
        deadline = time.monotonic() + 10
        while _inflight(url) < 1:  # wait until the batch is being graded
            assert time.monotonic() < deadline, "the batch never became in-flight"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        sender.join(30)
        assert process.wait(timeout=30) == -signal.SIGTERM  # uvicorn re-raises after draining
    finally:
        process.kill()
    assert answers[0].status_code == 200
    reasons = [r["reason"] for r in answers[0].json()["results"]]
    assert reasons == ["timeout"] + ["correct"] * 9
