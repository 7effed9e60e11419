"""The worker pool: deadlines kill and replace hung workers, crashes cost one item, drain on close.

Every wait here is on a condition with a deadline; the hung items are real sympy work.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from distill_grader.pool import GradingPool, PoolClosedError, chunk_size
from distill_grader.schema import Reason

NORMAL = [(f"so \\boxed{{{i}}}", str(i)) for i in range(40)]


@pytest.fixture(scope="module")
def pool() -> Iterator[GradingPool]:
    with GradingPool(workers=2, item_timeout_s=1.0, max_response_chars=1000) as pool:
        assert pool.wait_ready(60)
        yield pool


def _wait_for(condition, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)  # polling interval of a condition with a deadline


def test_chunks_balance_workers_without_tiny_messages() -> None:
    assert chunk_size(1024, 2) == 32
    assert chunk_size(40, 2) == 5
    assert chunk_size(1, 8) == 1


def test_hung_items_time_out_and_the_rest_of_the_batch_is_graded(
    pool: GradingPool, sympy_hang: str
) -> None:
    restarts = pool.restarts
    pairs = [*NORMAL[:20], (sympy_hang, "1"), *NORMAL[20:], (sympy_hang, "2")]
    results = pool.submit(pairs).result(timeout=60)
    reasons = [r.verdict.reason for r in results]
    assert reasons[20] == reasons[-1] == Reason.TIMEOUT
    assert results[20].verdict.extracted == "9^{9^{9^{9}}}"
    assert results[20].seconds >= 1.0
    assert reasons[:20] + reasons[21:-1] == [Reason.CORRECT] * 40
    assert pool.restarts == restarts + 2
    assert pool.wait_ready(30)  # replacements come up
    assert [r.verdict.reason for r in pool.grade(NORMAL)] == [Reason.CORRECT] * 40


@pytest.mark.slow
def test_a_hung_batch_does_not_hold_up_another_batch(sympy_hang: str) -> None:
    with GradingPool(workers=2, item_timeout_s=4.0) as pool:  # a deadline a busy CI can't miss
        assert pool.wait_ready(60)
        hung = pool.submit([(sympy_hang, "1")])
        _wait_for(lambda: any(s.busy_s is not None for s in pool.worker_states()))
        quick = pool.grade(NORMAL)
        assert not hung.done()  # still within its deadline while the other batch finished
        assert [r.verdict.reason for r in quick] == [Reason.CORRECT] * 40
        assert hung.result(timeout=30)[0].verdict.reason == Reason.TIMEOUT


def test_over_long_items_are_too_long_without_a_worker(pool: GradingPool) -> None:
    results = pool.grade([("x" * 1001 + r"\boxed{1}", "1"), (r"\boxed{1}", "1" * 1001)])
    assert [r.verdict for r in results] == [(0.0, Reason.TOO_LONG, None)] * 2
    assert [r.seconds for r in results] == [None, None]


def test_concurrent_batches_from_threads_get_their_own_results(pool: GradingPool) -> None:
    outcomes: dict[int, list[str | None]] = {}

    def grade(k: int) -> None:
        pairs = [(f"\\boxed{{{k * 1000 + i}}}", str(k * 1000 + i)) for i in range(50)]
        outcomes[k] = [r.verdict.extracted for r in pool.grade(pairs)]

    threads = [threading.Thread(target=grade, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == {k: [str(k * 1000 + i) for i in range(50)] for k in range(4)}


def test_a_crashed_worker_costs_only_its_current_item(sympy_hang: str) -> None:
    with GradingPool(workers=1, item_timeout_s=60.0) as pool:
        assert pool.wait_ready(60)
        future = pool.submit([(sympy_hang, "1"), *NORMAL[:5]])
        _wait_for(lambda: any(s.busy_s is not None for s in pool.worker_states()))
        os.kill(pool.worker_states()[0].pid, signal.SIGKILL)  # as the OOM killer would
        results = future.result(timeout=30)
        assert [r.verdict.reason for r in results] == [Reason.PARSE_ERROR] + [Reason.CORRECT] * 5
        assert pool.restarts == 1


def test_close_drains_submitted_batches_then_refuses_work(sympy_hang: str) -> None:
    pool = GradingPool(workers=2, item_timeout_s=1.0).start()
    future = pool.submit([(sympy_hang, "1"), *NORMAL])
    pool.close(timeout_s=30)
    reasons = [r.verdict.reason for r in future.result(timeout=0)]
    assert reasons == [Reason.TIMEOUT] + [Reason.CORRECT] * 40
    assert not pool.ready
    with pytest.raises(PoolClosedError):
        pool.submit(NORMAL)


def test_a_cancelled_batch_does_not_hold_up_close(sympy_hang: str) -> None:
    pool = GradingPool(workers=1, item_timeout_s=30.0).start()
    future = pool.submit([(sympy_hang, "1"), (sympy_hang, "2")])
    assert future.cancel()
    started = time.monotonic()
    pool.close(timeout_s=60)
    assert time.monotonic() - started < 30  # did not wait for the hung items


def test_a_batch_cancelled_mid_grading_leaves_the_pool_working(
    pool: GradingPool, sympy_hang: str
) -> None:
    restarts = pool.restarts
    future = pool.submit([*NORMAL[:10], (sympy_hang, "1")])  # done only after the 1 s deadline
    # The cancel lands between the dispatcher's done() check and its set_result(): reproduced
    # by making this future's done() stale, the window an HTTP client going away can hit.
    future.done = lambda: False  # type: ignore[method-assign]
    assert future.cancel()
    _wait_for(lambda: pool.restarts > restarts or not pool.alive)  # the hang timed out
    assert pool.alive
    assert [r.verdict.reason for r in pool.grade(NORMAL)] == [Reason.CORRECT] * 40


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        GradingPool(workers=0)
    with pytest.raises(ValueError, match="item_timeout_s"):
        GradingPool(item_timeout_s=0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        GradingPool(request_timeout_s=0)
    with pytest.raises(ValueError, match="preempt_after_s"):
        GradingPool(preempt_after_s=-1)
