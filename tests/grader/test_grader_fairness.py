"""Fair scheduling in the worker pool: no request waits behind another's slow items, a request
budget bounds a whole request, and a pool replacing workers stays ready.

The slow items are real sympy work that ignores signals (``sympy_hang``). Waits are on conditions
or futures with deadlines; the only wall-clock assertions are upper bounds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from distill_grader.pool import GradingPool
from distill_grader.schema import Reason

ITEM_DEADLINE_S = 3.0
REQUEST_BUDGET_S = 7.0
PREEMPT_AFTER_S = 0.5
# Items that need sympy (~10 ms each), so that a batch of them takes a while to grade.
SYMPY_ITEMS = [(f"so \\boxed{{\\frac{{{i}}}{{{i + 1}}}}}", f"{i}/{i + 1}") for i in range(1, 401)]


@pytest.fixture(scope="module")
def pool() -> Iterator[GradingPool]:
    with GradingPool(
        workers=2,
        item_timeout_s=ITEM_DEADLINE_S,
        request_timeout_s=REQUEST_BUDGET_S,
        preempt_after_s=PREEMPT_AFTER_S,
    ) as pool:
        assert pool.wait_ready(60)
        yield pool


def _wait_for(condition, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)  # polling interval of a condition with a deadline


def _busy_workers(pool: GradingPool) -> int:
    return sum(state.busy_s is not None for state in pool.worker_states())


def test_a_one_item_request_does_not_wait_behind_six_deadline_items(
    pool: GradingPool, sympy_hang: str
) -> None:
    assert pool.wait_ready(30)
    preemptions = pool.preemptions
    slow = pool.submit([(sympy_hang, str(i)) for i in range(6)])
    _wait_for(lambda: _busy_workers(pool) == 2)  # both workers are on the slow request
    sent = time.monotonic()
    quick = pool.submit([(r"so \boxed{\frac{1}{2}}", "0.5")])
    (answer,) = quick.result(timeout=4 * ITEM_DEADLINE_S)
    waited = time.monotonic() - sent
    print(f"1-item request answered in {waited:.2f}s beside 6 items of {ITEM_DEADLINE_S:g}s")
    assert answer.verdict.reason == Reason.CORRECT
    assert waited < ITEM_DEADLINE_S / 2  # well under one item deadline
    assert not slow.done()  # it was not served first: it was overtaken
    assert pool.preemptions == preemptions + 1
    results = slow.result(timeout=REQUEST_BUDGET_S + 30)
    assert [r.verdict.reason for r in results] == [Reason.TIMEOUT] * 6
    assert [r.verdict.extracted for r in results] == ["9^{9^{9^{9}}}"] * 6


def test_a_request_past_its_budget_gets_timeout_for_the_rest(
    pool: GradingPool, sympy_hang: str
) -> None:
    assert pool.wait_ready(30)
    quick = [(f"so \\boxed{{{i}}}", str(i)) for i in range(10)]
    started = time.monotonic()
    # Ten deadline items on two workers would take 5 deadlines (15 s); the budget is 7 s.
    results = pool.submit(quick + [(sympy_hang, "1")] * 10).result(timeout=60)
    took = time.monotonic() - started
    reasons = [r.verdict.reason for r in results]
    assert reasons == [Reason.CORRECT] * 10 + [Reason.TIMEOUT] * 10
    assert took < 5 * ITEM_DEADLINE_S - 2  # ended by the budget, not by the item deadlines
    ran_to_the_deadline = [r for r in results[10:] if r.seconds is not None]
    assert 2 <= len(ran_to_the_deadline) <= 6  # at most 3 rounds of 2 items fit in the budget
    assert pool.wait_ready(30)
    assert [r.verdict.reason for r in pool.grade(quick)] == [Reason.CORRECT] * 10


def test_a_small_request_overtakes_a_large_one(pool: GradingPool) -> None:
    large = pool.submit(SYMPY_ITEMS)
    _wait_for(lambda: _busy_workers(pool) > 0, deadline_s=30)
    small = pool.submit(SYMPY_ITEMS[:4])
    assert [r.verdict.reason for r in small.result(timeout=60)] == [Reason.CORRECT] * 4
    assert not large.done()  # the small request did not queue behind the large one
    assert [r.verdict.reason for r in large.result(timeout=120)] == [Reason.CORRECT] * 400


def test_the_pool_stays_ready_while_a_worker_is_replaced(pool: GradingPool) -> None:
    assert pool.wait_ready(30)
    restarts = pool.restarts
    os.kill(pool.worker_states()[0].pid, signal.SIGKILL)  # as the OOM killer would
    _wait_for(lambda: pool.restarts > restarts)
    while sum(state.ready for state in pool.worker_states()) < 2:  # until the replacement is up
        assert pool.ready
        time.sleep(0.005)  # sampling interval while the replacement starts
    assert pool.ready
    assert [r.verdict.reason for r in pool.grade(SYMPY_ITEMS[:4])] == [Reason.CORRECT] * 4
