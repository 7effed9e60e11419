"""Shared data and fixtures of the grader tests: the grading table and a real grader server.

The table (response, ground truth, expected reason) is what the grader must agree with; the
library, the in-process pool and the HTTP service are all checked against it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple

import httpx
import pytest


class Case(NamedTuple):
    response: str
    ground_truth: str
    reason: str


def boxed(answer: str) -> str:
    return f"Some reasoning first.\nSo the result is \\boxed{{{answer}}}."


CORRECT = [
    (boxed(r"\frac{1}{2}"), "0.5"),
    (boxed(r"\dfrac{1}{2}"), r"\frac12"),
    (boxed(r"\tfrac{3}{4}"), "0.75"),
    (boxed("x=3"), "3"),
    (boxed("y = 2x + 1"), "2x+1"),
    (boxed(r"3\%"), "3"),
    (boxed(r"3\%"), "0.03"),
    (boxed(r"50\%"), "0.5"),
    (boxed(r"\text{(B)}"), "B"),
    (boxed("(B)"), "B"),
    (boxed(r"\text{B}"), r"\text{(B)}"),
    (boxed("10^{3}"), "1000"),
    (boxed("2^{10}"), "1024"),
    (boxed("[1,2)"), "[1, 2)"),
    (boxed(r"(-\infty, 2]"), r"x \le 2"),
    (boxed(r"(0, \infty)"), r"(0,\infty)"),
    (boxed(r"x \in [0, 1]"), "[0,1]"),
    (boxed(r"(\frac{1}{2}, 3)"), "(0.5, 3)"),
    (boxed(r"\left(1, 2\right)"), "(1,2)"),
    (boxed("x=1, y=2"), "(1,2)"),
    (boxed(r"\{1,2\}"), r"\{2,1\}"),
    (boxed(r"\{3\}"), "3"),
    (boxed(r"5\text{ cm}"), "5"),
    (boxed(r"5 \mathrm{cm}"), "5"),
    (boxed(r"90^\circ"), "90"),
    (boxed(r"\$5"), "5"),
    (boxed(r"\$1,234.50"), "1234.5"),
    (boxed("1,000"), "1000"),
    (boxed("007"), "7"),
    (boxed("-7"), "-7.0"),
    (boxed("1.5"), r"\frac{3}{2}"),
    (boxed("1/2"), "0.5"),
    (boxed("0.333333"), r"\frac13"),
    (boxed(r"\frac{6}{4}"), r"\frac32"),
    (boxed(r"3\frac{1}{3}"), r"\frac{10}{3}"),
    (boxed(r"\sqrt{2}/2"), r"\frac{\sqrt2}{2}"),
    (boxed(r"\frac{1}{\sqrt{2}}"), r"\frac{\sqrt{2}}{2}"),
    (boxed(r"2\sqrt{3}"), r"\sqrt{12}"),
    (boxed(r"\sqrt[3]{8}"), "2"),
    (boxed(r"\frac{\pi}{2}"), r"\pi/2"),
    (boxed(r"\log_2 8"), "3"),
    (boxed(r"\binom{5}{2}"), "10"),
    (boxed("x^2+2x+1"), "(x+1)^2"),
    (boxed("a+b"), "b+a"),
    (boxed(r"\frac{a}{b}"), "a/b"),
    (boxed(r"\infty"), r"\infty"),
    (boxed(r"\begin{pmatrix}1\\2\end{pmatrix}"), r"\begin{pmatrix}1\\2\end{pmatrix}"),
    (boxed(r"\frac{1}{2}"), "$0.5$"),
    (boxed("0.5"), r"\(\frac12\)"),
    (boxed(" 5 "), "5"),
    (r"\fbox{12}", "12"),
    (r"\boxed 7", "7"),
    (r"\boxed{\boxed{5}}", "5"),
    (r"first \boxed{1}, then on reflection \boxed{2}", "2"),
    (r"\boxed{3} and an unfinished \boxed{4", "3"),
    (r"The answer is $\frac{3}{4}$.", "0.75"),
    ("After all that, the answer is 12. Done.", "12"),
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
    ("**Answer:** 42", "42"),
    ("The answer is 5. But wait, the answer is 6.", "6"),
    ("Answer: 3, no wait, Answer: 4", "4"),
    ("I first thought the answer is 2, but the answer is $\\frac{1}{2}$.", "0.5"),
    (r"so \boxed5.", "5"),
    (r"\boxed 12, as claimed", "12"),
    (boxed(r"1\,000"), "1000"),
    (boxed("1 000"), "1000"),
    (boxed(r"2 \text{ million}"), "2000000"),
    (boxed(r"-2\le x\le 7"), r"x\in[-2,7]"),
    (r"x = \boxed{2} or x = \boxed{3}", "2, 3"),
    ("Final Answer: The largest $n$ is 34.", "34"),
    # An escaped dollar is money inside the math, not its end.
    (r"Final Answer: The final answer is $\$18.90$.", "18.90"),
    (r"Answer: $\$1{,}000$", "1000"),
    # Two prices on the answer's line are not one formula.
    ("The answer is $18. So he pays $18 in total.", "18"),
    ("Answer: $18 per day, i.e. $126 a week", "18"),
    ("#### $18 (he saves $2)", "18"),
    ("The answer is $3 + 4$.", "7"),
]
WRONG = [
    (boxed("2"), "3"),
    (boxed("-5"), "5"),
    (boxed("1000"), "10^{4}"),
    (boxed(r"\frac{1}{3}"), "0.33"),
    (boxed("0.5"), r"\frac{1}{3}"),
    (boxed(r"\pi"), "3.14"),
    (boxed(r"\sqrt{2}"), "2"),
    (boxed("x^2"), "x^3"),
    (boxed("2x"), "2y"),
    (boxed("x=4"), "3"),
    (boxed(r"3\%"), "3.5"),
    (boxed("(2,1)"), "(1,2)"),
    (boxed("[1,2]"), "[1,2)"),
    (boxed(r"\{1,2\}"), r"\{1,2,3\}"),
    (boxed("A"), "B"),
    (boxed(r"\text{(C)}"), "B"),
    (boxed(r"\text{hello}"), "5"),
    (r"\boxed{3} wait, no: \boxed{4}", "3"),
    ("The answer is 7.", "8"),
    ("#### 71", "72"),
    ("The answer is 5. But wait, the answer is 6.", "5"),
    ("Answer: 4. Hmm, let me recheck. Answer: 3", "4"),
    (boxed("2 3"), "23"),
    (boxed("1 2"), "12"),
    (boxed("32, 349"), "32349"),
    (boxed("10100"), "10, 100"),
    (boxed("1234"), "1, 234"),
    (r"x = \boxed{2} or x = \boxed{4}", "2, 3"),
]
NO_ANSWER = [
    ("I think it's 4", "4"),
    ("", "4"),
    (r"\boxed{}", "4"),
    (r"\boxed{5", "5"),
    ("#### Step 2: compute the sum", "2"),
]
PARSE_ERROR = [
    (boxed("5"), ""),
    (boxed("5"), r"\frac{1}{"),
    (boxed("@@@"), "5"),
    (boxed(r"\frac{}{}"), "1"),
    (boxed("{" * 100 + "1" + "}" * 100), "1"),
]
GRADING_TABLE = [
    *(Case(r, g, "correct") for r, g in CORRECT),
    *(Case(r, g, "wrong") for r, g in WRONG),
    *(Case(r, g, "no_answer") for r, g in NO_ANSWER),
    *(Case(r, g, "parse_error") for r, g in PARSE_ERROR),
]

# Takes seconds inside sympy (a power tower of big integers) and ignores signals.
SYMPY_HANG = r"so \boxed{9^{9^{9^{9}}}}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "grading_case" in metafunc.fixturenames:
        ids = [f"{c.reason}-{i}" for i, c in enumerate(GRADING_TABLE)]
        metafunc.parametrize("grading_case", GRADING_TABLE, ids=ids)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"grader exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)  # polling interval of a condition with a deadline
    raise TimeoutError(f"grader at {url} not ready after {deadline_s}s")


def start_server(*flags: str, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen]:
    """``python -m distill_grader`` on a loopback port; returns (base URL, process)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "distill_grader", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", *flags],
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process)
    except BaseException:
        process.kill()
        raise
    return url, process


def stop_server(process: subprocess.Popen) -> int:
    """SIGTERM and wait; uvicorn shuts down gracefully, then re-raises the signal (-15)."""
    process.terminate()
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.fixture
def grading_table() -> list[Case]:
    return GRADING_TABLE


@pytest.fixture
def sympy_hang() -> str:
    return SYMPY_HANG


@pytest.fixture(scope="session")
def server_control() -> tuple:
    """(start_server, stop_server) for tests that need a server of their own."""
    return start_server, stop_server


@pytest.fixture(scope="module")
def grader_server() -> Iterator[str]:
    """A real grader: 1.5 s item deadline, 64 items and 12 MB per request, job 'test-job'."""
    url, process = start_server(
        "--max-batch", "64", "--max-body-bytes", "12000000", "--max-response-chars", "100000",
        env={"GRADER_ITEM_TIMEOUT_S": "1.5", "GRADER_WORKERS": "2", "DISTILL_JOB_NAME": "test-job"},
    )  # fmt: skip
    yield url
    assert stop_server(process) == -signal.SIGTERM
